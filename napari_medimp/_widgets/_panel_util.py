"""Small pieces shared by the MEDIMP panel's parts: HTML escaping, layer keys, label and combo sizing, a
clickable figure label, the viewer's grid and the colour of a reading that is no finding."""

from __future__ import annotations

from html import escape as _html_escape

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QComboBox, QLabel, QSizePolicy


def _escape(text: str) -> str:
    return _html_escape(str(text), quote=False)


#: the colour of a reading that is no finding (no better than a trivial answer)
GREY = "#8a8f98"


class _ClickableLabel(QLabel):
    """A label that says when it is clicked (a figure that opens at full size)."""

    clicked = Signal()

    def mouseReleaseEvent(self, event) -> None:  # noqa: N802  (Qt's name)
        if event.button() == Qt.MouseButton.LeftButton:
            self.clicked.emit()
        super().mouseReleaseEvent(event)


def _grid(viewer):
    """The viewer's grid settings (``viewer.canvas.grid`` since napari 0.9, ``viewer.grid`` before)."""
    canvas = getattr(viewer, "canvas", None)
    return canvas.grid if canvas is not None and hasattr(canvas, "grid") else viewer.grid


def _key(layer) -> str:
    """A layer's identity that survives the viewer proxy napari hands to plugin widgets."""
    return str(getattr(layer, "unique_id", id(layer)))


def _wrapping(label: QLabel) -> None:
    """A label that wraps at the dock's width and never widens it (long words included)."""
    label.setWordWrap(True)
    label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    label.setMinimumWidth(40)


def _shrinkable(combo: QComboBox, characters: int = 12) -> None:
    """Long names must not widen the dock: show them elided, full name in the list."""
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(characters)


def _spatial_axes(layer) -> dict:
    """Axis labels and units of a 3D layer laid over the spatial axes of ``layer``."""
    return {"axis_labels": tuple(layer.axis_labels[-3:]), "units": tuple(str(u) for u in layer.units[-3:])}
