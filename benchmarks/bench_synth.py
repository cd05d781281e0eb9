"""Synthetic data generation speed: one exam and a small cohort, against the goals the docs state.

    python benchmarks/bench_synth.py [--repeats 3] [--patients 4]

Goal: one exam (24 x 64 x 80 voxels, 20 frames, dcmri kinetics) in under 10 s on a 2-core machine, so
that a cohort of 100 patients (about 340 exams) takes minutes, not hours.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

EXAM_GOAL_S = 10.0


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--patients", type=int, default=4)
    args = parser.parse_args(argv)

    from napari_medimp.core import synth

    exam_times = []
    for i in range(args.repeats):
        start = time.perf_counter()
        synth.simulate_exam(seed=i, patient_index=0, exam="D30")
        exam_times.append(time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        synth.generate_cohort(Path(folder) / "cohort", n_patients=args.patients, seed=1)
        cohort_s = time.perf_counter() - start
    best = min(exam_times)
    print("\n| measure | seconds | goal | met |\n|---|---|---|---|")
    print(f"| one exam (best of {args.repeats}) | {best:.2f} | < {EXAM_GOAL_S:g} | {'yes' if best < EXAM_GOAL_S else 'no'} |")
    print(f"| one exam (median) | {sorted(exam_times)[len(exam_times) // 2]:.2f} | | |")
    print(f"| cohort of {args.patients} patients, files written | {cohort_s:.1f} | | |")
    print(f"| per patient | {cohort_s / args.patients:.2f} | | |")


if __name__ == "__main__":
    main()
