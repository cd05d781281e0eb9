"""The ``medimp`` command: every action of the plugin, without a window."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path


def _cmd_synth(args) -> int:
    from .core import synth

    def progress(done, total):
        print(f"\r{done}/{total} patients", end="", file=sys.stderr, flush=True)

    summary = synth.generate_cohort(Path(args.out), n_patients=args.patients, seed=args.seed,
                                    progress=progress)
    print(file=sys.stderr)
    print(json.dumps(summary if isinstance(summary, dict) else str(summary), indent=1, default=str))
    return 0


def _cmd_info(args) -> int:
    from .core.io import load_dce

    volume = load_dce(args.path)
    info = {
        "source": volume.source,
        "shape_tzyx": volume.shape,
        "spacing_zyx_mm": volume.spacing,
        "origin_SAR_mm": volume.origin,
        "frame_times_s": None if volume.frame_times is None else volume.frame_times.round(3).tolist(),
        "lazy": volume.is_lazy,
        "format": volume.metadata.get("format"),
    }
    print(json.dumps(info, indent=1))
    return 0


def _cmd_demo(args) -> int:
    headless = args.headless or not os.environ.get("DISPLAY")
    if headless and not os.environ.get("DISPLAY"):
        xvfb = shutil.which("xvfb-run")
        if xvfb is None:
            print("medimp demo: no display and no xvfb-run; install xvfb (apt-get install xvfb) "
                  "or run with a display", file=sys.stderr)
            return 2
        os.execv(xvfb, [xvfb, "-a", "-s", "-screen 0 1600x1000x24", sys.executable, "-m",
                        "napari_medimp.cli", "demo", "--headless", "--out", str(args.out)])
    from ._demo import run_demo

    return run_demo(headless=headless, out_dir=Path(args.out))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medimp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="generate a synthetic renal-graft DCE-MRI cohort")
    p.add_argument("--patients", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder (clinical.csv, images, ground truth)")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("info", help="describe a DCE-MRI file or folder as it will be opened")
    p.add_argument("path")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("demo", help="open napari with the synthetic sample graft")
    p.add_argument("--headless", action="store_true",
                   help="render off-screen (xvfb), write a screenshot and a report, and exit")
    p.add_argument("--out", default="medimp-demo", help="folder for the screenshot and report")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .core.volume import DCEReadError

    try:
        return args.func(args)
    except DCEReadError as exc:
        print(f"medimp: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
