"""Analysis report: everything needed to trace one result back to its inputs, model and software.

:func:`build_report` assembles one JSON-serialisable dict (inputs as entered, the prompt, model facts
with the weights hash and the card's training-data statement, results, saliency settings, curve
summaries, software versions, a UTC timestamp and a disclaimer); :func:`write_report` writes it as
``<stem>.json`` and a flat ``<stem>.csv`` (``key,value`` rows, nested keys dotted), atomically.
The viewer's dock widget and ``medimp analyze`` both go through here.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write_bytes
from .card import is_synthetic
from .checks import OUTSIDE_TRAINING, failed_messages
from .configs import jsonable as _jsonable
from .curves import enhancement_summary
from .prognosis import KIND_LABELS, RESULT_KEYS
from .terms import percent  # noqa: F401  (the one owner is .terms; re-exported for the callers of this module)

__all__ = [
    "DISCLAIMER",
    "REPORT_VERSION",
    "SYNTHETIC_DISCLAIMER",
    "build_report",
    "clinical_inputs",
    "describe_inputs",
    "flatten",
    "report_summary",
    "roi_in_mm",
    "saliency_info",
    "software_versions",
    "trained_on_synthetic_data",
    "write_report",
]

REPORT_VERSION = 1
DISCLAIMER = "Research software, not for clinical use: not a medical device; do not base care decisions on it."
SYNTHETIC_DISCLAIMER = ("The model was trained on synthetic data only: its outputs demonstrate the method and "
                        "say nothing about real patients.")

#: units of the clinical values as the forms and the command line take them
CLINICAL_UNITS = {"gfr": "mL/min/1.73 m2", "donor_age": "years"}


# --------------------------------------------------------------------------------------------------
# JSON-native values
# --------------------------------------------------------------------------------------------------
# --------------------------------------------------------------------------------------------------
# pieces
# --------------------------------------------------------------------------------------------------
def software_versions() -> dict[str, str | None]:
    """Installed versions of napari_medimp, torch and monai (None where one is missing)."""
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for module, distribution in (("napari_medimp", "napari-medimp"), ("torch", "torch"), ("monai", "monai")):
        try:
            versions[module] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            versions[module] = None
    if versions["napari_medimp"] is None:
        from .. import __version__

        versions["napari_medimp"] = __version__
    return versions


def roi_in_mm(roi, affine) -> dict:
    """A voxel box ``(z0, z1, y0, y1, x0, x1)`` in world millimetres (RAS) through the volume's affine.

    Gives the world positions of the centres of its first and last voxels, of the box centre, and its
    size along each voxel axis ``(z, y, x)`` (number of voxels x voxel size).
    """
    from .preprocess import RoiBox

    box = RoiBox.from_sequence(roi)
    affine = np.asarray(affine, float)

    def world(zyx) -> list[float]:
        z, y, x = zyx
        return [round(float(v), 3) for v in (affine @ np.array([x, y, z, 1.0]))[:3]]

    last = [b - 1 for b in box.stop]
    centre = [(a + b - 1) / 2 for a, b in zip(box.start, box.stop, strict=True)]
    spacing_zyx = np.linalg.norm(affine[:3, :3], axis=0)[::-1]
    return {
        "first_voxel_centre_ras_mm": world(box.start),
        "last_voxel_centre_ras_mm": world(last),
        "centre_ras_mm": world(centre),
        "size_zyx_mm": [round(float(n * s), 3) for n, s in zip(box.shape, spacing_zyx, strict=True)],
    }


def clinical_inputs(*, gfr=None, donor_age=None, creatinine=None, creatinine_std=None,
                    creatinine_unit: str = "umol/L", record=None, source: str | None = "typed",
                    sources: Mapping[str, str] | None = None, table=None,
                    differs: Mapping[str, Mapping] | None = None) -> dict:
    """Clinical values as entered (text or numbers, with their units and where each came from) and, with
    ``record`` (a validated :class:`~napari_medimp.core.clinical.ClinicalRecord`), the values used, in
    canonical units.

    ``sources``: value name -> where it came from (``typed``, ``clinical.csv line 4``,
    :func:`~napari_medimp.core.identity.table_source`); a value without one has ``source``. ``table``: the
    clinical table the values were checked against; ``differs``: value name -> ``{"source", "value"}`` of a
    table value the entered one disagrees with. The top-level ``source`` is the values' common source, or
    ``mixed`` when they differ."""
    entered = {}
    sources = dict(sources or {})
    for name, value in (("gfr", gfr), ("donor_age", donor_age)):
        if value is not None and str(value).strip() != "":
            entered[name] = {"value": value, "unit": CLINICAL_UNITS[name]}
    for name, value in (("creatinine", creatinine), ("creatinine_std", creatinine_std)):
        if value is not None and str(value).strip() != "":
            if isinstance(value, (list, tuple, np.ndarray)):
                value = [float(v) for v in value]
            entered[name] = {"value": value, "unit": creatinine_unit}
    for name, item in entered.items():
        item["source"] = sources.get(name) or source
        if differs and name in differs:
            item["differs_from"] = dict(differs[name])
    common = {item["source"] for item in entered.values()}
    out: dict[str, Any] = {"source": (common.pop() if len(common) == 1 else "mixed (see each value)") if common
                           else source, "entered": entered}
    if table is not None:
        out["table"] = os.fspath(table)
    if differs:
        out["differs_from_table"] = {name: dict(item) for name, item in differs.items()}
    if record is not None:
        out["used"] = {
            "exam": record.exam,
            "gfr_ml_min_1_73m2": record.gfr,
            "donor_age_years": record.donor_age,
            "creatinine_umol_l": list(record.creatinine),
            "creatinine_std_umol_l": record.creatinine_std,
        }
    return out


def describe_inputs(volume, *, exam: str, roi=None, roi_source: str | None = None, clinical: dict | None = None,
                    layer_name: str | None = None, source: str | None = None, exam_source: str | None = None,
                    labels: Mapping | None = None) -> dict:
    """The ``inputs`` section of a report from a :class:`DCEVolume` and what the user chose: with the exam's
    identity as the image states it (``identity``: patient, exam, date and where each was read),
    where the analysed exam came from (``exam_source``) and the tissue labels' file and exam (``labels``)."""
    from .identity import ExamIdentity

    identity = ExamIdentity.from_volume(volume)
    if exam_source is None:
        exam_source = identity.exam_from if identity.exam == exam else "typed"
    info: dict[str, Any] = {
        "source_file": source if source is not None else (volume.source or None),
        "layer_name": layer_name,
        "exam": exam,
        "exam_source": exam_source,
        "identity": identity.to_dict(),
        "shape_tzyx": list(volume.shape),
        "spacing_zyx_mm": [round(float(s), 4) for s in volume.spacing],
        "frame_times_s": None if volume.frame_times is None else [round(float(t), 3) for t in volume.frame_times],
        "clinical": clinical or {"source": None, "entered": {}},
        "labels": dict(labels) if labels else None,
        # what the reader assumed or ignored (voxel size, orientation, frame times, ...)
        "reading_notes": list(volume.metadata.get("reading_notes") or []),
    }
    if roi is not None:
        info["roi"] = {"voxels_zyx": list(roi.to_list() if hasattr(roi, "to_list") else roi),
                       "voxels_order": "z0, z1, y0, y1, x0, x1 (half-open)",
                       "source": roi_source, **roi_in_mm(roi, volume.affine)}
    return info


def note_without_path(note: str) -> str:
    """A reader's notice without the file path it starts with (the panel names the layer already)."""
    head, sep, rest = note.partition(": ")
    return rest if sep and ("/" in head or "\\" in head) else note


def saliency_info(saliency, file=None) -> dict:
    """The ``saliency`` section of a report from a :class:`~napari_medimp.core.saliency.SaliencyMap`."""
    return {
        "method": saliency.method,
        "target": saliency.target,
        "score": float(saliency.score),
        "roi_zyx": saliency.roi.to_list(),
        "file": None if file is None else os.fspath(file),
    }


trained_on_synthetic_data = is_synthetic  # the report's name for it


def _curve_section(curves: Mapping[str, np.ndarray], times) -> dict:
    arrays = {name: np.asarray(c, float) for name, c in curves.items()}
    n = len(next(iter(arrays.values())))
    unit = "s" if times is not None else "frame"
    grid = np.asarray(times, float) if times is not None else np.arange(n, dtype=float)
    regions = {}
    for name, curve in arrays.items():
        summary = enhancement_summary(curve, grid)
        if times is None:  # the summary's "_s" keys hold frame indices here: say so in the names
            summary = {(k[:-2] + "_frame") if k.endswith("_s") else k: v for k, v in summary.items()}
        regions[name] = {**summary, "mean_signal": curve}
    return {"time_unit": unit, "times": grid, "regions": regions}


# --------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------
def build_report(*, analysis, inputs: dict, prompt: str | None, model: dict, saliency: dict | None = None,
                 curves: dict | None = None, times=None, software: dict | None = None) -> dict:
    """One JSON-serialisable dict describing an analysis.

    ``analysis``: the typed :class:`~napari_medimp.core.inference.Analysis` (its readings as shown:
    withheld ones are not in the report; :meth:`~napari_medimp.core.inference.Analysis.to_dict` is its one
    serialiser); ``inputs``: :func:`describe_inputs`; ``model``: :meth:`Predictor.model_facts`;
    ``saliency``: :func:`saliency_info` (or None); ``curves``: region name -> mean signal per frame with
    their ``times`` in seconds (None: frame indices); ``software``: :func:`software_versions` by default.
    """
    from .prompts import GFR_BINS, gfr_bin

    shown = analysis.to_dict()
    reading = {str(k): float(v) for k, v in shown["zero_shot_gfr"].items()}
    results: dict[str, Any] = {
        "exam": shown["exam"],
        "roi_zyx": shown["roi_zyx"],
        "similarity": shown["similarity"],
        "zero_shot_gfr": reading,
        "zero_shot_gfr_most_likely": max(reading, key=reading.get) if reading else None,
        **{key: dict(shown[key]) for key in RESULT_KEYS.values()},
        "prognosis_reading": shown["prognosis_reading"],
        "prognosis_note": shown["prognosis_note"],
        "zero_shot_gfr_accuracy": shown["zero_shot_gfr_accuracy"],
        "similarity_reference": shown["similarity_reference"],
        "reading_standing": shown["reading_standing"] or {},
        "outside_training": bool(shown["outside_training"]),
        "readings_withheld": shown["readings_withheld"],
        "shown_anyway": bool(shown["shown_anyway"]),
    }
    used = ((inputs.get("clinical") or {}).get("used") or {})
    gfr = used.get("gfr_ml_min_1_73m2")
    results["entered_gfr_bin"] = gfr_bin(gfr) if gfr is not None else None
    if reading and results["entered_gfr_bin"] in reading:
        order = [b for b in GFR_BINS if b in reading]
        results["zero_shot_bin_distance"] = abs(order.index(results["zero_shot_gfr_most_likely"])
                                                - order.index(results["entered_gfr_bin"]))
    synthetic = trained_on_synthetic_data(model)
    report = {
        "report_version": REPORT_VERSION,
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "disclaimer": DISCLAIMER + (" " + SYNTHETIC_DISCLAIMER if synthetic else ""),
        "inputs": inputs,
        "checks": list(shown["checks"]),
        "prompt": prompt,
        "model": {**model, "trained_on_synthetic_data": synthetic},
        "results": results,
        "saliency": saliency,
        "curves": _curve_section(curves, times) if curves else None,
        "software": software if software is not None else software_versions(),
    }
    return _jsonable(report)


def flatten(report: Mapping, prefix: str = "") -> list[tuple[str, str]]:
    """``(dotted key, text)`` rows of a nested dict; lists of numbers or text joined with ``;``,
    lists of dicts indexed (``key.0.field``), None as an empty cell."""
    rows: list[tuple[str, str]] = []
    for key, value in report.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            if value:
                rows.extend(flatten(value, name + "."))
            else:
                rows.append((name, ""))
        elif isinstance(value, (list, tuple)) and any(isinstance(v, (Mapping, list, tuple)) for v in value):
            rows.extend(flatten({str(i): v for i, v in enumerate(value)}, name + "."))
        elif isinstance(value, (list, tuple)):
            rows.append((name, ";".join(_cell(v) for v in value)))
        else:
            rows.append((name, _cell(value)))
    return rows


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def write_report(report: dict, out_dir, stem: str = "medimp_report") -> dict[str, Path]:
    """Write ``<stem>.json`` and ``<stem>.csv`` into ``out_dir`` (created) atomically; returns the paths."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"report folder {out_dir} exists and is a file; give a folder")
    if not stem or any(sep in stem for sep in ("/", "\\")) or stem in (".", ".."):
        raise ValueError(f"report name {stem!r} must be a plain file name without folders")
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = json.dumps(_jsonable(report), indent=1, allow_nan=False) + "\n"
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["key", "value"])
    writer.writerows(flatten(_jsonable(report)))
    paths = {"json": out_dir / f"{stem}.json", "csv": out_dir / f"{stem}.csv"}
    atomic_write_bytes(paths["json"], payload.encode("utf-8"))
    atomic_write_bytes(paths["csv"], buffer.getvalue().encode("utf-8"))
    return paths


#: what a withheld reading means, the same words everywhere
WITHHELD_TEXT = "the exam is outside what the model was trained on, so its readings are not shown"


def similarity_context(similarity: float, reference: Mapping | None) -> str:
    """How to read the similarity: cosine, and the range it takes on the exams the model's heads were
    fitted on (``reference``: the card's ``similarity_reference``), when known (below it, the image and the
    prompt's values disagree)."""
    text = "cosine"
    ref = reference or {}
    if ref.get("low") is not None:
        text += (f"; on {ref['n_exams']} exams with their own prompts it ranged {ref['low']:.2f} to "
                 f"{ref['high']:.2f}, median {ref['median']:.2f}")
        if similarity < ref["low"]:
            text += "; below that range: the image and the prompt's values disagree"
    return text


def similarity_text(results: Mapping) -> str:
    """The similarity of a report's results with :func:`similarity_context` in brackets."""
    return (f"{results['similarity']:.3f} "
            f"({similarity_context(results['similarity'], results.get('similarity_reference'))})")


def kind_standing(standing: Mapping, kind: str, risks: Mapping) -> str | None:
    """The reason shared by every horizon of a kind of reading that is no better than a trivial answer
    (None when at least one horizon is a finding, or when the reasons differ)."""
    reasons = {standing.get(f"{kind}/{h}") for h in risks}
    return next(iter(reasons)) if len(reasons) == 1 and None not in reasons else None


def report_summary(report: Mapping, files: Mapping[str, Any] | Sequence | None = None) -> str:
    """A few lines for a person: prompt, similarity, most likely GFR bin, prognosis, saliency, files."""
    results = report.get("results") or {}
    lines = [f"exam: {results.get('exam')}    ROI (z0 z1 y0 y1 x0 x1): {results.get('roi_zyx')}"]
    failed = failed_messages(report.get("checks") or [])
    if failed:
        lines.append(f"{OUTSIDE_TRAINING.upper()}: " + "; ".join(failed))
    lines.append(f"prompt: {report.get('prompt') or '(none: no clinical values given)'}")
    if results.get("similarity") is not None:
        lines.append(f"image-prompt similarity: {similarity_text(results)}")
    if results.get("readings_withheld"):
        lines.append(f"readings withheld: {WITHHELD_TEXT} ({results['readings_withheld']}); give --show-anyway "
                     "to see them")
    elif results.get("shown_anyway"):
        lines.append("readings shown anyway, by choice, for an exam outside what the model was trained on")
    reading = results.get("zero_shot_gfr") or {}
    standing = results.get("reading_standing") or {}
    if reading and standing.get("zero_shot_gfr"):
        lines.append(f"zero-shot GFR reading: not a finding ({standing['zero_shot_gfr']})")
    elif reading:
        best = results["zero_shot_gfr_most_likely"]
        line = f"most likely GFR bin (zero-shot): {best} ({percent(reading[best])})"
        given = results.get("entered_gfr_bin")
        if given in reading:
            gfr = ((report.get("inputs") or {}).get("clinical") or {}).get("used", {}).get("gfr_ml_min_1_73m2")
            line += f"; the given GFR ({gfr:g}) is {given} ({percent(reading[given])})"
        lines.append(line)
    prognosis_reading = results.get("prognosis_reading") or {}
    if any(results.get(key) for key in RESULT_KEYS.values()) or prognosis_reading.get("not_shown"):
        inputs = prognosis_reading.get("inputs") or {}
        lines.append(f"probability of graft dysfunction by year h, reading at "
                     f"{prognosis_reading.get('visit', results.get('exam'))}:")
        for kind, key in RESULT_KEYS.items():
            risks = results.get(key) or {}
            why_not = (prognosis_reading.get("not_shown") or {}).get(kind)
            if why_not:
                lines.append(f"  {KIND_LABELS[kind]}: not shown ({why_not})")
            elif risks:
                common = kind_standing(standing, kind, risks)
                if common:
                    values = ", ".join(f"{h} {percent(p)}" for h, p in risks.items())
                    lines.append(f"  {KIND_LABELS[kind]}: not a finding ({common}; it reads {values})")
                    continue
                lines.append(f"  {KIND_LABELS[kind]}: " + ", ".join(
                    f"{h} {percent(p)}" + (" (not a finding)" if standing.get(f"{kind}/{h}") else "")
                    for h, p in risks.items()) + (f"  [{inputs[kind]}]" if inputs.get(kind) else ""))
        for note in prognosis_reading.get("outside_range") or []:
            lines.append(f"  outside the training range: {note}")
        if results.get("prognosis_note"):
            lines.append(f"  note: {results['prognosis_note']}")
    elif not results.get("readings_withheld"):
        lines.append("prognosis: this model has no prognosis heads")
    saliency = report.get("saliency")
    if saliency:
        lines.append(f"saliency: {saliency['method']} for {saliency['target']} (score {saliency['score']:.3f})")
    if files:
        items = files.values() if isinstance(files, Mapping) else files
        lines.append("files: " + ", ".join(os.fspath(f) for f in items))
    lines.append(report.get("disclaimer") or DISCLAIMER)
    return "\n".join(lines)
