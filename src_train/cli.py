"""``python -m src_train train|evaluate`` (also ``medimp train`` / ``medimp evaluate``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


# --------------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------------
def train_config_from_args(args):
    from .train import PRESETS, TrainConfig

    values = dict(PRESETS[args.preset])
    if args.config:
        values.update(json.loads(Path(args.config).read_text()))
    for key in ("epochs", "batch_size", "micro_batch", "lr", "seed", "embed_dim", "text_model",
                "text_trainable_layers", "device", "amp"):
        value = getattr(args, key)
        if value is not None:
            values[key] = value
    if args.attributes:
        values["attributes"] = [a.strip() for a in args.attributes.split(",") if a.strip()]
    values["cohort"], values["out"] = args.cohort, args.out
    return TrainConfig.from_dict(values)


def _printer(json_lines: bool):
    def emit(event: dict) -> None:
        if json_lines:
            print(json.dumps(event, default=float), flush=True)
        elif event["event"] == "start":
            print(f"training on {event['train_exams']} exams, validating on {event['val_exams']}; "
                  f"{event['steps_per_epoch']} steps per epoch", file=sys.stderr)
        elif event["event"] == "step":
            print(f"\rstep {event['step']}/{event['total_steps']} loss {event['loss']:.4f}", end="",
                  file=sys.stderr, flush=True)
        elif event["event"] == "epoch":
            metrics = " ".join(f"{k} {event[k]:.3f}" for k in ("val_loss", "recall_at_1", "recall_at_5")
                               if k in event)
            print(f"\repoch {event['epoch']}: train loss {event['train_loss']:.4f} {metrics}", file=sys.stderr)
        elif event["event"] in ("stopped", "done", "resumed"):
            print(f"{event['event']}: {json.dumps(event, default=float)}", file=sys.stderr)
    return emit


def _cmd_train(args) -> int:
    import signal

    from .train import command_line, train

    config = train_config_from_args(args)
    stop = {"requested": False}

    def request_stop(*_):
        stop["requested"] = True  # finish the step, save a checkpoint, exit

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    summary = train(config, resume=args.resume, progress=_printer(args.json_progress),
                    should_stop=lambda: stop["requested"], command=command_line(args.argv, args.prog))
    return 3 if summary.get("stopped") else 0


# --------------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------------
def patient_embeddings(predictor, cohort: Path, patients: list[str]) -> np.ndarray:
    """(n_patients, D + 4) prognosis features from every exam image of each patient."""
    from napari_medimp.core.io import load_dce
    from napari_medimp.core.io.cohort import cohort_exams
    from napari_medimp.core.prognosis import patient_features

    by_patient: dict[str, dict] = {p: {} for p in patients}
    exams = [(p, e, f) for p, e, f in cohort_exams(cohort) if p in by_patient]
    for n, (patient, exam, folder) in enumerate(exams, 1):
        by_patient[patient][exam] = predictor.embed_image(load_dce(folder)).vector
        print(f"\rembedding {n}/{len(exams)} exams", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return np.stack([patient_features(by_patient[p], dim=predictor.embed_dim) for p in patients])


def _untrained(loaded, seed: int):
    """The same architecture with freshly initialised image weights (the 'no pretraining' baseline)."""
    import torch

    from napari_medimp.core.checkpoint import LoadedModel
    from napari_medimp.core.models import ModelConfig, build_model

    torch.manual_seed(seed)
    model = build_model(ModelConfig.from_dict(loaded.card["architecture"])).eval()
    return LoadedModel(model, loaded.card, {}, loaded.weights_path, "untrained-" + loaded.weights_sha256)


def _cmd_evaluate(args) -> int:
    from napari_medimp.core.checkpoint import load_model, save_model
    from napari_medimp.core.inference import Predictor
    from napari_medimp.core.io.cohort import read_clinical_table
    from napari_medimp.core.prompts import TEMPLATE_VERSION

    from .evaluate import (
        HORIZONS,
        clinical_features,
        evaluate_feature_sets,
        fit_heads,
        labels_from_rows,
        to_markdown_table,
        write_csv,
    )

    cohort, out = Path(args.cohort), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_by_id = read_clinical_table(cohort / "clinical.csv")
    patients = sorted(rows_by_id)
    rows = [rows_by_id[p] for p in patients]
    labels = {h: labels_from_rows(rows, h) for h in HORIZONS}
    loaded = load_model(args.model)
    medimp = patient_embeddings(Predictor(loaded, device=args.device), cohort, patients)
    feature_sets = {"MEDIMP": medimp,
                    "untrained encoder": patient_embeddings(Predictor(_untrained(loaded, args.seed),
                                                                      device=args.device), cohort, patients),
                    "clinical values only": clinical_features(rows)}
    for spec in args.ablation or []:
        name, _, path = spec.partition("=")
        feature_sets[f"MEDIMP [{name}]"] = patient_embeddings(Predictor.from_file(path, device=args.device),
                                                              cohort, patients)
    table = evaluate_feature_sets(feature_sets, labels, n_splits=args.splits, n_repeats=args.repeats,
                                  seed=args.seed)
    write_csv(table, out / "evaluation.csv")
    markdown = to_markdown_table(table)
    (out / "evaluation.md").write_text(markdown)
    print(markdown)
    if args.write_heads:
        heads = fit_heads(medimp, labels)
        card = loaded.card
        metrics = {**card.get("metrics", {}), "evaluation": json.loads(table.to_json(orient="records"))}
        save_model(loaded.weights_path, loaded.model, preprocessing=card["preprocessing"],
                   prompt_template_version=card.get("prompt_template_version", TEMPLATE_VERSION),
                   training=card.get("training"), metrics=metrics, prognosis=heads,
                   licence=card.get("licence"), name=card.get("name"))
        print(f"prognosis heads for {', '.join(heads)} stored in {loaded.weights_path}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------------------------------
def build_parser(prog: str = "python -m src_train") -> argparse.ArgumentParser:
    from .train import PRESETS

    parser = argparse.ArgumentParser(prog=prog, description="MEDIMP pretraining and prognosis evaluation")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="contrastive pretraining on a cohort")
    p.add_argument("--cohort", required=True, help="cohort folder (clinical.csv + patient/exam/sequence tree)")
    p.add_argument("--out", required=True, help="run folder: checkpoints, log.csv, loss curve, model files")
    p.add_argument("--preset", default="cpu-small", choices=sorted(PRESETS))
    p.add_argument("--config", help="JSON file of training options (overrides the preset)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--micro-batch", type=int, help="accumulate gradients over micro-batches of this size")
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--embed-dim", type=int)
    p.add_argument("--text-model", help="local HuggingFace encoder folder (default: all-MiniLM-L6-v2)")
    p.add_argument("--text-trainable-layers", type=int)
    p.add_argument("--attributes", help="prompt attributes, comma-separated: gfr,exam,creatinine,donor_age")
    p.add_argument("--device", help="auto (default: cuda, then mps, then cpu), cpu, cuda, cuda:1...; under "
                                    "torchrun each process takes cuda:LOCAL_RANK")
    p.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"],
                   help="mixed precision: auto (default) = bf16 on GPUs that support it, else fp16 with loss "
                        "scaling; off on the CPU")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.add_argument("--json-progress", action="store_true", help="progress as JSON lines on stdout")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="prognosis AUC/F1 by cross-validation, then store prognosis heads")
    p.add_argument("--model", required=True)
    p.add_argument("--cohort", required=True)
    p.add_argument("--out", required=True, help="folder for evaluation.md and evaluation.csv")
    p.add_argument("--splits", type=int, default=5)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--ablation", action="append", metavar="NAME=MODEL",
                   help="also evaluate a model trained with other prompt attributes (repeatable)")
    p.add_argument("--write-heads", action="store_true", help="fit final heads on all patients into the model file")
    p.set_defaults(func=_cmd_evaluate)
    return parser


def main(argv=None, prog: str = "python -m src_train") -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(prog).parse_args(argv)
    args.argv, args.prog = argv, prog  # recorded in the model card as the training command
    from napari_medimp.core.checkpoint import ModelFileError
    from napari_medimp.core.volume import DCEReadError

    try:
        return args.func(args)
    except (ValueError, ModelFileError, DCEReadError, FileNotFoundError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
