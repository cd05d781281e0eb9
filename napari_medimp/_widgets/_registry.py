"""Which MEDIMP analysis widget belongs to which viewer (so the training dialog can hand it a model)."""

from __future__ import annotations

import weakref

_WIDGETS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def register(viewer, widget) -> None:
    _WIDGETS[viewer] = widget


def show_plugin_dock(viewer, widget_name: str, plugin: str = "napari-medimp"):
    """Dock (or bring forward) one of this plugin's widgets in ``viewer`` and return the widget."""
    dock, widget = viewer.window.add_plugin_dock_widget(plugin, widget_name)
    dock.show()
    dock.raise_()
    return widget


def medimp_widget(viewer):
    """The MEDIMP widget docked in ``viewer``, or ``None``."""
    return _WIDGETS.get(viewer)
