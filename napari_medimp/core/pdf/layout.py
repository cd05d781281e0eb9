"""The PDF's page and type: A4 portrait pages, margins, colours, body size, text wrapping, the flow that lays
text from the top of a page down (fields, headings, banners, tables) and the one way a document of pages is
written to disk (TrueType text, atomically).

Positions are in inches from a page's top-left corner; :meth:`Flow.fx` and :meth:`Flow.fy` turn them into
figure fractions. Matplotlib's object-oriented API only: no pyplot, no Qt."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.text import Text

from ..atomic import atomic_write
from ..plots import LIGHT

#: A4 portrait, inches
PAGE_SIZE = (8.27, 11.69)
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 0.6, 0.6, 0.55, 0.95  # inches
#: the width between the margins, inches
TEXT_WIDTH = PAGE_SIZE[0] - MARGIN_LEFT - MARGIN_RIGHT
TEXT_COLOR = LIGHT["text"]
MUTED = LIGHT["muted"]
ALERT = "#b42318"
ALERT_BACKGROUND = "#fdecea"
NOTE = "#9a6700"
BODY = 8.5  # points
#: HarfBuzz features that keep every letter a glyph of its own (a ligature breaks searching the PDF's text)
NO_LIGATURES = ("-liga", "-clig", "-dlig")
#: average width of a character of DejaVu Sans, in ems (wrapping; a little wide to stay inside the margins)
_CHAR_EM = 0.56


@dataclass
class Page:
    """One page: its figure and every text drawn on it, in drawing order."""

    figure: Figure
    texts: list[str] = field(default_factory=list)

    def text(self, x, y, s, **kwargs):
        self.texts.append(str(s))
        return self.figure.text(x, y, s, **kwargs)


def new_page() -> Page:
    figure = Figure(figsize=PAGE_SIZE, dpi=100, facecolor="white")
    return Page(figure)


def wrap(text: str, width_in: float, size: float) -> list[str]:
    """``text`` in lines that fit ``width_in`` inches at ``size`` points (each newline starts a paragraph)."""
    chars = max(10, int(width_in * 72 / (size * _CHAR_EM)))
    lines: list[str] = []
    for paragraph in str(text).split("\n"):
        lines.extend(textwrap.wrap(paragraph, chars, break_long_words=True, break_on_hyphens=False) or [""])
    return lines


def line_height(size: float) -> float:
    """The height of a line of ``size`` points, inches."""
    return size * 1.32 / 72


class Flow:
    """Text laid out from the top of A4 pages down; a full page starts the next."""

    def __init__(self, pages: list[Page]):
        self.pages = pages
        self.page = new_page()
        pages.append(self.page)
        self.y = MARGIN_TOP  # inches from the top
        self.width = TEXT_WIDTH

    # positions: inches from the page's top-left corner -> figure fractions
    @staticmethod
    def fx(x_in: float) -> float:
        return x_in / PAGE_SIZE[0]

    @staticmethod
    def fy(y_in: float) -> float:
        return 1.0 - y_in / PAGE_SIZE[1]

    line_height = staticmethod(line_height)

    def room(self, height_in: float) -> None:
        if self.y + height_in > PAGE_SIZE[1] - MARGIN_BOTTOM:
            self.page = new_page()
            self.pages.append(self.page)
            self.y = MARGIN_TOP

    def space(self, inches: float) -> None:
        self.y += inches

    def text(self, s: str, *, x: float = 0.0, size: float = BODY, color: str = TEXT_COLOR, weight: str = "normal",
             width: float | None = None, style: str = "normal") -> int:
        """Wrapped text at ``x`` inches from the left margin; returns the number of lines."""
        lines = wrap(s, (width if width is not None else self.width - x), size)
        for line in lines:
            self.room(self.line_height(size))
            self.page.text(self.fx(MARGIN_LEFT + x), self.fy(self.y), line, size=size, color=color,
                           weight=weight, style=style, va="top", ha="left")
            self.y += self.line_height(size)
        return len(lines)

    def heading(self, s: str) -> None:
        size = BODY + 2.5
        self.room(self.line_height(size) + 3 * self.line_height(BODY))  # never a heading alone at a page end
        self.space(0.04)
        self.page.text(self.fx(MARGIN_LEFT), self.fy(self.y), s, size=size, weight="bold", color=TEXT_COLOR,
                       va="top", ha="left")
        self.y += self.line_height(size)
        self.page.figure.add_artist(Line2D([self.fx(MARGIN_LEFT), self.fx(MARGIN_LEFT + self.width)],
                                           [self.fy(self.y - 0.02)] * 2, color=LIGHT["grid"], linewidth=0.8))
        self.y += 0.03

    def field(self, label: str, value: str, *, label_width: float = 1.62, color: str = TEXT_COLOR) -> None:
        """``label`` in grey, ``value`` wrapped beside it."""
        lines = wrap(value, self.width - label_width, BODY)
        self.room(self.line_height(BODY))
        self.page.text(self.fx(MARGIN_LEFT), self.fy(self.y), label, size=BODY, color=MUTED, va="top",
                       ha="left")
        for line in lines:
            self.room(self.line_height(BODY))
            self.page.text(self.fx(MARGIN_LEFT + label_width), self.fy(self.y), line, size=BODY, color=color,
                           va="top", ha="left")
            self.y += self.line_height(BODY)

    def banner(self, title: str, lines: Sequence[str], color: str = ALERT,
               background: str = ALERT_BACKGROUND) -> None:
        """A framed box: ``title`` in bold capitals, then ``lines`` wrapped."""
        pad = 0.08
        wrapped = [w for line in lines for w in wrap(line, self.width - 2 * pad - 0.15, BODY)]
        height = 2 * pad + self.line_height(BODY + 1.5) + len(wrapped) * self.line_height(BODY)
        self.room(height + 0.05)
        top = self.y
        frame = Rectangle((self.fx(MARGIN_LEFT), self.fy(top + height)), self.width / PAGE_SIZE[0],
                          height / PAGE_SIZE[1], transform=self.page.figure.transFigure, facecolor=background,
                          edgecolor=color, linewidth=1.2, zorder=0)
        self.page.figure.add_artist(frame)
        self.y = top + pad
        self.page.text(self.fx(MARGIN_LEFT + pad), self.fy(self.y), title, size=BODY + 1.5, weight="bold",
                       color=color, va="top", ha="left")
        self.y += self.line_height(BODY + 1.5)
        for line in wrapped:
            self.page.text(self.fx(MARGIN_LEFT + pad + 0.15), self.fy(self.y), line, size=BODY, color=color,
                           va="top", ha="left")
            self.y += self.line_height(BODY)
        self.y = top + height + 0.05

    def table(self, columns: Sequence[tuple[float, str]], rows: Sequence[Sequence[Sequence[str]]],
              size: float = BODY) -> None:
        """``columns``: (x in inches from the margin, header); each row holds per column one or more lines."""
        self.room(self.line_height(size) * 2)
        for x, header in columns:
            self.page.text(self.fx(MARGIN_LEFT + x), self.fy(self.y), header, size=size, weight="bold",
                           color=TEXT_COLOR, va="top", ha="left")
        self.y += self.line_height(size)
        for row in rows:
            height = max(len(cell) for cell in row) * self.line_height(size)
            self.room(height)
            for (x, _), cell in zip(columns, row, strict=True):
                for i, line in enumerate(cell):
                    self.page.text(self.fx(MARGIN_LEFT + x), self.fy(self.y + i * self.line_height(size)), line,
                                   size=size if i == 0 else size - 1, color=TEXT_COLOR if i == 0 else MUTED,
                                   va="top", ha="left")
            self.y += height + 0.03


def without_ligatures(pages: Sequence[Page]) -> None:
    """Letters, not ligatures, in every text of ``pages``: "field" stays searchable as "field"."""
    for page in pages:
        for text in page.figure.findobj(Text):
            text.set_fontfeatures(NO_LIGATURES)


def pdf_text(pages: Sequence[Page]) -> str:
    """Every text of the pages, one per line, page by page (what a search of the PDF finds)."""
    return "\n".join(t for page in pages for t in page.texts)


def pdf_path(path) -> Path:
    """``path`` as the PDF's file; a folder is refused (before any page is drawn)."""
    path = Path(path)
    if path.exists() and path.is_dir():
        raise ValueError(f"{path} is a folder; give a file name for the PDF")
    return path


def save_pages(pages: Sequence[Page], path, title: str) -> Path:
    """Write ``pages`` as one PDF at ``path``, atomically, with ``title`` in its metadata; text is embedded as
    TrueType (fonttype 42, set for this file only), so the PDF can be searched and its text copied."""
    import matplotlib
    from matplotlib.backends.backend_pdf import PdfPages

    from ... import __version__

    def write(tmp: str) -> None:
        with matplotlib.rc_context({"pdf.fonttype": 42}), PdfPages(tmp, metadata={
                "Title": title, "Subject": "research software, not for clinical use",
                "Creator": f"napari-medimp {__version__}"}) as pdf:
            for page in pages:
                pdf.savefig(page.figure)

    return Path(atomic_write(os.fspath(path), write))
