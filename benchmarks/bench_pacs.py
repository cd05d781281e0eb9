"""C-GET against C-MOVE: time to retrieve the same DCE exam from a local Orthanc, in one table.

    python benchmarks/bench_pacs.py [--frames 20] [--slices 20] [--size 128] [--repeat 3]

Starts Debian's Orthanc (/usr/sbin/Orthanc) on 127.0.0.1 at free ports, stores one exam written with
``core.io.dicom_write.save_dicom_series`` (one series, ``--frames`` phases), and retrieves it into a fresh
cache folder with each method, ``--repeat`` times (best and median). Every retrieval includes the checks
of :func:`napari_medimp.core.pacs.retrieve` (images announced, whole phases); the C-MOVE time includes
opening and closing this station's storage port.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _exam(frames: int, slices: int, size: int):
    from napari_medimp.core.volume import DCEVolume

    rng = np.random.default_rng(0)
    data = (100 + 50 * rng.random((frames, slices, size, size))).astype(np.float32)
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    return DCEVolume(data, affine, np.arange(frames) * 10.0, source="bench")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--slices", type=int, default=20)
    parser.add_argument("--size", type=int, default=128, help="rows and columns of each image")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)

    from pacs_server import GETTER, strict_archive

    from napari_medimp.core import pacs
    from napari_medimp.core.io.dicom_write import save_dicom_series

    with tempfile.TemporaryDirectory(prefix="bench-pacs-") as tmp:
        work = Path(tmp)
        (work / "orthanc").mkdir()
        archive = strict_archive(work / "orthanc")
        try:
            files = save_dicom_series(_exam(args.frames, args.slices, args.size), work / "exam", patient_id="B1")
            assert archive.store(files) == len(files)
            megabytes = sum(f.stat().st_size for f in files) / 2**20
            servers = {
                "C-GET": pacs.server_named(path=archive.settings(work / "get.toml", calling_aet=GETTER)),
                "C-MOVE": pacs.server_named(path=archive.settings(
                    work / "move.toml", retrieval="move", move_port=archive.move_port, move_address="127.0.0.1")),
            }
            matches = pacs.find(servers["C-GET"], patient_id="B1")
            times = {name: [] for name in servers}
            for run in range(args.repeat):
                for name, server in servers.items():
                    start = time.perf_counter()
                    pacs.retrieve(server, matches, root=work / f"cache-{name}-{run}")
                    times[name].append(time.perf_counter() - start)
        finally:
            archive.stop()
    print(f"exam: {args.frames} phases x {args.slices} slices of {args.size}x{args.size}, {len(files)} images, "
          f"{megabytes:.1f} MB; Orthanc on 127.0.0.1; {args.repeat} run(s) each")
    print(f"{'method':8} {'best s':>8} {'median s':>9} {'images/s':>9} {'MB/s':>7}")
    for name, values in times.items():
        best = min(values)
        print(f"{name:8} {best:8.2f} {statistics.median(values):9.2f} {len(files) / best:9.0f} "
              f"{megabytes / best:7.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
