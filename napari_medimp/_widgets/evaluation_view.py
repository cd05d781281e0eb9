"""The training dialog's evaluation table: per horizon a heading line (patients), then a row per feature set,
and what makes it unreliable in words below it.

The lines, their tooltips and the sentences are :mod:`napari_medimp.core.evaluation_table`'s; this widget
only lays them out (bold headings spanning the row, numbers to the right, flagged cells in the note colour).
"""

from collections.abc import Mapping, Sequence

from qtpy.QtCore import Qt
from qtpy.QtGui import QBrush, QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..core.evaluation_table import COLUMN_HINTS, DISPLAY_COLUMNS, evaluation_lines, evaluation_warnings

NOTE_COLOR = "#e3b617"
NOTE_STYLE = f"color: {NOTE_COLOR};"


class EvaluationView(QWidget):
    """An evaluation table (``table``) and the sentences that say what makes it weak (``note``)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        #: the rows shown (from :func:`~napari_medimp.core.evaluation_table.read_evaluation_table`)
        self.rows: list[dict] = []
        column = QVBoxLayout(self)
        column.setContentsMargins(0, 0, 0, 0)
        self.table = QTableWidget(0, len(DISPLAY_COLUMNS))
        for c, (title, hint) in enumerate(zip(DISPLAY_COLUMNS, COLUMN_HINTS, strict=True)):
            header = QTableWidgetItem(title)
            header.setToolTip(hint)
            self.table.setHorizontalHeaderItem(c, header)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setWordWrap(False)  # the cells carry their own line breaks: a narrow dock shows them whole
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setMinimumHeight(120)
        self.table.setToolTip("prognosis of graft dysfunction by patient-level cross-validation "
                              "(AUC with its 95 % interval over patients); hover a row for details")
        column.addWidget(self.table)
        self.note = QLabel()
        self.note.setWordWrap(True)
        self.note.setStyleSheet(NOTE_STYLE)
        self.note.setVisible(False)
        self.note.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        column.addWidget(self.note)

    def show_rows(self, rows: Sequence[Mapping]) -> None:
        """Show ``rows`` (none: an empty table and no note)."""
        self.rows = list(rows)
        lines = evaluation_lines(self.rows)
        self.table.clearSpans()
        self.table.setRowCount(len(lines))
        note = QBrush(QColor(NOTE_COLOR))
        for r, line in enumerate(lines):
            for c, text in enumerate(line.cells):
                item = QTableWidgetItem(text)
                item.setToolTip(line.tooltip)
                if line.heading:
                    font = item.font()
                    font.setBold(True)
                    item.setFont(font)
                elif c in (1, 2):
                    item.setTextAlignment(int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter))
                if line.flagged and (line.heading or c == len(line.cells) - 1):
                    item.setForeground(note)
                self.table.setItem(r, c, item)
            if line.heading:
                self.table.setSpan(r, 0, 1, self.table.columnCount())
        self.table.resizeColumnsToContents()
        self.table.resizeRowsToContents()
        header = self.table.horizontalHeader().height() + 2 * self.table.frameWidth()
        self.table.setMinimumHeight(min(360, max(120, self.table.verticalHeader().length() + header)))
        warnings = evaluation_warnings(self.rows)
        self.note.setText("\n".join(warnings))
        self.note.setVisible(bool(warnings))
