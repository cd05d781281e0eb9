"""Writing a synthetic cohort: images, labels, ``clinical.csv`` and ``ground_truth.json``."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..configs import jsonable
from ..io.nifti import save_nifti
from .physiology import (
    CLINICAL_COLUMNS,
    EXAM_DAYS,
    EXAMS,
    GENERATOR_VERSION,
    KINETIC_KEYS,
    LABEL_NAMES,
    OTHER_PATIENT_OFFSET,
    OUTCOME_YEARS,
    SynthSettings,
    exam_parameters,
    patient_id,
    sample_patient,
)
from .render import render, sidecar_for

GFR_FORMULA = ("GFR [mL/min/1.73 m2] = 60 * Fp [mL/s/mL] * Eg * V_parenchyma [mL] * 1.73 / BSA [m2]; "
               "Fp is plasma flow, so no haematocrit factor")


#: the parameters of the graft an exam's images show, recorded per exam in the null setting (``"shown"``)
SHOWN_KEYS = (*KINETIC_KEYS, "fibrosis", "injury", "kidney_volume_ml", "cortical_thickness_mm", "heterogeneity",
              "gfr", "gfr_ml_min", "day")


def dce_path(out_dir, pid: str, exam: str) -> Path:
    """Where :func:`generate_cohort` writes the DCE series of an exam."""
    return Path(out_dir) / pid / exam / "dce" / f"{pid}_{exam}_dce.nii.gz"


def seg_path(out_dir, pid: str, exam: str) -> Path:
    """Where :func:`generate_cohort` writes the label map of an exam."""
    return Path(out_dir) / pid / exam / "seg" / f"{pid}_{exam}_seg.nii.gz"


def _format(column: str, value) -> str:
    if value is None:
        return ""
    if column == "bsa":
        return f"{value:.2f}"
    if column.startswith("gfr_"):
        return f"{value:.1f}"
    if column == "patient_id":
        return str(value)
    return str(int(value))


def clinical_rows(patients: Iterable[dict]) -> list[dict]:
    """The ``clinical.csv`` rows (``None`` for missing values) of sampled patients."""
    return [{c: p["clinical"][c] for c in CLINICAL_COLUMNS} for p in patients]


def clinical_table(patients: Iterable[dict]):
    """``clinical.csv`` as a pandas DataFrame (NaN for missing values)."""
    import pandas as pd

    return pd.DataFrame(clinical_rows(patients), columns=list(CLINICAL_COLUMNS))


def clinical_csv(patients: Iterable[dict]) -> str:
    """The text of ``clinical.csv``: one row per patient, empty cells for missing values."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CLINICAL_COLUMNS)
    for row in clinical_rows(patients):
        writer.writerow([_format(c, row[c]) for c in CLINICAL_COLUMNS])
    return buf.getvalue()


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8", newline=""))


def write_patient(out_dir, seed: int, index: int, settings: SynthSettings) -> dict:
    """Render and write every available exam of one patient; return its ground-truth entry."""
    out_dir = Path(out_dir)
    patient = sample_patient(seed, index, settings)
    pid = patient["patient_id"]
    # the null setting: the images show another patient's graft (never part of the cohort)
    shown = sample_patient(seed, index + OTHER_PATIENT_OFFSET, settings) if settings.images == "other" else patient
    if shown is not patient:
        patient["images_from"] = {"seed": seed, "index": shown["index"],
                                  "note": "null setting: images of another patient of the same world"}
    for i, exam in enumerate(EXAMS):
        entry = patient["exams"][exam]
        if entry["image_missing"]:
            entry["files"] = None
            continue
        params = exam_parameters(shown, exam)
        params["exam"] = exam
        image, labels, details = render(shown, params, settings, i)
        affine = np.asarray(details["affine"])
        dce, seg = dce_path(out_dir, pid, exam), seg_path(out_dir, pid, exam)
        sidecar = sidecar_for(patient, {**params, "day": entry["day"]})
        save_nifti(dce, image, affine, dtype=np.int16, frame_times=settings.times(), sidecar=sidecar)
        save_nifti(seg, labels, affine, dtype=np.uint8,
                   sidecar={"Labels": {str(k): v for k, v in LABEL_NAMES.items()}})
        entry["render"] = details
        if shown is not patient:
            entry["shown"] = {k: params[k] for k in SHOWN_KEYS}
        entry["files"] = {"dce": dce.relative_to(out_dir).as_posix(), "seg": seg.relative_to(out_dir).as_posix()}
    return patient


def generate_cohort(out_dir, n_patients: int = 20, seed: int = 0, *, settings: SynthSettings | None = None,
                    progress: Callable[[int, int], None] | None = None, n_jobs: int = 1,
                    **setting_changes) -> dict:
    """Write a synthetic cohort of ``n_patients`` renal-graft patients into ``out_dir``.

    Layout: ``clinical.csv``, ``ground_truth.json`` and ``<patient>/<exam>/dce|seg/*.nii.gz``
    (DCE as int16 with a JSON sidecar holding frame times and acquisition; labels as uint8).
    ``progress(done, total)`` is called after each patient. Same seed and settings give byte-identical
    files, whatever ``n_jobs``. Returns a summary (counts, outcome prevalence, paths).
    """
    settings = settings or SynthSettings()
    if setting_changes:
        settings = replace(settings, **setting_changes)
    if n_patients < 1:
        raise ValueError("n_patients must be at least 1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    patients: list[dict | None] = [None] * n_patients
    if n_jobs > 1:
        with ProcessPoolExecutor(max_workers=n_jobs) as pool:
            futures = {pool.submit(write_patient, out_dir, seed, i, settings): i for i in range(n_patients)}
            for done, future in enumerate(as_completed(futures), 1):
                patients[futures[future]] = future.result()
                if progress:
                    progress(done, n_patients)
    else:
        for i in range(n_patients):
            patients[i] = write_patient(out_dir, seed, i, settings)
            if progress:
                progress(i + 1, n_patients)

    _write_text(out_dir / "clinical.csv", clinical_csv(patients))
    truth = {
        "generator": "napari_medimp.core.synth",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "n_patients": n_patients,
        "settings": settings.as_dict(),
        "labels": LABEL_NAMES,
        "exam_days": EXAM_DAYS,
        "gfr_formula": GFR_FORMULA,
        "outcome_definition": (
            f"outcome_Ny = 1 when the mean of three serum creatinine values (N years -60, 0, +60 days) "
            f"exceeds {settings.creatinine_threshold_umol} umol/L, or the graft is lost "
            f"(GFR < {settings.graft_loss_gfr} mL/min/1.73 m2 at or before N years)"),
        "patients": patients,
    }
    _write_text(out_dir / "ground_truth.json", json.dumps(jsonable(truth, digits=7), indent=1, allow_nan=False) + "\n")

    written = sum(p["exams"][e]["files"] is not None for p in patients for e in EXAMS)
    return {
        "out_dir": str(out_dir),
        "n_patients": n_patients,
        "seed": seed,
        "generator_version": GENERATOR_VERSION,
        "exams_written": written,
        "exams_missing": n_patients * len(EXAMS) - written,
        "prevalence": {f"outcome_{y}y": float(np.mean([p[f"outcome_{y}y"] for p in patients]))
                       for y in OUTCOME_YEARS},
        "clinical_csv": str(out_dir / "clinical.csv"),
        "ground_truth": str(out_dir / "ground_truth.json"),
        "patient_ids": [patient_id(i) for i in range(n_patients)],
        "seconds": round(time.perf_counter() - start, 2),
    }
