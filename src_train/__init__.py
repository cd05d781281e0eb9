"""MEDIMP contrastive pretraining and prognosis evaluation, reusing napari_medimp.core."""
