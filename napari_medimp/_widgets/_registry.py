"""Which MEDIMP analysis widget belongs to which viewer (so the training dialog can hand it a model)."""

from __future__ import annotations

import weakref

_WIDGETS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def register(viewer, widget) -> None:
    _WIDGETS[viewer] = widget


def medimp_widget(viewer):
    """The MEDIMP widget docked in ``viewer``, or ``None``."""
    return _WIDGETS.get(viewer)
