"""Prognosis evaluation on patients the model never saw: the whole protocol in one call.

No napari, no Qt, no training here: numpy, pandas, scipy and scikit-learn only. ``python -m src_train
evaluate`` builds the inputs (embeddings, clinical values, ground truth) and calls :func:`evaluate`.

Protocol
--------
* The evaluation cohort must not hold a patient that pretraining or checkpoint selection saw: the command
  checks the model card's ``training.patients_seen`` before any model work
  (:mod:`napari_medimp.core.provenance`).
* A **reading** is one patient at one visit whose image exists; it uses the exams so far
  (:mod:`napari_medimp.core.prognosis`). Heads are fitted per visit.
* Repeated stratified K-fold **by patient**: for each horizon the patients with a known outcome are split,
  and every visit's head is fitted on the training patients' readings only (imputation, scaling and the
  classifier form one pipeline fitted inside the fold). Training readings are augmented with every subset
  of the earlier exams (weights summing to 1 per reading), so a head learns readings with exams missing.
* Each reading's out-of-fold probability is averaged over repeats. The table scores each patient's
  latest reading; the calibration table scores every visit.
* 95 % intervals: patient-level bootstrap (percentile); paired differences use the same resamples for
  both feature sets.

Where each part lives: :mod:`.readings` (features of readings, outcomes), :mod:`.cross_validation`,
:mod:`.heads` (the heads' model and the final heads), :mod:`.bootstrap` (scores and intervals),
:mod:`.tables` (tables, figure, files), :mod:`.zero_shot` (readings against prompts); here the whole protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .cross_validation import HorizonResult, cross_validate
from .readings import ClinicalTable, FeatureSet
from .tables import calibration_by_visit, comparison_table, summary_table


@dataclass
class Evaluation:
    results: list[HorizonResult]
    table: pd.DataFrame
    comparisons: pd.DataFrame
    calibration: pd.DataFrame
    names: list[str]


def evaluate(feature_sets: Sequence[FeatureSet], clinical: ClinicalTable, patients: Sequence[str],
             labels_by_horizon: Mapping[str, np.ndarray], *, n_splits: int = 5, n_repeats: int = 10, seed: int = 0,
             n_boot: int = 1000, C: float = 1.0, progress: Callable[[str], None] | None = None) -> Evaluation:
    """The whole protocol of the module docstring, for every horizon."""
    names = [fs.name for fs in feature_sets]
    if len(set(names)) != len(names):
        raise ValueError(f"feature set names repeat: {names}")
    results = cross_validate(feature_sets, clinical, patients, labels_by_horizon, n_splits=n_splits,
                             n_repeats=n_repeats, seed=seed, C=C, progress=progress)
    return Evaluation(results, summary_table(results, names, n_boot=n_boot, seed=seed),
                      comparison_table(results, names, n_boot=n_boot, seed=seed),
                      calibration_by_visit(results, names), names)
