"""napari's task list: a running task makes napari ask before quitting, and its cancel callback runs
when the window closes.

napari 0.9 exposes the list only through the private ``Window._register_task_status`` and
``Window._update_task_status`` (there is no public function); this module is the one place that calls
them, and ``tests/test_widget_training.py::test_napari_task_list_hooks_exist`` notices when they move.
Without them the tasks are simply not listed.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

PROVIDER = "napari-medimp"


def _window(viewer):
    viewer = getattr(viewer, "__wrapped__", viewer)  # napari may hand plugins a proxy of the viewer
    try:
        return viewer.window
    except AttributeError:
        return None


def register(viewer, description: str, cancel: Callable[[], bool]) -> uuid.UUID | None:
    """List a busy task; ``cancel`` is called when napari closes while it runs. None when unavailable."""
    hook = getattr(_window(viewer), "_register_task_status", None)
    if hook is None:
        return None
    from napari.utils.task_status import Status

    return hook(PROVIDER, Status.BUSY, description, cancel_callback=cancel)


def update(viewer, task_id: uuid.UUID | None, status: str, description: str) -> None:
    """Set a listed task's status ("BUSY", "DONE", "CANCELLED", "FAILED", ...) and words."""
    if task_id is None:
        return
    hook = getattr(_window(viewer), "_update_task_status", None)
    if hook is not None:
        from napari.utils.task_status import Status

        hook(task_id, Status[status], description)
