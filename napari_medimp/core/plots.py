"""Result plots: zero-shot GFR bins, prognosis per horizon, time-intensity curves.

Object-oriented matplotlib only (an ``Axes`` is passed in, or a :class:`matplotlib.figure.Figure` is
built here), never pyplot's global state: the same functions draw into a Qt canvas of a dock widget and
into a headless PNG. ``dark=True`` matches napari's dark theme; the default suits a saved white-background
image. Colours are chosen to stay readable on both.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from .prognosis import RESULT_KEYS
from .report import percent
from .terms import KIND_SHORT_LABELS, horizon_words

__all__ = [
    "DARK",
    "LIGHT",
    "REGION_COLORS",
    "plot_curves",
    "plot_prognosis",
    "plot_zero_shot",
    "results_figure",
    "style_axes",
    "theme",
]

#: colours of the light (saved PNG) theme
LIGHT = {
    "background": "#ffffff",
    "text": "#1f2328",
    "muted": "#6e7781",
    "grid": "#d0d7de",
    "bar": "#4c78a8",
    "highlight": "#e8793a",
    "reference": "#6e7781",
}
#: colours of the dark theme (napari's dark canvas background)
DARK = {
    "background": "#262930",
    "text": "#f0f1f2",
    "muted": "#a8adb4",
    "grid": "#4a505a",
    "bar": "#6ea8dc",
    "highlight": "#ffa657",
    "reference": "#c9ced6",
}
#: line colours of the curves, readable on white and on napari's dark grey
REGION_COLORS = ("#e8793a", "#4c9be8", "#3fb950", "#d2a8ff", "#f778ba", "#d4a72c", "#56d4dd", "#a5a5a5")

FONT_SIZE = 9
N_BASELINE = 2  # frames averaged as the pre-contrast baseline of relative enhancement


def theme(dark: bool = False) -> dict[str, str]:
    return DARK if dark else LIGHT


def style_axes(ax, dark: bool = False) -> dict[str, str]:
    """Apply the theme to one ``Axes`` (background, spines, ticks, labels); returns the colours."""
    colors = theme(dark)
    ax.set_facecolor(colors["background"])
    for spine in ax.spines.values():
        spine.set_color(colors["muted"])
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.tick_params(colors=colors["text"], labelsize=FONT_SIZE)
    ax.xaxis.label.set_color(colors["text"])
    ax.yaxis.label.set_color(colors["text"])
    ax.xaxis.label.set_fontsize(FONT_SIZE)
    ax.yaxis.label.set_fontsize(FONT_SIZE)
    ax.title.set_color(colors["text"])
    ax.title.set_fontsize(FONT_SIZE + 1)
    return colors


def _empty(ax, message: str, colors: Mapping[str, str]) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.text(0.5, 0.5, message, transform=ax.transAxes, ha="center", va="center", color=colors["muted"],
            fontsize=FONT_SIZE, wrap=True)


def _value_labels(ax, xs, values, colors: Mapping[str, str]) -> None:
    """Probability written above each bar (inside the top of bars close to 1, to stay within 0..1)."""
    for x, value in zip(xs, values, strict=True):
        inside = value > 0.88
        ax.text(x, value - 0.02 if inside else value + 0.02, percent(value), ha="center",
                va="top" if inside else "bottom", fontsize=FONT_SIZE,
                color="#ffffff" if inside else colors["text"])


def plot_zero_shot(ax, reading: Mapping[str, float], expected: str | None = None, *, dark: bool = False,
                   not_a_finding: str | None = None, withheld: bool = False) -> None:
    """Bars of the zero-shot probability of each GFR bin (in the order given), y from 0 to 1.

    ``expected`` (the bin of the GFR typed for this exam) is drawn in the highlight colour with an outline.
    ``not_a_finding``: why the reading is no better than a trivial answer; the panel then says so instead
    of drawing the bars. ``withheld``: the exam failed its checks.
    """
    colors = style_axes(ax, dark)
    ax.set_title("zero-shot GFR bin")
    if withheld:
        _empty(ax, "withheld:\nthe exam is outside what\nthe model was trained on", colors)
        return
    if not reading:
        _empty(ax, "no zero-shot reading", colors)
        return
    if not_a_finding:
        _empty(ax, "not a finding:\n" + textwrap.fill(not_a_finding, 34), colors)
        return
    names = list(reading)
    if expected is not None and expected not in reading:
        raise ValueError(f"expected GFR bin {expected!r} is not one of the bins {names}")
    values = [float(reading[n]) for n in names]
    xs = np.arange(len(names))
    bars = ax.bar(xs, values, width=0.7, color=colors["bar"])
    for name, bar in zip(names, bars, strict=True):
        if name == expected:
            bar.set_facecolor(colors["highlight"])
            bar.set_edgecolor(colors["text"])
            bar.set_linewidth(1.5)
            bar.set_label("bin of the entered GFR")
    _value_labels(ax, xs, values, colors)
    ax.set_xticks(xs, [textwrap.fill(n, 10) for n in names])
    ax.set_ylim(0.0, 1.0)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
    ax.set_ylabel("probability")
    ax.grid(axis="y", color=colors["grid"], linewidth=0.6)
    ax.set_axisbelow(True)
    if expected is not None:
        legend = ax.legend(loc="upper left", fontsize=FONT_SIZE - 1, frameon=False)
        for text in legend.get_texts():
            text.set_color(colors["text"])


#: bar colours of the reading kinds (images, images + clinical values, clinical values only), by their short label
KIND_COLORS = {KIND_SHORT_LABELS["image"]: "#4c9be8", KIND_SHORT_LABELS["image+clinical"]: "#e8a33d",
               KIND_SHORT_LABELS["clinical"]: "#9a9a9a"}
#: the head kind behind each bar group
GROUP_KINDS = {label: kind for kind, label in KIND_SHORT_LABELS.items()}


def plot_prognosis(ax, prognosis: Mapping[str, float], *, dark: bool = False,
                   with_clinical: Mapping[str, float] | None = None,
                   clinical_only: Mapping[str, float] | None = None, standing: Mapping | None = None,
                   withheld: bool = False) -> None:
    """Bars of the probability of graft dysfunction by each horizon (2y/3y/4y), 0..1, with a 0.5 line: the
    image-only reading (MEDIMP) and, when given, the reading with the clinical values and the
    clinical-only reference side by side, labelled in percent. A bar whose reading is no better than a
    trivial answer (``standing``, :func:`card.reading_standing`) is drawn hollow and unlabelled."""
    colors = style_axes(ax, dark)
    ax.set_title("graft dysfunction by year h")
    if withheld:
        _empty(ax, "withheld:\nthe exam is outside what\nthe model was trained on", colors)
        return
    if not prognosis:
        _empty(ax, "no prognosis heads in this model\n(add them with\n`medimp evaluate --write-heads`)", colors)
        return
    names = list(prognosis)
    groups = [(KIND_SHORT_LABELS["image"], prognosis)]
    if with_clinical:
        groups.append((KIND_SHORT_LABELS["image+clinical"], with_clinical))
    if clinical_only:
        groups.append((KIND_SHORT_LABELS["clinical"], clinical_only))
    xs = np.arange(len(names))
    width = 0.8 / len(groups)
    for i, (label, values) in enumerate(groups):
        ys = [float(values.get(n, np.nan)) for n in names]
        pos = xs - 0.4 + width * (i + 0.5)
        color = colors["bar"] if len(groups) == 1 else KIND_COLORS[label]
        kind = GROUP_KINDS[label]
        muted = [bool((standing or {}).get(f"{kind}/{n}")) for n in names]
        bars = ax.bar(pos, ys, width=width * 0.9, color=color, label=label)
        for bar, hollow in zip(bars, muted, strict=True):
            if hollow:  # no finding: a hollow bar without a number
                bar.set_facecolor("none")
                bar.set_edgecolor(colors["muted"])
                bar.set_hatch("//")
        for x, y, hollow in zip(pos, ys, muted, strict=True):
            if not np.isfinite(y) or hollow:
                continue
            if len(groups) == 1:
                ax.text(x, min(y + 0.02, 0.9), percent(y), ha="center", va="bottom", color=colors["text"],
                        fontsize=FONT_SIZE)
                continue
            # side by side the bars are narrower than a label: written upright along each bar (inside a tall
            # bar), so that neighbouring labels never run into each other
            inside = y > 0.62
            ax.text(x, y - 0.02 if inside else y + 0.02, percent(y), ha="center", va="top" if inside else "bottom",
                    rotation=90, fontsize=FONT_SIZE - 2,
                    color="#ffffff" if inside else colors["text"])
    ax.axhline(0.5, color=colors["reference"], linestyle="--", linewidth=1.0)
    ax.set_xticks(xs, [horizon_words(n) for n in names])
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylim(0.0, 1.0)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
    ax.set_ylabel("probability of dysfunction")
    ax.grid(axis="y", color=colors["grid"], linewidth=0.6)
    ax.set_axisbelow(True)
    if len(groups) > 1:
        legend = ax.legend(fontsize=FONT_SIZE - 2, loc="upper left", frameon=False, ncol=1)
        for text in legend.get_texts():
            text.set_color(colors["text"])


def plot_curves(ax, curves: Mapping[str, np.ndarray], times: np.ndarray | None, unit: str = "s", *,
                relative: bool = True, dark: bool = False) -> None:
    """Time-intensity curves, one line per region, with a legend.

    ``relative=True`` plots the relative enhancement ``(S - S0) / S0`` (``S0``: mean of the first two
    frames) when every curve has a positive baseline, else the raw mean signal; the y label says which.
    x is the time in ``unit`` (``times``), or the frame index when ``times`` is None.
    """
    colors = style_axes(ax, dark)
    ax.set_title("time-intensity curves")
    if not curves:
        _empty(ax, "no curves", colors)
        return
    arrays = {name: np.asarray(curve, float) for name, curve in curves.items()}
    n_frames = {a.shape[0] for a in arrays.values()}
    if len(n_frames) != 1:
        raise ValueError(f"curves have different numbers of frames: {sorted(n_frames)}")
    n = n_frames.pop()
    if times is None:
        x = np.arange(n)
        ax.set_xlabel("frame")
    else:
        x = np.asarray(times, float)
        if x.shape != (n,):
            raise ValueError(f"{x.size} frame times for curves of {n} frames")
        ax.set_xlabel(f"time ({unit})")
    baselines = {name: float(a[:N_BASELINE].mean()) for name, a in arrays.items()}
    relative = relative and all(b > 0 for b in baselines.values())
    for i, (name, curve) in enumerate(arrays.items()):
        y = (curve - baselines[name]) / baselines[name] if relative else curve
        ax.plot(x, y, color=REGION_COLORS[i % len(REGION_COLORS)], linewidth=1.6, marker="o", markersize=2.5,
                label=name)
    ax.set_ylabel("relative enhancement (S - S0) / S0" if relative else "mean signal (a.u.)")
    ax.grid(color=colors["grid"], linewidth=0.6)
    legend = ax.legend(fontsize=FONT_SIZE - 1, frameon=False, loc="best")
    for text in legend.get_texts():
        text.set_color(colors["text"])


def _shown(analysis) -> dict:
    """What the figures draw of an analysis: the typed :class:`~napari_medimp.core.inference.Analysis` (its
    readings as shown), or the ``results`` section of a written report."""
    if isinstance(analysis, Mapping):  # a written report's results
        return {"exam": analysis.get("exam"), "prompt": analysis.get("prompt"),
                "similarity": analysis.get("similarity"), "gfr": analysis.get("zero_shot_gfr") or {},
                "risks": {kind: analysis.get(key) or {} for kind, key in RESULT_KEYS.items()},
                "standing": analysis.get("reading_standing") or {},
                "withheld": bool(analysis.get("readings_withheld"))}
    return {"exam": analysis.exam, "prompt": analysis.prompt, "similarity": analysis.shown_similarity,
            "gfr": analysis.shown_gfr_reading, "risks": {kind: analysis.shown_risks(kind) for kind in RESULT_KEYS},
            "standing": dict(analysis.standing or {}), "withheld": analysis.readings_withheld is not None}


def _plot_readings(ax_zero, ax_prognosis, shown: dict, expected_bin: str | None, dark: bool) -> None:
    """The zero-shot and prognosis panels of an analysis as :func:`_shown` gives it, with withheld readings
    and readings that are no finding said as such."""
    standing, withheld, risks = shown["standing"], shown["withheld"], shown["risks"]
    plot_zero_shot(ax_zero, shown["gfr"], expected_bin, dark=dark, withheld=withheld,
                   not_a_finding=standing.get("zero_shot_gfr"))
    plot_prognosis(ax_prognosis, risks["image"], dark=dark, with_clinical=risks["image+clinical"],
                   clinical_only=risks["clinical"], standing=standing, withheld=withheld)


def results_figure(analysis, curves: Mapping[str, np.ndarray] | None, times,
                   expected_bin: str | None = None, *, dark: bool = False, unit: str = "s",
                   patient: str | None = None) -> Figure:
    """The three panels side by side (zero-shot bins, prognosis, curves) with the prompt as title.

    ``analysis`` is the typed :class:`~napari_medimp.core.inference.Analysis` (or the ``results`` section of
    a written report: it needs ``zero_shot_gfr`` and ``prognosis_dysfunction_probability``); the prompt,
    similarity and exam are shown when present, with ``patient`` as the image states it (said when it does
    not).
    """
    colors = theme(dark)
    figure = Figure(figsize=(14.0, 4.6), dpi=100, layout="constrained", facecolor=colors["background"])
    axes = figure.subplots(1, 3, width_ratios=(1.1, 0.8, 1.4))
    shown = _shown(analysis)
    _plot_readings(axes[0], axes[1], shown, expected_bin, dark)
    plot_curves(axes[2], curves or {}, times, unit, dark=dark)
    parts = [f"patient {patient}" if patient else "patient not stated in the image"]
    if shown["exam"]:
        parts.append(f"exam {shown['exam']}")
    if shown["similarity"] is not None:
        parts.append(f"image-prompt similarity {float(shown['similarity']):.3f}")
    parts.append("research software, not for clinical use")
    title = " - ".join(parts)
    if shown["prompt"]:
        title += "\n" + textwrap.fill(f"prompt: {shown['prompt']}", 160)
    figure.suptitle(title, color=colors["text"], fontsize=FONT_SIZE + 1)
    return figure


def panel_images(analysis, curves: dict, times, expected_bin: str | None) -> tuple[bytes, bytes]:
    """PNG bytes of the panel's results (zero-shot GFR bins + prognosis) and of its time-intensity curves, in
    napari's dark theme, rendered with matplotlib's Agg backend (safe off the main thread: no Qt)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = []
    for kind in ("results", "curves"):
        figure = Figure(figsize=(4.0, 4.4 if kind == "results" else 2.4), dpi=90, facecolor="#262930")
        FigureCanvasAgg(figure)
        if kind == "results":
            ax_zero, ax_prog = figure.subplots(2, 1)
            _plot_readings(ax_zero, ax_prog, _shown(analysis), expected_bin, True)
        else:
            plot_curves(figure.add_subplot(1, 1, 1), curves, times, "s" if times is not None else "frame", dark=True)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", facecolor=figure.get_facecolor())
        out.append(buffer.getvalue())
    return out[0], out[1]
