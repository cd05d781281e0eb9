"""The training dialog's loss plot: axes drawn only when their limits change, the curves blitted over them,
so that a step costs a blit and not a full matplotlib draw. The matplotlib canvas can be made after the
widget (:meth:`LossPlot.build`), once matplotlib is imported, so that opening the dialog does not wait
for it."""

from __future__ import annotations

from qtpy.QtCore import QSize, Qt
from qtpy.QtWidgets import QLabel, QSizePolicy, QVBoxLayout, QWidget

from .run_progress import TrainingProgress, plot_limits

TRAIN_COLOR, VAL_COLOR = "#5b9bd5", "#f0a030"
CANVAS_HEIGHT = 170


FIGURE_INCHES, FIGURE_DPI = (4.0, 2.2), 100


class _CanvasPlace(QWidget):
    """Where the canvas will be, as large as the canvas asks to be (the dock is sized alike either way)."""

    def sizeHint(self) -> QSize:
        return QSize(int(FIGURE_INCHES[0] * FIGURE_DPI), int(FIGURE_INCHES[1] * FIGURE_DPI))


class LossPlot(QWidget):
    """Training loss per step and validation loss per epoch, in the viewer's theme."""

    def __init__(self, viewer=None, build: bool = True):
        super().__init__()
        self.viewer = viewer
        self.figure = self.canvas = self.axes = self.train_line = self.val_line = None
        self._limits: tuple[float, float] = (1.0, 1.0)
        self._new_axes = True
        self._background = None
        self._pending: TrainingProgress | None = None
        # the legend is Qt text: free to draw, unlike matplotlib text
        self.legend_label = QLabel(
            f"loss: <span style='color:{TRAIN_COLOR}'>&#9473;</span> training (each step) &nbsp; "
            f"<span style='color:{VAL_COLOR}'>&#9679;</span> validation (each epoch)")
        self.legend_label.setTextFormat(Qt.TextFormat.RichText)
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        # the canvas's place, the canvas's size, until :meth:`build` (matplotlib takes a second to import)
        self._placeholder = _CanvasPlace()
        self._placeholder.setMinimumHeight(CANVAS_HEIGHT)
        self._placeholder.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self._layout.addWidget(self._placeholder)
        self._layout.addWidget(self.legend_label)
        try:
            viewer.events.theme.connect(self.apply_theme)
        except (AttributeError, TypeError):
            pass
        if build:
            self.build()

    @property
    def built(self) -> bool:
        """Whether the matplotlib canvas exists (:meth:`build`)."""
        return self.canvas is not None

    def build(self) -> None:
        """Make and draw the matplotlib canvas in the placeholder's place (once; in the main thread). Curves
        shown before it are drawn now."""
        if self.built:
            return
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        self.figure = Figure(figsize=FIGURE_INCHES, dpi=FIGURE_DPI)
        canvas = FigureCanvasQTAgg(self.figure)
        canvas.setMinimumHeight(CANVAS_HEIGHT)
        canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.axes = self.figure.add_subplot()
        (self.train_line,) = self.axes.plot([], [], lw=1.0, color=TRAIN_COLOR, animated=True)
        (self.val_line,) = self.axes.plot([], [], "o-", lw=1.5, ms=4, color=VAL_COLOR, animated=True)
        self.axes.set_xlabel("step")  # no rotated "loss" label: the legend below says it, and it is cheaper
        for axis in (self.axes.xaxis, self.axes.yaxis):
            axis.set_major_locator(MaxNLocator(nbins=4))
        self.axes.set_xlim(0, 1)
        self.axes.set_ylim(0, 1)
        self.figure.subplots_adjust(left=0.1, right=0.97, top=0.95, bottom=0.22)
        canvas.mpl_connect("draw_event", self._on_canvas_drawn)
        self._layout.replaceWidget(self._placeholder, canvas)
        self._placeholder.deleteLater()
        self.canvas = canvas
        self.apply_theme()
        self.canvas.draw()  # the first draw loads fonts: do it now rather than during a run
        if self._pending is not None:
            self.show_progress(self._pending)

    def apply_theme(self, *_) -> None:
        if not self.built:
            return
        try:
            from napari.utils.theme import get_theme

            theme = get_theme(self.viewer.theme)
            background, text = theme.background.as_hex(), theme.text.as_hex()
        except Exception:
            background, text = "#ffffff", "#000000"
        self.figure.set_facecolor(background)
        self.axes.set_facecolor(background)
        for spine in self.axes.spines.values():
            spine.set_color(text)
        self.axes.tick_params(colors=text, labelsize=7)
        self.axes.xaxis.label.set_color(text)
        self.axes.xaxis.label.set_fontsize(8)
        self.canvas.draw_idle()

    def _on_canvas_drawn(self, _event) -> None:
        # a full draw (axes, ticks) just happened: keep it as the background of the curves
        self._background = self.canvas.copy_from_bbox(self.figure.bbox)
        self.axes.draw_artist(self.train_line)
        self.axes.draw_artist(self.val_line)

    def reset_axes(self) -> None:
        """The next curves choose fresh limits (a new run)."""
        self._new_axes = True

    def show_progress(self, progress: TrainingProgress) -> None:
        """Show the current curves: a blit of the two lines, or a full draw when the axes change."""
        if not self.built:  # drawn by build()
            self._pending = progress
            return
        steps, losses, val_steps, val_losses = progress.curves()
        self.train_line.set_data(steps, losses)
        self.val_line.set_data(val_steps, val_losses)
        if steps or val_steps:
            limits = plot_limits(progress, None if self._new_axes else self._limits)
            self._new_axes = False
        else:
            limits = self._limits  # nothing to show yet: keep the axes, clear the curves
        if limits != self._limits or self._background is None:
            self._limits = limits
            self.axes.set_xlim(0, limits[0])
            self.axes.set_ylim(0, limits[1])
            self.canvas.draw_idle()  # _on_canvas_drawn adds the curves
            return
        self.canvas.restore_region(self._background)
        self.axes.draw_artist(self.train_line)
        self.axes.draw_artist(self.val_line)
        self.canvas.update()  # painted with the other changes (canvas.blit would repaint right now)
