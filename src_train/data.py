"""Cohort -> (exam image, prompt) pairs for contrastive training.

A cohort is a clinical table (``clinical.csv``, one row per patient) beside an image tree
``<patient>/<exam>/<sequence>/``. Each exam with an image becomes one item; its prompt is built from the
clinical values known at that exam (the same prompt builder and preprocessing the viewer uses). The
deterministic part (reading + preprocessing) is cached by MONAI; random augmentations (flip, affine,
blur, noise, gamma, as in the paper) and the paraphrase variant are drawn per sample per step.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_medimp.core.io import load_dce
from napari_medimp.core.io.cohort import cohort_exams, read_clinical_table
from napari_medimp.core.preprocess import PreprocessConfig, prepare
from napari_medimp.core.prompts import ATTRIBUTES, ClinicalRecord, ClinicalValueError, prompt_variants


@dataclass(frozen=True)
class ExamItem:
    patient: str
    exam: str
    image: Path
    record: ClinicalRecord


def cohort_items(root, table=None) -> tuple[list[ExamItem], list[str]]:
    """Every exam with an image and a clinical row, and a list of what was skipped and why."""
    root = Path(root)
    table = Path(table) if table else root / "clinical.csv"
    if not table.exists():
        raise ValueError(f"{root}: no clinical table (expected {table.name} in the cohort folder)")
    rows = read_clinical_table(table)
    items, skipped = [], []
    for patient, exam, folder in cohort_exams(root):
        if patient not in rows:
            skipped.append(f"{patient}/{exam}: patient not in {table.name}")
            continue
        try:
            record = ClinicalRecord.from_csv_row(rows[patient], exam)
        except (ClinicalValueError, ValueError) as exc:
            skipped.append(f"{patient}/{exam}: {exc}")
            continue
        items.append(ExamItem(patient, exam.upper(), folder, record))
    return items, skipped


def split_by_patient(items: Sequence[ExamItem], val_fraction: float = 0.2, seed: int = 0):
    """(train, validation) items with every patient on one side only."""
    patients = sorted({item.patient for item in items})
    rng = np.random.default_rng(seed)
    rng.shuffle(patients)
    n_val = int(round(val_fraction * len(patients)))
    if len(patients) > 1:
        n_val = min(max(n_val, 1 if val_fraction > 0 else 0), len(patients) - 1)
    val = set(patients[:n_val])
    return [i for i in items if i.patient not in val], [i for i in items if i.patient in val]


class PrepareExam:
    """MONAI-style deterministic transform: item dict -> preprocessed image tensor (C, z, y, x)."""

    def __init__(self, config: PreprocessConfig):
        self.config = config

    def __call__(self, item: dict) -> dict:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prepared = prepare(load_dce(item["path"]), self.config)
        return {**item, "image": prepared.tensor}


def augmentations(seed: int = 0):
    """Random augmentations equivalent to the paper's: flip, affine, blur, noise, gamma."""
    from monai.transforms import (
        Compose,
        RandAdjustContrastd,
        RandAffined,
        RandFlipd,
        RandGaussianNoised,
        RandGaussianSmoothd,
    )

    chain = Compose([
        RandFlipd(keys="image", prob=0.5, spatial_axis=2),
        RandAffined(keys="image", prob=0.5, rotate_range=(0.1, 0.1, 0.1), scale_range=(0.1, 0.1, 0.1),
                    translate_range=(2, 4, 4), padding_mode="zeros"),
        RandGaussianSmoothd(keys="image", prob=0.2, sigma_x=(0.25, 1.0), sigma_y=(0.25, 1.0), sigma_z=(0.25, 1.0)),
        RandGaussianNoised(keys="image", prob=0.2, std=0.05),
        RandAdjustContrastd(keys="image", prob=0.3, gamma=(0.8, 1.25)),
    ])
    chain.set_random_state(seed=seed)
    return chain


class ContrastiveDataset:
    """Items -> {"image": tensor, "text": prompt, "patient", "exam"}; deterministic part cached.

    The paraphrase variant and the augmentation of sample ``i`` in epoch ``e`` are drawn from generators
    seeded by ``(seed, e, i)``, so a resumed run draws the same prompts and augmentations as an
    uninterrupted one, whatever was drawn before.
    """

    def __init__(self, items: Sequence[ExamItem], config: PreprocessConfig, *,
                 attributes: Sequence[str] = ATTRIBUTES, augment: bool = True, seed: int = 0,
                 cache_rate: float = 1.0, num_workers: int = 0):
        from monai.data import CacheDataset

        self.attributes = tuple(attributes)
        self.seed = seed
        self.epoch = 0
        self.items, self.prompts, self.skipped = [], [], []
        for item in items:
            variants = prompt_variants(item.record, self.attributes)
            if any(v.strip() for v in variants):
                self.items.append(item)
                self.prompts.append(variants)
            else:
                self.skipped.append(f"{item.patient}/{item.exam}: no value for {', '.join(self.attributes)}")
        if not self.items:
            raise ValueError(f"no exam has a value for the prompt attributes {', '.join(self.attributes)}")
        self._cache = CacheDataset(
            [{"path": str(i.image), "index": n} for n, i in enumerate(self.items)],
            transform=PrepareExam(config), cache_rate=cache_rate, num_workers=num_workers, progress=False,
        )
        self._augment = augmentations(seed) if augment else None

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def prompt(self, index: int) -> str:
        rng = np.random.default_rng((self.seed, self.epoch, index))
        variants = self.prompts[index]
        return variants[int(rng.integers(len(variants)))]

    def __getitem__(self, index: int) -> dict:
        sample = dict(self._cache[index])
        if self._augment is not None:
            seed = int(np.random.default_rng((self.seed, self.epoch, index, 1)).integers(2**31))
            self._augment.set_random_state(seed=seed)
            sample = self._augment(sample)
        item = self.items[index]
        image = sample["image"]
        image = image.as_tensor() if hasattr(image, "as_tensor") else image
        return {"image": image.float(), "text": self.prompt(index), "patient": item.patient, "exam": item.exam}
