"""The bundled sample exam: generated deterministically on first use, then read from a disk cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .io.nifti import load_labels, load_nifti, save_nifti
from .terms import DEFAULT_EXAM
from .volume import DCEVolume

#: the sample patient is in neither the demo model's pretraining cohort (seed 2023) nor its evaluation cohort (2024)
SAMPLE_SEED = 2025
#: the sample's visit: the default exam (the paper's main visit)
SAMPLE_EXAM = DEFAULT_EXAM


def cache_dir() -> Path:
    """``$NAPARI_MEDIMP_CACHE`` if set, else the user cache folder."""
    env = os.environ.get("NAPARI_MEDIMP_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("napari-medimp"))


DEMO_MODEL_NAME = "medimp-demo"


def default_model_path() -> Path:
    """``$NAPARI_MEDIMP_MODEL``, else the demo model in the source tree's ``sample_data/``."""
    env = os.environ.get("NAPARI_MEDIMP_MODEL")
    if env:
        from .checkpoint import ModelFileError

        chosen = Path(env)
        chosen = chosen if chosen.suffix == ".safetensors" else chosen.with_suffix(".safetensors")
        if not chosen.is_file():
            # a model chosen by the environment is never silently replaced by the demo model
            raise ModelFileError(env, "set by NAPARI_MEDIMP_MODEL, but there is no such model file; correct or "
                                      "unset the variable")
        return chosen
    candidates = [Path(__file__).resolve().parents[2] / "sample_data" / f"{DEMO_MODEL_NAME}.safetensors"]
    for candidate in candidates:
        if candidate.with_suffix(".safetensors").exists():
            return candidate.with_suffix(".safetensors")
    from .checkpoint import ModelFileError

    raise ModelFileError(candidates[0], "no model file given and the demo model is not there; pass --model "
                                        "(or set NAPARI_MEDIMP_MODEL)")


def sample_exam(seed: int = SAMPLE_SEED, exam: str = SAMPLE_EXAM) -> tuple[DCEVolume, np.ndarray]:
    """(DCE volume, tissue labels) of the synthetic sample patient."""
    from . import synth

    folder = cache_dir() / "sample" / f"{synth.GENERATOR_VERSION}-seed{seed}-{exam}"
    image, seg = folder / "dce.nii.gz", folder / "seg.nii.gz"
    if not (image.exists() and seg.exists()):
        made = synth.simulate_exam(seed=seed, patient_index=0, exam=exam)
        save_nifti(seg, made.labels, made.volume.affine, dtype=np.uint8)
        save_nifti(image, made.volume.data, made.volume.affine, dtype=np.float32,
                   frame_times=made.volume.frame_times)
    volume = load_nifti(image, lazy=False)
    volume.metadata.update(patient="synthetic", exam=exam, synthetic=True, seed=seed)
    labels, _ = load_labels(seg)
    return volume, labels


def sample_record(seed: int = SAMPLE_SEED, exam: str = SAMPLE_EXAM):
    """The sample patient's clinical values at ``exam`` (as its cohort's clinical table would give them)."""
    from . import synth
    from .clinical import ClinicalRecord

    patient = synth.sample_patient(seed, 0)
    return ClinicalRecord.from_csv_row(patient["clinical"], exam)
