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


# --------------------------------------------------------------------------------------------------
# model commands
# --------------------------------------------------------------------------------------------------
def _predictor(args):
    from .core.inference import Predictor
    from .core.sample import default_model_path

    return Predictor.from_file(args.model or default_model_path(), device=args.device)


def _sources(path: Path) -> list[tuple[str, str | None, Path]]:
    """(id, exam, path) of every exam under ``path``: one file/series, or the exams of a cohort tree."""
    from .core.io.cohort import classify_folder, cohort_exams

    if path.is_dir() and classify_folder(path).kind in ("exam", "patient", "cohort"):
        return [(f"{patient}/{exam}", exam, folder) for patient, exam, folder in cohort_exams(path)]
    return [(path.name, None, path)]


def _record(args, exam: str):
    from .core.prompts import ClinicalRecord

    if all(getattr(args, k) is None for k in ("gfr", "donor_age", "creatinine", "creatinine_std")):
        return None
    return ClinicalRecord.from_values(exam=exam, donor_age=args.donor_age, gfr=args.gfr,
                                      creatinine=args.creatinine, creatinine_std=args.creatinine_std,
                                      creatinine_unit=args.creatinine_unit)


def _cohort_records(path: Path) -> dict:
    """patient id -> clinical.csv row, when ``path`` is (inside) a cohort with a clinical table."""
    from .core.io.cohort import read_clinical_table

    for folder in (path, path.parent, path.parent.parent):
        if (folder / "clinical.csv").exists():
            return read_clinical_table(folder / "clinical.csv")
    return {}


def _roi(args):
    return None if args.roi is None else tuple(args.roi)


def _cmd_embed(args) -> int:
    import numpy as np

    from .core.io import load_dce

    predictor = _predictor(args)
    ids, vectors = [], []
    sources = _sources(Path(args.path))
    for n, (ident, _exam, path) in enumerate(sources, 1):
        vectors.append(predictor.embed_image(load_dce(path), _roi(args)).vector)
        ids.append(ident)
        print(f"\r{n}/{len(sources)} exams", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    matrix = np.stack(vectors).astype(np.float32)
    if out.suffix == ".csv":
        header = "id," + ",".join(f"e{i}" for i in range(matrix.shape[1]))
        rows = [f"{i}," + ",".join(f"{v:.7g}" for v in vec) for i, vec in zip(ids, matrix, strict=True)]
        out.write_text(header + "\n" + "\n".join(rows) + "\n")
    else:
        np.savez(out, ids=np.array(ids), embeddings=matrix, weights_sha256=predictor.loaded.weights_sha256)
    print(f"{len(ids)} embeddings ({matrix.shape[1]} dimensions) -> {out}")
    return 0


def _cmd_predict(args) -> int:
    import csv

    from .core.inference import analyze
    from .core.io import load_dce
    from .core.prompts import ClinicalRecord, build_prompt

    predictor = _predictor(args)
    rows, table = [], _cohort_records(Path(args.path))
    by_patient: dict[str, dict] = {}
    for ident, exam, path in _sources(Path(args.path)):
        exam = (exam or args.exam).upper()
        patient = ident.split("/")[0]
        record = _record(args, exam)
        if record is None and patient in table:
            record = ClinicalRecord.from_csv_row(table[patient], exam)
        prompt = build_prompt(record) if record is not None else None
        result = analyze(predictor, load_dce(path), exam=exam, prompt=prompt, roi=_roi(args))
        by_patient.setdefault(patient, {})[exam] = result.embedding
        row = {"id": ident, "exam": exam, "prompt": prompt or "", "similarity": result.similarity}
        row.update({f"gfr_{k.replace(' ', '_')}": round(v, 4) for k, v in result.gfr_reading.items()})
        row.update({f"p_dysfunction_{h}": round(v, 4) for h, v in result.prognosis.items()})
        rows.append(row)
    patients = []
    if predictor.loaded.prognosis:
        for patient, vectors in by_patient.items():
            patients.append({"patient": patient, "exams": "+".join(vectors),
                             **{f"p_dysfunction_{h}": round(v, 4)
                                for h, v in predictor.prognosis(vectors).items()}})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".json":
        out.write_text(json.dumps({"exams": rows, "patients": patients, "model": predictor.model_facts()},
                                  indent=1) + "\n")
    else:
        with open(out, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        if patients:
            with open(out.with_name(out.stem + "_patients.csv"), "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=list(patients[0]))
                writer.writeheader()
                writer.writerows(patients)
    print(f"{len(rows)} exams, {len(patients)} patients -> {out}")
    return 0


def _cmd_saliency(args) -> int:
    from .core.io import load_dce, save_nifti
    from .core.prompts import build_prompt
    from .core.saliency import compute_saliency

    predictor = _predictor(args)
    sources = _sources(Path(args.path))
    out = Path(args.out)
    for ident, exam, path in sources:
        exam = (exam or args.exam).upper()
        record = _record(args, exam)
        prompt = args.prompt or (build_prompt(record) if record is not None else None)
        result = compute_saliency(predictor, load_dce(path), _roi(args), method=args.method,
                                  target=args.target, prompt=prompt, exam=exam)
        target = out if len(sources) == 1 and out.name.endswith((".nii", ".nii.gz")) else \
            out / f"{ident.replace('/', '_')}_{args.method}_{args.target}.nii.gz"
        save_nifti(target, result.data, result.roi_affine,
                   sidecar={"method": args.method, "target": args.target, "prompt": prompt,
                            "score": result.score, "roi_zyx": result.roi.to_list(),
                            "model_sha256": predictor.loaded.weights_sha256})
        print(f"{ident}: {args.method} for {args.target} (score {result.score:.3f}) -> {target}")
    return 0


def _model_options(p: argparse.ArgumentParser, clinical: bool = True) -> None:
    p.add_argument("path", help="a DCE file or series, an exam folder, or a cohort/patient folder")
    p.add_argument("--model", help="model file (.safetensors with its .json card); default: the demo model")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cuda, mps or cpu")
    p.add_argument("--roi", type=int, nargs=6, metavar=("Z0", "Z1", "Y0", "Y1", "X0", "X1"),
                   help="kidney box in voxel indices (half-open); default: found from the enhancement")
    if clinical:
        p.add_argument("--exam", default="D30", help="exam of a single file: D15, D30, M3 or M12")
        p.add_argument("--gfr", help="GFR at this exam, mL/min/1.73 m2")
        p.add_argument("--donor-age", help="donor age, years")
        p.add_argument("--creatinine", help="serum creatinine values up to this exam, e.g. '120;135;150'")
        p.add_argument("--creatinine-std", help="creatinine variability (std) instead of the values")
        p.add_argument("--creatinine-unit", default="umol/L", help="umol/L or mg/dL")


TRAINING_COMMANDS = ("train", "evaluate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medimp", description=__doc__,
                                     epilog="medimp train / medimp evaluate: see `medimp train --help` "
                                            "(same as python -m src_train)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="generate a synthetic renal-graft DCE-MRI cohort")
    p.add_argument("--patients", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder (clinical.csv, images, ground truth)")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("info", help="describe a DCE-MRI file or folder as it will be opened")
    p.add_argument("path")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("embed", help="image embeddings of one exam or every exam of a cohort")
    _model_options(p, clinical=False)
    p.add_argument("--out", required=True, help="embeddings file: .npz (ids + matrix) or .csv")
    p.set_defaults(func=_cmd_embed)

    p = sub.add_parser("predict", help="prompt similarity, zero-shot GFR bins and prognosis")
    _model_options(p)
    p.add_argument("--out", required=True, help="predictions: .csv (plus _patients.csv) or .json")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("saliency", help="Grad-CAM / occlusion maps as NIfTI in the exam's geometry")
    _model_options(p)
    p.add_argument("--method", default="gradcam", choices=["gradcam", "gradcam++", "occlusion"])
    p.add_argument("--target", default="similarity", help="similarity (with the prompt) or 2y, 3y, 4y")
    p.add_argument("--prompt", help="prompt text for the similarity target (default: built from the values)")
    p.add_argument("--out", required=True, help="a .nii.gz for one exam, or a folder")
    p.set_defaults(func=_cmd_saliency)

    p = sub.add_parser("demo", help="open napari with the synthetic sample graft")
    p.add_argument("--headless", action="store_true",
                   help="render off-screen (xvfb), write a screenshot and a report, and exit")
    p.add_argument("--out", default="medimp-demo", help="folder for the screenshot and report")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in TRAINING_COMMANDS:
        from src_train.cli import main as train_main

        return train_main(argv, prog="medimp")
    args = build_parser().parse_args(argv)
    from .core.checkpoint import ModelFileError
    from .core.prompts import ClinicalValueError
    from .core.volume import DCEReadError

    try:
        return args.func(args)
    except (DCEReadError, ModelFileError, ClinicalValueError) as exc:
        print(f"medimp: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # invalid option values: ROI outside the volume, unknown target, ...
        print(f"medimp: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
