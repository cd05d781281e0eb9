"""I/O and data-generation benchmarks; prints one table.

    python benchmarks/bench_io.py [--size-mb 512] [--patients 3] [--workdir DIR]

* time to first display (open through the plugin reader + the first 2D slice napari draws) against a full
  read, for a 4D NIfTI of at least 500 MB, uncompressed and gzip-compressed;
* synthetic cohort generation time per patient (4 exams each) at the default grid.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np


def _make_large_nifti(path: Path, size_mb: int, compressed: bool) -> tuple[int, ...]:
    nx, ny, nz = 256, 256, 64
    nt = max(2, int(np.ceil(size_mb * 2**20 / (nx * ny * nz * 4))))
    rng = np.random.default_rng(0)
    base = rng.random((nx, ny, nz), dtype=np.float32) * 100
    data = np.empty((nx, ny, nz, nt), np.float32)
    for t in range(nt):
        data[..., t] = base * (1 + 0.05 * t)
    img = nib.Nifti1Image(data, np.diag([-1.4, 1.4, 3.0, 1.0]))
    nib.openers.Opener.default_compresslevel = 1
    nib.save(img, str(path))
    return data.shape


def _timed(fn, repeat=1):
    best = float("inf")
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def bench_first_display(workdir: Path, size_mb: int) -> list[tuple]:
    from napari_medimp._reader import read_dce
    from napari_medimp.core.io import load_nifti, save_nifti

    warm = save_nifti(workdir / "warm.nii", np.ones((2, 4, 4, 4), np.float32), np.eye(4))
    load_nifti(warm, lazy=True).frame(0)  # imports (dask, ...) are not part of the comparison
    rows = []
    for name, compressed in (("large.nii", False), ("large.nii.gz", True)):
        path = workdir / name
        shape = _make_large_nifti(path, size_mb, compressed)
        voxel_mb = np.prod(shape) * 4 / 2**20

        def first_display(path=path):
            layer = read_dce(path)[0]
            data = layer[0]
            z_mid = data.shape[1] // 2
            return np.asarray(data[0, z_mid])  # the 2D slice napari renders first

        def full_read(path=path):
            return load_nifti(path, lazy=False).data

        t_first, _ = _timed(first_display)
        t_full, full = _timed(full_read)
        del full
        rows.append((f"{name} {voxel_mb:.0f} MB {shape}", t_first, t_full, t_full / t_first))
        path.unlink()
    return rows


def bench_synth(workdir: Path, n_patients: int) -> tuple[float, float, float]:
    from napari_medimp.core import synth

    out = workdir / "cohort"
    t0 = time.perf_counter()
    synth.generate_cohort(out, n_patients=n_patients, seed=0)
    elapsed = time.perf_counter() - t0
    images = list(out.rglob("*_dce.nii.gz"))
    size_mb = sum(p.stat().st_size for p in images) / 2**20 / max(1, len(images))
    t0 = time.perf_counter()
    synth.simulate_exam(seed=0, patient_index=0, exam="D30")
    t_exam = time.perf_counter() - t0
    return elapsed / n_patients, t_exam, size_mb


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=512)
    parser.add_argument("--patients", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(dir=args.workdir))
    try:
        rows = bench_first_display(workdir, args.size_mb)
        per_patient, per_exam, size_mb = bench_synth(workdir, args.patients)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print("\n| 4D NIfTI | first display (s) | full read (s) | full / first |")
    print("|---|---|---|---|")
    for label, first, full, ratio in rows:
        print(f"| {label} | {first:.3f} | {full:.2f} | {ratio:.0f}x |")
    print("\n| synthetic cohort | value |")
    print("|---|---|")
    print(f"| generation per patient (4 exams, files written) | {per_patient:.2f} s |")
    print(f"| one exam in memory (sample data) | {per_exam:.2f} s |")
    print(f"| file size per exam (.nii.gz, int16) | {size_mb:.1f} MB |")


if __name__ == "__main__":
    main()
