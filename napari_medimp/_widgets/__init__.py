"""Dock widgets and the training dialog: thin Qt faces of ``napari_medimp.core``."""
