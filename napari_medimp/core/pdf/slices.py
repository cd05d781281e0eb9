"""The key slices of an analysis: which frame and slices to show (:func:`key_slices`), how to orient an axial
slice in the radiological convention (:func:`orientation_letters`), and the pages that draw them: the
peak-phase image with the tissue-label outlines and the kidney box, then one row per saliency map, with a
scale bar in millimetres and the patient-orientation letters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from ..curves import ROI_CURVE, default_region_names, describe_frame, roi_curve
from ..plots import REGION_COLORS
from ..preprocess import RoiBox
from ..terms import horizon_words
from .layout import (
    ALERT,
    BODY,
    MARGIN_BOTTOM,
    MARGIN_LEFT,
    MARGIN_RIGHT,
    MARGIN_TOP,
    MUTED,
    PAGE_SIZE,
    TEXT_COLOR,
    TEXT_WIDTH,
    Page,
    line_height,
    new_page,
    wrap,
)

_POSITIVE, _NEGATIVE = ("R", "A", "S"), ("L", "P", "I")


def _direction_letters(affine, index_axis: int) -> tuple[str, str]:
    """(letter towards which voxel index ``index_axis`` (0: x, 1: y, 2: z) increases, the opposite letter)."""
    column = np.asarray(affine, float)[:3, index_axis]
    world = int(np.argmax(np.abs(column)))
    if column[world] >= 0:
        return _POSITIVE[world], _NEGATIVE[world]
    return _NEGATIVE[world], _POSITIVE[world]


def orientation_letters(affine) -> dict[str, Any]:
    """How to show an axial slice ``data[z]`` (rows y, columns x) in the radiological convention (the
    patient's right on the viewer's left, anterior or superior at the top) and the letters at its sides:
    ``flip_rows``, ``flip_columns`` (to apply to the slice before showing it with row 0 at the top) and
    ``left``, ``right``, ``top``, ``bottom``."""
    x_up, x_down = _direction_letters(affine, 0)
    y_up, y_down = _direction_letters(affine, 1)
    # columns: increasing x to the right unless that puts the patient's right (or anterior) on the right
    flip_columns = x_up in ("R", "A")
    left, right = (x_up, x_down) if flip_columns else (x_down, x_up)
    # rows: row 0 at the top; flip when increasing y goes anterior or superior, so that those end up on top
    flip_rows = y_up in ("A", "S")
    top, bottom = (y_up, y_down) if flip_rows else (y_down, y_up)
    return {"flip_rows": flip_rows, "flip_columns": flip_columns, "left": left, "right": right, "top": top,
            "bottom": bottom}


def key_slices(volume, roi, curve=None, n_slices: int = 3, n_baseline: int = 2) -> dict[str, Any]:
    """The frame where the kidney box's mean signal ``curve`` is highest (often a late frame; it is named by
    its number and time, see :func:`~napari_medimp.core.curves.describe_frame`) and
    ``n_slices`` slices through the box: the slice whose mean enhancement over the baseline is highest and its
    neighbours, a quarter of the box apart (inside the box). Returns ``frame``, ``slices`` (z indices,
    increasing) and ``peak_slice``. Reads only the baseline and peak frames."""
    box = RoiBox.from_sequence(roi)
    (z0, z1), zyx = (box.start[0], box.stop[0]), box.slices
    curve = np.asarray(roi_curve(volume, box) if curve is None else curve, float)
    frame = int(np.argmax(curve)) if curve.size else 0
    peak = volume.frame(frame)[zyx].astype(np.float64)
    nb = max(1, min(n_baseline, volume.n_frames - 1))
    if volume.n_frames > 1 and frame >= nb:
        baseline = sum(volume.frame(t)[zyx].astype(np.float64) for t in range(nb)) / nb
        per_slice = (peak - baseline).mean(axis=(1, 2))
    else:  # no enhancement to measure: the brightest slice
        per_slice = peak.mean(axis=(1, 2))
    centre = z0 + int(np.argmax(per_slice))
    step = max(1, (z1 - z0) // 4)
    half = (n_slices - 1) // 2
    wanted = [centre + step * k for k in range(-half, n_slices - half)]
    slices = sorted({min(max(z, z0), z1 - 1) for z in wanted})
    return {"frame": frame, "slices": slices, "peak_slice": centre}


def region_names(result) -> list[str]:
    return list(region_values(result).values())


def region_values(result) -> dict[int, str]:
    """label value -> region name of the regions the tissue labels hold (those the curves show)."""
    labels = result.request.labels
    if labels is None:
        return {}
    names = result.request.region_names
    names = default_region_names(labels) if names is None else dict(names)
    present = set(np.unique(np.asarray(labels)).tolist())
    return {int(v): n for v, n in names.items() if int(v) in present}


def _curve_color(result, name: str) -> str:
    names = list(result.curves or {})
    return REGION_COLORS[names.index(name) % len(REGION_COLORS)] if name in names else "#ffffff"


def _scale_bar_mm(width_mm: float) -> float:
    for length in (100, 50, 20, 10, 5, 2, 1):
        if length <= 0.3 * width_mm:
            return float(length)
    return round(0.3 * width_mm, 1) or 1.0


def _draw_slice(ax, result, z: int, frame_image: np.ndarray, crop, orientation: dict, window, smap=None,
                saliency_range: tuple[float, float] = (0.0, 1.0)):
    """One key slice: the peak-phase image, the tissue outlines, the kidney box, the map, scale and letters."""
    volume = result.request.volume
    sz, sy, sx = volume.spacing
    (y0, y1), (x0, x1) = crop

    def shown(a):
        a = a[::-1] if orientation["flip_rows"] else a
        return a[:, ::-1] if orientation["flip_columns"] else a

    height_mm, width_mm = (y1 - y0) * sy, (x1 - x0) * sx
    extent = (0.0, width_mm, height_mm, 0.0)
    ax.imshow(shown(frame_image[z, y0:y1, x0:x1]), cmap="gray", vmin=window[0], vmax=window[1], extent=extent,
              interpolation="nearest")

    def to_mm(y, x):  # voxel corner (y, x) of the crop -> display mm
        u = (x - x0) * sx
        v = (y - y0) * sy
        if orientation["flip_columns"]:
            u = width_mm - u
        if orientation["flip_rows"]:
            v = height_mm - v
        return u, v

    image = None
    if smap is not None:
        rz0, rz1, ry0, ry1, rx0, rx1 = smap.roi.to_list()
        if rz0 <= z < rz1:
            overlay = np.full((y1 - y0, x1 - x0), np.nan)
            values = np.asarray(smap.data, float)[z - rz0]
            ys, xs = slice(max(ry0, y0), min(ry1, y1)), slice(max(rx0, x0), min(rx1, x1))
            overlay[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0] = \
                values[ys.start - ry0:ys.stop - ry0, xs.start - rx0:xs.stop - rx0]
            low, high = saliency_range
            overlay = np.where(overlay > low + 0.15 * (high - low), overlay, np.nan)
            image = ax.imshow(shown(overlay), cmap="inferno", vmin=low, vmax=high, alpha=0.55, extent=extent,
                              interpolation="nearest")
    for value, name in region_values(result).items():
        mask = np.asarray(result.request.labels)[z, y0:y1, x0:x1] == value
        if mask.any() and not mask.all():
            ax.contour((np.arange(x1 - x0) + 0.5) * sx, (np.arange(y1 - y0) + 0.5) * sy, shown(mask.astype(float)),
                       levels=[0.5], colors=[_curve_color(result, name)], linewidths=0.9)
    box = result.roi.to_list()
    if box[0] <= z < box[1]:
        (u0, v0), (u1, v1) = to_mm(box[2], box[4]), to_mm(box[3], box[5])
        ax.add_patch(Rectangle((min(u0, u1), min(v0, v1)), abs(u1 - u0), abs(v1 - v0), fill=False,
                               edgecolor=_curve_color(result, ROI_CURVE), linestyle="--", linewidth=0.9))
    ax.set_xlim(0.0, width_mm)
    ax.set_ylim(height_mm, 0.0)
    ax.set_xticks([])
    ax.set_yticks([])
    bar = _scale_bar_mm(width_mm)
    margin = 0.05 * width_mm
    ax.plot([margin, margin + bar], [height_mm - 0.06 * height_mm] * 2, color="white", linewidth=2.5,
            solid_capstyle="butt")
    ax.text(margin + bar / 2, height_mm - 0.09 * height_mm, f"{bar:g} mm", color="white", ha="center",
            va="bottom", fontsize=BODY - 1)
    sides = {"left": (0.02, 0.5, "left", "center"), "right": (0.98, 0.5, "right", "center"),
             "top": (0.5, 0.98, "center", "top"), "bottom": (0.5, 0.02, "center", "bottom")}
    for side, (x, y, ha, va) in sides.items():
        ax.text(x, y, orientation[side], transform=ax.transAxes, ha=ha, va=va, color="#ffd33d", fontsize=BODY + 1,
                weight="bold")
    return image


def _crop(roi, shape_yx, margin: float = 0.3) -> tuple[tuple[int, int], tuple[int, int]]:
    box = roi.to_list()
    out = []
    for (a, b), n in zip(((box[2], box[3]), (box[4], box[5])), shape_yx, strict=True):
        pad = max(4, int(round(margin * (b - a))))
        out.append((max(0, a - pad), min(int(n), b + pad)))
    return out[0], out[1]


def _saliency_title(smap) -> str:
    words = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "occlusion": "occlusion",
             "integrated-gradients": "integrated gradients"}
    target = "the prompt similarity" if smap.target == "similarity" else \
        f"the image-only prognosis at {horizon_words(smap.target)}"
    return f"{words.get(smap.method, smap.method)} map of {target} (score {float(smap.score):.3f})"


def _map_caption(smap, section: Mapping | None) -> tuple[list[str], bool]:
    """The lines under a map's slices (its report section in words) and whether they start with the notice of
    an empty map."""
    explanation = str((section or {}).get("explanation") or "")
    noted = not np.any(np.asarray(smap.data) > 0) and "zero everywhere" not in explanation
    text = ("The map is zero everywhere: nothing to overlay. " if noted else "") + explanation
    return wrap(text, TEXT_WIDTH, BODY - 1) if text else [], noted


def _maps(result, saliency_maps) -> list[tuple[Any, dict | None]]:
    if saliency_maps is None:
        maps = list((result.saliency_maps or {}).values()) or ([result.saliency_map] if result.saliency_map else [])
    else:
        maps = list(saliency_maps)
    sections = result.saliency_sections or {}
    return [(m, sections.get((m.method, m.target))) for m in maps]


def slice_pages(pages: list[Page], result, saliency_maps, chosen: dict) -> None:
    volume = result.request.volume
    frame_image = np.asarray(volume.frame(chosen["frame"]), float)
    crop = _crop(result.roi, frame_image.shape[1:])
    region = frame_image[:, crop[0][0]:crop[0][1], crop[1][0]:crop[1][1]]
    window = tuple(float(v) for v in np.percentile(region, (1.0, 99.5)))
    if window[1] <= window[0]:
        window = (window[0], window[0] + 1.0)
    orientation = orientation_letters(volume.affine)
    times = volume.frame_times
    shown = describe_frame(chosen["frame"], volume.n_frames, times)
    regions = region_values(result)
    rows: list[tuple[str, Any, dict | None]] = [("image", None, None)]
    rows += [("map", smap, section) for smap, section in _maps(result, saliency_maps)]
    per_page = 3
    for start in range(0, len(rows), per_page):
        page = new_page()
        pages.append(page)
        figure = page.figure
        top = 1.0 - MARGIN_TOP / PAGE_SIZE[1]
        page.text(MARGIN_LEFT / PAGE_SIZE[0], top, "Key slices" + (" (continued)" if start else ""), size=13,
                  weight="bold", color=TEXT_COLOR, va="top")
        lines = wrap(f"Frame shown: {shown}, where the kidney box's mean signal is highest. "
                      f"Axial slices {', '.join(str(z + 1) for z in chosen['slices'])} of {volume.shape[1]} "
                      f"(slice {chosen['peak_slice'] + 1} enhances most in the kidney box), radiological "
                      "convention: the patient's right on the left. Dashed: the kidney box analysed"
                      + (f"; outlines: the tissue labels ({', '.join(regions.values())})" if regions else
                         "; no tissue labels given") + ".", TEXT_WIDTH, BODY)
        for i, line in enumerate(lines):
            page.text(MARGIN_LEFT / PAGE_SIZE[0], top - (0.32 + i * line_height(BODY)) / PAGE_SIZE[1], line,
                      size=BODY, color=TEXT_COLOR, va="top")
        row_top = MARGIN_TOP + 0.42 + len(lines) * line_height(BODY) + 0.1
        legend_height, row_gap = 0.35, 0.5  # row_gap: a row's title, the slice titles, the space below
        width = (TEXT_WIDTH - 0.75 - 2 * 0.2) / 3  # 0.75: the map's colour bar
        on_page = rows[start:start + per_page]
        captions = [_map_caption(smap, section) if kind == "map" else ([], False) for kind, smap, section in on_page]
        heights = [len(c) * line_height(BODY - 1) + row_gap for c, _ in captions]
        free = PAGE_SIZE[1] - row_top - MARGIN_BOTTOM - legend_height - sum(heights)
        size = min(width, free / per_page)  # room for three rows
        y = row_top
        for (kind, smap, _), (caption, noted), height in zip(on_page, captions, heights, strict=True):
            title = "Peak-phase image" + (" with the tissue outlines" if regions else "") if kind == "image" else \
                _saliency_title(smap)
            page.text(MARGIN_LEFT / PAGE_SIZE[0], 1 - y / PAGE_SIZE[1], title, size=BODY + 1, weight="bold",
                      color=TEXT_COLOR, va="top")
            image_top = y + 0.3
            high = float(np.max(smap.data)) if smap is not None and np.size(smap.data) else 1.0
            overlay = None
            for c, z in enumerate(chosen["slices"]):
                left = MARGIN_LEFT + c * (width + 0.2) + (width - size) / 2
                ax = figure.add_axes((left / PAGE_SIZE[0], 1 - (image_top + size) / PAGE_SIZE[1],
                                      size / PAGE_SIZE[0], size / PAGE_SIZE[1]))
                drawn = _draw_slice(ax, result, z, frame_image, crop, orientation, window, smap,
                                    (0.0, high if high > 0 else 1.0))
                overlay = drawn if drawn is not None else overlay
                ax.set_title(f"slice {z + 1}" + (" (most enhancing)" if z == chosen["peak_slice"] else ""), fontsize=BODY,
                             color=TEXT_COLOR, pad=2)
                page.texts.append(ax.get_title())
            if overlay is not None and high > 0:
                cax = figure.add_axes(((PAGE_SIZE[0] - MARGIN_RIGHT - 0.45) / PAGE_SIZE[0],
                                       1 - (image_top + size) / PAGE_SIZE[1], 0.1 / PAGE_SIZE[0],
                                       size / PAGE_SIZE[1]))
                bar = figure.colorbar(overlay, cax=cax)
                bar.ax.tick_params(labelsize=BODY - 2)
                bar.set_label("map (relative)", fontsize=BODY - 1)
            for i, line in enumerate(caption):
                page.text(MARGIN_LEFT / PAGE_SIZE[0],
                          1 - (image_top + size + 0.08 + i * line_height(BODY - 1)) / PAGE_SIZE[1], line,
                          size=BODY - 1, color=ALERT if noted and i == 0 else MUTED, va="top")
            y += size + height
        handles = [Line2D([], [], color=_curve_color(result, ROI_CURVE), linestyle="--", label="kidney box")]
        handles += [Line2D([], [], color=_curve_color(result, name), label=name) for name in regions.values()]
        figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), frameon=False, fontsize=BODY,
                      bbox_to_anchor=(0.5, (MARGIN_BOTTOM - 0.05) / PAGE_SIZE[1]))
        page.texts.extend(h.get_label() for h in handles)
