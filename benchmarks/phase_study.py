"""Which DCE phases carry the GFR a prompt states? A linear reader per phase choice, on held-out patients.

    python benchmarks/phase_study.py --cohort COHORT [--folds 5] [--pool 4 8 8]

Every exam of the cohort is prepared once with all its frames as channels (the model's grid and
normalisation), each channel is average-pooled to a coarse grid, and for each phase choice a ridge
regression (penalty chosen by inner cross-validation) reads log GFR from the pooled channels of that
choice; folds are by patient, so every number is on patients the reader never saw. Printed: R2 of log
GFR and the GFR bin read right (the prompt's five bins) against always answering the commonest bin.
Frame times are the cohort's (synthetic default: 3 baseline frames every 4 s, 11 first-pass frames every
4 s, then geometrically to 300 s). This is how the training presets' phases were chosen; it measures a
linear reader, so it ranks inputs, it does not bound what a network can read.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np


def _frames_for(choice: tuple, times: np.ndarray, first_pass: int, n_baseline: int) -> list[list[int]]:
    groups = []
    for sel in choice:
        if sel == "baseline":
            groups.append(list(range(n_baseline)))
        elif sel == "first-pass":
            groups.append([first_pass])
        elif sel == "peak-late":
            groups.append([len(times) - 1])
        elif isinstance(sel, str) and sel.endswith("s"):
            groups.append([int(np.argmin(np.abs(times - float(sel[:-1]))))])
        elif sel == "all":
            groups.extend([[t] for t in range(len(times))])
    return groups


CHOICES = {
    "peak (latest maximum; the former default)": ("peak",),
    "first-pass": ("first-pass",),
    "baseline + first-pass": ("baseline", "first-pass"),
    "late (300 s)": ("300s",),
    "baseline, 28 s, 52 s, 120 s, late": ("baseline", "28s", "52s", "120s", "300s"),
    "baseline, first-pass, 60 s, 120 s, late": ("baseline", "first-pass", "60s", "120s", "300s"),
    "every frame (20 channels)": ("all",),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cohort", required=True, type=Path)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--pool", type=int, nargs=3, default=(4, 8, 8))
    args = parser.parse_args(argv)

    import torch
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from napari_medimp.core.io import load_dce
    from napari_medimp.core.io.cohort import cohort_exams, read_clinical_table
    from napari_medimp.core.preprocess import PreprocessConfig, first_pass_index, prepare
    from napari_medimp.core.prompts import GFR_BINS, gfr_bin

    rows = read_clinical_table(args.cohort / "clinical.csv")
    started = time.perf_counter()
    pooled, targets, owners, peaks, firsts, times = [], [], [], [], [], None
    exams = list(cohort_exams(args.cohort))
    for n, (patient, exam, folder) in enumerate(exams, 1):
        try:
            gfr = float(rows[patient][f"gfr_{exam.upper()}"])
        except (KeyError, TypeError, ValueError):
            continue
        if not np.isfinite(gfr):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            volume = load_dce(folder)
            config = PreprocessConfig(phases=tuple(range(volume.n_frames)))
            prepared = prepare(volume, config)
        x = torch.as_tensor(np.asarray(prepared.tensor), dtype=torch.float32)
        curve = x.mean(dim=(1, 2, 3)).numpy()
        peaks.append(int(np.argmax(curve)))
        firsts.append(first_pass_index(curve, config.baseline_frames))
        pooled.append(torch.nn.functional.adaptive_avg_pool3d(x, tuple(args.pool)).reshape(x.shape[0], -1).numpy())
        targets.append(gfr)
        owners.append(patient)
        times = np.asarray(volume.frame_times, float)
        print(f"\rprepared {n}/{len(exams)} exams", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    y = np.log(np.asarray(targets))
    bins = np.array([gfr_bin(g) for g in targets])
    commonest = max(set(bins), key=list(bins).count)
    groups = np.asarray(owners)
    print(f"{len(y)} exams of {len(set(owners))} patients, prepared in {time.perf_counter() - started:.0f} s; "
          f"'peak' picked frame {np.bincount(peaks).argmax()} ({times[np.bincount(peaks).argmax()]:.0f} s) "
          f"in {np.mean(np.asarray(peaks) == np.bincount(peaks).argmax()):.0%} of exams, first-pass frames "
          f"{min(firsts)}-{max(firsts)} ({times[min(firsts)]:.0f}-{times[max(firsts)]:.0f} s)")
    print()
    print("| phases | channels | R2 of log GFR (held-out patients) | GFR bin right | commonest bin |")
    print("|---|---|---|---|---|")
    edges = np.log([15, 30, 45, 60])
    for name, choice in CHOICES.items():
        feats = []
        for i in range(len(y)):
            if choice == ("peak",):
                groups_i = [[peaks[i]]]
            else:
                groups_i = _frames_for(choice, times, firsts[i], 2)
            feats.append(np.concatenate([pooled[i][g].mean(axis=0) for g in groups_i]))
        X = np.asarray(feats)
        pred = np.empty_like(y)
        for train, test in GroupKFold(n_splits=args.folds).split(X, y, groups):
            model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-1, 4, 12)))
            model.fit(X[train], y[train])
            pred[test] = model.predict(X[test])
        r2 = 1 - np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2)
        read = np.array([GFR_BINS[int(np.searchsorted(edges, v, side="right"))] for v in pred])
        print(f"| {name} | {X.shape[1] // int(np.prod(args.pool))} | {r2:.2f} | {np.mean(read == bins):.2f} | "
              f"{np.mean(bins == commonest):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
