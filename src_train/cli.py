"""``python -m src_train train|evaluate`` (also ``medimp train`` / ``medimp evaluate``)."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import numpy as np


# --------------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------------
def train_config_from_args(args):
    from napari_medimp.core.training_run import PRESETS, TrainConfig

    values = dict(PRESETS[args.preset])
    if args.config:
        values.update(json.loads(Path(args.config).read_text()))
    for key in ("epochs", "batch_size", "micro_batch", "lr", "seed", "embed_dim", "text_model",
                "text_trainable_layers", "device", "amp", "patience"):
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
            if 0 < event.get("val_patients", 20) < 20:
                print(f"note: {event['val_patients']} validation patients; below 20 the best epoch and early "
                      "stopping follow noise (a larger cohort or val_fraction helps)", file=sys.stderr)
        elif event["event"] == "step":
            print(f"\rstep {event['step']}/{event['total_steps']} loss {event['loss']:.4f}", end="",
                  file=sys.stderr, flush=True)
        elif event["event"] == "epoch":
            metrics = " ".join(text for keys, text in (
                (("val_loss", "val_chance_loss", "val_floor_loss"),
                 "val loss {val_loss:.3f} (chance {val_chance_loss:.3f}, floor {val_floor_loss:.3f})"),
                (("mean_rank", "chance_mean_rank"), "mean rank {mean_rank:.1f} (chance {chance_mean_rank:.1f})"),
                (("content_top1", "content_baseline"),
                 "content top-1 {content_top1:.3f} (commonest {content_baseline:.3f})"),
            ) if all(k in event for k in keys)).format(**event)
            print(f"\repoch {event['epoch']}: train loss {event['train_loss']:.4f} {metrics}", file=sys.stderr)
        elif event["event"] in ("stopped", "done", "resumed", "early_stop"):
            print(f"{event['event']}: {json.dumps(event, default=float)}", file=sys.stderr)
    return emit


def _cmd_train(args) -> int:
    import signal

    from .run_folder import command_line
    from .train import train

    config = train_config_from_args(args)
    stop = {"requested": False}

    def request_stop(*_):
        stop["requested"] = True  # finish the step, save a checkpoint, exit

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    summary = train(config, resume=args.resume, overwrite=args.overwrite, override=args.override,
                    progress=_printer(args.json_progress),
                    should_stop=lambda: stop["requested"], command=command_line(args.argv, args.prog))
    from napari_medimp.core.training_run import EXIT_STOPPED

    return EXIT_STOPPED if summary.get("stopped") else 0


# --------------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------------
def exam_embeddings(predictors: dict, cohort: Path, patients: list[str]) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """{name: {patient: {exam: unit-norm embedding}}} of every exam image of the cohort's listed patients,
    for each named predictor; each exam is read and prepared once per distinct preprocessing."""
    from napari_medimp.core.failures import failure_message
    from napari_medimp.core.io import load_dce
    from napari_medimp.core.io.cohort import cohort_exams

    out = {name: {p: {} for p in patients} for name in predictors}
    wanted = set(patients)
    exams = [(p, e, f) for p, e, f in cohort_exams(cohort) if p in wanted]
    skipped = []
    for n, (patient, exam, folder) in enumerate(exams, 1):
        try:  # an exam that cannot be read or embedded is skipped and listed; the others are evaluated
            volume = load_dce(folder)
            vectors = {name: predictor.embed_image(volume).vector for name, predictor in predictors.items()}
        except (ValueError, OSError, RecursionError, MemoryError) as exc:
            skipped.append(f"{patient}/{exam}")
            print(f"\nskipped {patient}/{exam}: {failure_message(exc)[1]}", file=sys.stderr)
            continue
        for name, vector in vectors.items():
            out[name][patient][exam.upper()] = vector
        print(f"\rembedding {n}/{len(exams)} exams", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    if exams and len(skipped) == len(exams):
        raise ValueError(f"{cohort}: none of the {len(exams)} exams could be read (listed above)")
    if skipped:
        print(f"{len(skipped)} of {len(exams)} exams skipped: {', '.join(skipped)}", file=sys.stderr)
    return out


def _untrained(loaded, seed: int, cohort: Path, patients: list[str], n_calibration: int = 64):
    """The same architecture with freshly initialised image weights (the 'no pretraining' baseline), its
    batch-norm statistics recalibrated on up to ``n_calibration`` of the cohort's exam images (drawn with
    ``seed``; images only, no label). Without that, a fresh encoder normalises with its initial statistics
    (mean 0, variance 1) and gives every exam almost the same embedding: a constant, not a baseline."""
    import warnings

    import torch

    from napari_medimp.core.checkpoint import LoadedModel
    from napari_medimp.core.io import load_dce
    from napari_medimp.core.io.cohort import cohort_exams
    from napari_medimp.core.models import ModelConfig, build_model
    from napari_medimp.core.preprocess import PreprocessConfig, prepare

    from .batch_norm import image_batches, recalibrate_batchnorm

    torch.manual_seed(seed)
    model = build_model(ModelConfig.from_dict(loaded.card["architecture"])).eval()
    wanted = set(patients)
    folders = [f for p, _, f in cohort_exams(cohort) if p in wanted]
    chosen = np.random.default_rng(seed).permutation(len(folders))[:n_calibration]
    config = PreprocessConfig.from_dict(loaded.card["preprocessing"])
    images = []
    for i in sorted(chosen):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tensor = prepare(load_dce(folders[i]), config).tensor
        except (ValueError, OSError):
            continue  # an exam that cannot be read is reported when it is embedded
        images.append(torch.as_tensor(np.asarray(tensor), dtype=torch.float32))
    recalibrate_batchnorm(model.image_encoder, image_batches(images))
    return LoadedModel(model, loaded.card, {}, loaded.weights_path, "untrained-" + loaded.weights_sha256)


def clinical_values(rows_by_id: dict, patients: list[str]) -> dict:
    """{patient: {visit: ClinicalValues}} from clinical.csv rows; a bad cell is an error naming it."""
    from napari_medimp.core.clinical import ClinicalRecord, ClinicalValueError
    from napari_medimp.core.prognosis import ClinicalValues
    from napari_medimp.core.terms import EXAMS, MG_DL_TO_UMOL_L

    out = {}
    for p in patients:
        out[p] = {}
        for visit in EXAMS:
            try:
                out[p][visit] = ClinicalValues.from_record(ClinicalRecord.from_csv_row(rows_by_id[p], visit))
            except ClinicalValueError as exc:
                hint = ""
                if exc.field == "creatinine" and isinstance(exc.value, (int, float)) and exc.value < 30:
                    hint = (" (values this small look like mg/dL; clinical.csv expects umol/L: multiply by "
                            f"{MG_DL_TO_UMOL_L:g})")
                raise ValueError(f"clinical.csv, patient {p}, {visit}: {exc}{hint}") from None
    return out


def similarity_reference(predictor, embeddings: dict, rows_by_id: dict, cohort: str) -> dict:
    """Range of the image-prompt similarity on a cohort: each exam with the prompt of its own clinical
    values (the prompt ``medimp analyze`` builds), as 5 %, 50 % and 95 % quantiles."""
    from napari_medimp.core.clinical import ClinicalRecord, ClinicalValueError
    from napari_medimp.core.prompts import build_prompt

    values = []
    for p, exams in embeddings.items():
        for exam, vec in exams.items():
            try:
                prompt = build_prompt(ClinicalRecord.from_csv_row(rows_by_id[p], exam))
            except (ClinicalValueError, ValueError):
                continue
            if prompt:
                values.append(float(predictor.similarity(vec, prompt)[0]))
    if not values:
        return {}
    low, median, high = np.quantile(values, [0.05, 0.5, 0.95])
    return {"n_exams": len(values), "low": float(low), "median": float(median), "high": float(high),
            "quantiles": [0.05, 0.5, 0.95], "cohort": cohort,
            "prompt": "each exam with the prompt of its own clinical values"}


def gfr_similarities(predictor, embeddings: dict, rows_by_id: dict):
    """(similarities (n, 5), true bin index (n,), patient per row) of every exam with a known GFR."""
    from napari_medimp.core.prompts import ATTRIBUTE_BINS, gfr_bin

    bins = list(ATTRIBUTE_BINS["gfr"])
    sims, truth, owners = [], [], []
    for p, exams in embeddings.items():
        for exam, vec in exams.items():
            value = rows_by_id[p].get(f"gfr_{exam}")
            try:
                gfr = float(value)
            except (TypeError, ValueError):
                continue
            if not np.isfinite(gfr):
                continue
            sims.append(predictor.bin_similarities(vec, "gfr"))
            truth.append(bins.index(gfr_bin(gfr)))
            owners.append(p)
    return np.array(sims).reshape(-1, len(bins)), np.array(truth, int), owners, bins


def prompt_content_retrieval(predictor, embeddings: dict, rows_by_id: dict, card: dict, args) -> dict:
    """Image -> prompt content retrieval of every exam with an image (``evaluate.content_evaluation``),
    with the prompt attributes the model was trained with."""
    import torch

    from napari_medimp.core.clinical import ClinicalRecord, ClinicalValueError
    from napari_medimp.core.prompts import ATTRIBUTES, slot_values

    from .zero_shot import content_evaluation

    attributes = tuple((card.get("training") or {}).get("config", {}).get("attributes") or ATTRIBUTES)
    vectors, exams, slots, owners = [], [], [], []
    for p, by_exam in embeddings.items():
        for exam, vec in by_exam.items():
            try:
                record = ClinicalRecord.from_csv_row(rows_by_id[p], exam)
            except (ClinicalValueError, ValueError):
                continue
            vectors.append(vec)
            exams.append(exam)
            slots.append(slot_values(record))
            owners.append(p)
    if not vectors:
        return {}
    return content_evaluation(torch.as_tensor(np.stack(vectors)), exams, slots, owners, attributes,
                              lambda texts: torch.as_tensor(predictor.embed_texts(texts)),
                              n_boot=args.bootstrap, seed=args.seed)


def _ci(values) -> str:
    return f"[{values[0]:.2f}, {values[1]:.2f}]" if values else ""


def zero_shot_sentence(z: dict) -> str:
    """The zero-shot GFR reading in one paragraph of the evaluation report."""
    if not z.get("n_exams"):
        return "Zero-shot GFR bin: no exam with a GFR value."
    return (f"Zero-shot GFR bin on unseen patients ({z['n_exams']} exams of {z['n_patients']} patients): accuracy "
            f"{z['accuracy']:.2f} {_ci(z.get('accuracy_ci'))} against {z['majority_accuracy']:.2f} "
            f"{_ci(z.get('majority_accuracy_ci'))} for always the most frequent bin; balanced accuracy "
            f"{z['balanced_accuracy']:.2f} {_ci(z.get('balanced_accuracy_ci'))} against a chance level of "
            f"{z['chance_balanced_accuracy']:.2f} ({z['bins_present']} bins present); confusion (rows true "
            f"{', '.join(z['bins'])}): {z['confusion']}.")


def content_sentence(c: dict) -> str:
    """The prompt-content retrieval in one paragraph of the evaluation report."""
    if not c:
        return "Prompt-content retrieval: fewer than two distinct contents, nothing to tell apart."
    return (f"Prompt-content retrieval on unseen patients ({c['n_exams']} exams, {c['n_contents']} distinct contents "
            f"of {', '.join(c['content_attributes'])}; the visit is given): the image's own content ranks first "
            f"for {c['top1']:.2f} {_ci(c['top1_ci'])} of exams against {c['commonest']:.2f} {_ci(c['commonest_ci'])} "
            f"for always the commonest content of the visit (difference {c['difference']:+.2f} "
            f"{_ci(c['difference_ci'])}); mean rank {c['mean_rank']:.1f} {_ci(c['mean_rank_ci'])} of "
            f"{c['n_contents']} (chance {c['chance_mean_rank']:.1f}). With what is common added back (the content "
            f"prior of the visit and the scale fitted on the other half of the patients): right for "
            f"{c['with_prior']:.2f} {_ci(c['with_prior_ci'])} against {c['prior_only']:.2f} "
            f"{_ci(c['prior_only_ci'])} for the prior alone (difference {c['prior_difference']:+.2f} "
            f"{_ci(c['prior_difference_ci'])}).")


def _check_overlap(card: dict, cohort: Path, patients: list[str], allow: bool) -> str | None:
    """Refuse (ValueError) an evaluation cohort holding patients the model saw; returns the warning to
    print with the table, if any."""
    from napari_medimp.core.provenance import overlap_with_seen

    overlap, unknown = overlap_with_seen(card, cohort, patients)
    if unknown:
        return f"WARNING: {unknown}."
    if not overlap:
        return None
    shown = ", ".join(overlap[:8]) + (" ..." if len(overlap) > 8 else "")
    message = (f"{len(overlap)} of the {len(patients)} evaluation patients were used to pretrain this model or "
               f"select its checkpoint ({shown})")
    if not allow:
        raise ValueError(f"{message}; evaluate on patients it never saw, or pass --allow-overlap for a table "
                         "marked as in-sample")
    return f"WARNING: in-sample table: {message}. These numbers are not a result."


#: every file ``evaluate`` writes into its folder
EVALUATION_FILES = ("evaluation.csv", "comparisons.csv", "calibration.csv", "zero_shot_gfr.json",
                    "content_retrieval.json", "reliability.png", "evaluation.md")


def _cmd_evaluate(args) -> int:
    import json as _json

    from napari_medimp.core.checkpoint import load_model, read_card, save_model
    from napari_medimp.core.checks import embedding_reference
    from napari_medimp.core.inference import Predictor
    from napari_medimp.core.io.cohort import (
        cohort_exams,
        match_clinical_table,
        read_clinical_table,
        sample_ids,
    )
    from napari_medimp.core.outputs import check_output_folder, replacing_output_folder
    from napari_medimp.core.prognosis import OUTCOME_DEFINITION, clinical_reference
    from napari_medimp.core.prompts import TEMPLATE_VERSION
    from napari_medimp.core.provenance import cohort_identity
    from napari_medimp.core.terms import EXAMS, HORIZONS

    from .evaluate import evaluate
    from .heads import fit_heads
    from .readings import ClinicalTable, EmbeddingSource, FeatureSet, OracleSource, labels_from_rows
    from .tables import interval_table, reliability_figure, to_markdown_table, write_csv
    from .zero_shot import zero_shot_evaluation

    if args.splits < 2:
        raise ValueError(f"--splits {args.splits}: cross-validation needs at least 2 splits")
    if args.repeats < 1:
        raise ValueError(f"--repeats {args.repeats}: at least 1 repeat")
    if args.bootstrap < 40:
        raise ValueError(f"--bootstrap {args.bootstrap}: a 95 % interval needs at least 40 resamples (one in each "
                         "2.5 % tail)")
    cohort, out = Path(args.cohort), Path(args.out)
    if not (cohort / "clinical.csv").is_file():
        raise ValueError(f"{cohort}: no clinical.csv (an evaluation cohort needs outcomes)")
    if not args.overwrite:
        check_output_folder(out, EVALUATION_FILES, overwrite=False)  # before any work
    rows_by_id = read_clinical_table(cohort / "clinical.csv")
    patients = sorted(rows_by_id)
    exams = cohort_exams(cohort)
    missing = set(match_clinical_table(cohort / "clinical.csv", rows_by_id, [p for p, _e, _f in exams]))
    if missing:
        left = [f"{p}/{e}" for p, e, _f in exams if p in missing]
        print(f"{args.prog}: warning: {cohort / 'clinical.csv'} has no row for {len(left)} of {len(exams)} exams "
              f"({sample_ids(left)}); they are left out (ids are matched exactly)", file=sys.stderr)
    warning = _check_overlap(read_card(args.model), cohort, patients, args.allow_overlap)
    if warning:
        print(warning, file=sys.stderr)
    rows = [rows_by_id[p] for p in patients]
    labels = {h: labels_from_rows(rows, h) for h in HORIZONS}
    if not patients:
        raise ValueError(f"{cohort / 'clinical.csv'} holds no patient: nothing to evaluate")
    clinical_by_visit = clinical_values(rows_by_id, patients)

    loaded = load_model(args.model)
    predictor = Predictor(loaded, device=args.device)
    predictors = {"MEDIMP": predictor, "untrained": Predictor(_untrained(loaded, args.seed, cohort, patients),
                                                               device=args.device)}
    ablations = [spec.partition("=")[::2] for spec in args.ablation or []]
    for name, path in ablations:
        predictors[f"MEDIMP [{name}]"] = Predictor.from_file(path, device=args.device)
    embeddings = exam_embeddings(predictors, cohort, patients)
    medimp, untrained = embeddings["MEDIMP"], embeddings["untrained"]
    images = {p: list(ex) for p, ex in medimp.items()}
    clinical = ClinicalTable(clinical_by_visit, images)
    source = EmbeddingSource(medimp)
    sets = [FeatureSet("MEDIMP", "image", source), FeatureSet("MEDIMP + clinical", "image+clinical", source),
            FeatureSet("untrained encoder", "image", EmbeddingSource(untrained)),
            FeatureSet("clinical values only", "clinical")]
    truth_path = cohort / "ground_truth.json"
    if truth_path.is_file():
        oracle = OracleSource(_json.loads(truth_path.read_text()), images)
        sets += [FeatureSet("oracle image reader", "image", oracle),
                 FeatureSet("oracle + clinical", "image+clinical", oracle)]
    for name, _ in ablations:
        sets.append(FeatureSet(f"MEDIMP [{name}]", "image", EmbeddingSource(embeddings[f"MEDIMP [{name}]"])))

    def progress(text: str) -> None:
        print(f"\rcross-validation {text}      ", end="", file=sys.stderr, flush=True)

    result = evaluate(sets, clinical, patients, labels, n_splits=args.splits, n_repeats=args.repeats,
                      seed=args.seed, n_boot=args.bootstrap, progress=progress)
    print(file=sys.stderr)
    sims, truth, owners, bins = gfr_similarities(predictor, medimp, rows_by_id)
    zero_shot = zero_shot_evaluation(sims, truth, owners, bins, seed=args.seed)
    content = prompt_content_retrieval(predictor, medimp, rows_by_id, loaded.card, args)

    # every file is written, or the folder keeps the earlier evaluation whole
    with replacing_output_folder(out, EVALUATION_FILES, overwrite=args.overwrite):
        write_csv(result.table, out / "evaluation.csv")
        write_csv(result.comparisons, out / "comparisons.csv")
        write_csv(result.calibration, out / "calibration.csv")
        (out / "zero_shot_gfr.json").write_text(_json.dumps(zero_shot, indent=1) + "\n")
        (out / "content_retrieval.json").write_text(_json.dumps(content, indent=1) + "\n")
        figure = reliability_figure(result.results, ["MEDIMP", "MEDIMP + clinical", "clinical values only"])
        figure.savefig(out / "reliability.png")
        identity = cohort_identity(cohort) or str(cohort)
        lines = [f"# Prognosis evaluation of {loaded.card.get('name', args.model)}", ""]
        if warning:
            lines += [f"**{warning}**", ""]
        lines += [f"Evaluation cohort: {identity} ({len(patients)} patients). Outcome at horizon h: {OUTCOME_DEFINITION}; "
                  "one model per visit over every horizon (shared coefficients, ordered intercepts, clinical values "
                  "bounded to the direction medicine expects). Each patient's latest reading (the exams "
                  f"so far at their last exam with an image); {result.results[0].n_splits or args.splits}-fold "
                  f"stratified cross-validation by patient repeated {args.repeats} times; 95 % patient-level "
                  f"bootstrap intervals ({args.bootstrap} resamples). The untrained encoder is the same architecture "
                  f"with fresh weights (seed {args.seed}) and batch-norm statistics computed from up to 64 of the "
                  f"cohort's exam images (images only, no label).", "",
                  to_markdown_table(interval_table(result.table)),
                  "Paired AUC differences (same patients, same bootstrap resamples):", "",
                  to_markdown_table(result.comparisons),
                  "Calibration per visit (mean predicted risk against the observed prevalence):", "",
                  to_markdown_table(result.calibration),
                  zero_shot_sentence(zero_shot), "", content_sentence(content), ""]
        markdown = "\n".join(lines)
        (out / "evaluation.md").write_text(markdown)
        print(markdown)
    if args.write_heads:
        keep = [s for s in sets if s.name in ("MEDIMP", "MEDIMP + clinical", "clinical values only")]
        heads = fit_heads(keep, clinical, patients, labels)
        card = loaded.card
        records = _json.loads(result.table.to_json(orient="records"))
        metrics = {**card.get("metrics", {}), "evaluation": records,
                   "comparisons": _json.loads(result.comparisons.to_json(orient="records")),
                   "calibration_by_visit": _json.loads(result.calibration.to_json(orient="records")),
                   "zero_shot_gfr": zero_shot, "content_retrieval": content,
                   "evaluation_protocol": {"cohort": identity, "n_patients": len(patients),
                                           "splits": args.splits, "repeats": args.repeats,
                                           "bootstrap": args.bootstrap, "seed": args.seed,
                                           "in_sample_warning": warning}}
        owners = [p for p, exams in medimp.items() for _ in exams]
        vectors = [v for exams in medimp.values() for v in exams.values()]
        references = {visit: clinical_reference([clinical.at(p, visit) for p in patients
                                                 if visit in clinical.exams(p)]) for visit in EXAMS}
        training = {**(card.get("training") or {}),
                    "clinical_reference": {v: r for v, r in references.items() if r is not None},
                    "similarity_reference": similarity_reference(predictor, medimp, rows_by_id, identity),
                    "prognosis_heads_data": {"cohort": identity, "cohort_path": str(cohort),
                                             "n_patients": len(patients)},
                    "embedding_reference": embedding_reference(vectors, groups=owners, cohort=identity)}
        save_model(loaded.weights_path, loaded.model, preprocessing=card["preprocessing"],
                   prompt_template_version=card.get("prompt_template_version", TEMPLATE_VERSION),
                   training=training, metrics=metrics, prognosis=heads,
                   licence=card.get("licence"), name=card.get("name"))
        print(f"{len(heads)} prognosis heads stored in {loaded.weights_path}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------------------------------
def build_parser(prog: str = "python -m src_train") -> argparse.ArgumentParser:
    from napari_medimp.core.training_run import AMP_MODES, PRESETS

    parser = argparse.ArgumentParser(prog=prog, description="MEDIMP pretraining and prognosis evaluation",
                                     allow_abbrev=False)
    # options are spelled out: an abbreviation could silently mean another option
    sub = parser.add_subparsers(dest="command", required=True,
                                parser_class=functools.partial(argparse.ArgumentParser, allow_abbrev=False))
    p = sub.add_parser("train", help="contrastive pretraining on a cohort")
    p.add_argument("--cohort", required=True, help="cohort folder (clinical.csv + patient/exam/sequence tree)")
    p.add_argument("--out", required=True, help="run folder: checkpoints, log.csv, loss curve, model files")
    p.add_argument("--preset", default="cpu-small", choices=sorted(PRESETS))
    p.add_argument("--config", help="JSON file of training options (overrides the preset)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--micro-batch", type=int, help="accumulate gradients over micro-batches of this size")
    p.add_argument("--lr", type=float)
    p.add_argument("--patience", type=int,
                   help="stop after this many epochs without a better validation mean rank (0: never)")
    p.add_argument("--seed", type=int)
    p.add_argument("--embed-dim", type=int)
    p.add_argument("--text-model", help="local HuggingFace encoder folder (default: all-MiniLM-L6-v2)")
    p.add_argument("--text-trainable-layers", type=int)
    p.add_argument("--attributes", help="prompt attributes, comma-separated: gfr,exam,creatinine,donor_age")
    p.add_argument("--device", help="auto (default: cuda, then mps, then cpu), cpu, cuda, cuda:1...; under "
                                    "torchrun each process takes cuda:LOCAL_RANK")
    p.add_argument("--amp", choices=AMP_MODES,
                   help="mixed precision: auto (default) = bf16 on GPUs that support it, else fp16 with loss "
                        "scaling; off on the CPU")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="start again in a run folder that holds an earlier run (its run files are removed)")
    p.add_argument("--override", action="store_true",
                   help="with --resume: continue although options other than the epochs changed")
    p.add_argument("--json-progress", action="store_true", help="progress as JSON lines on stdout")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="prognosis on patients the model never saw (cross-validated heads, 95 %% "
                                        "intervals, paired differences, calibration), then store the heads")
    p.add_argument("--model", required=True)
    p.add_argument("--cohort", required=True)
    p.add_argument("--out", required=True, help="folder for evaluation.md and evaluation.csv")
    p.add_argument("--splits", type=int, default=5)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95 %% intervals")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--allow-overlap", action="store_true",
                   help="evaluate even on patients the model was pretrained or selected on (the table is marked "
                        "as in-sample)")
    p.add_argument("--device", default="auto")
    p.add_argument("--ablation", action="append", metavar="NAME=MODEL",
                   help="also evaluate a model trained with other prompt attributes (repeatable)")
    p.add_argument("--write-heads", action="store_true", help="fit final heads on all patients into the model file")
    p.add_argument("--overwrite", action="store_true", help="replace the evaluation files already in --out")
    p.set_defaults(func=_cmd_evaluate)
    return parser


def main(argv=None, prog: str = "python -m src_train") -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    args = build_parser(prog).parse_args(argv)
    args.argv, args.prog = argv, prog  # recorded in the model card as the training command
    from napari_medimp.core.failures import EXIT_DATA, run_reporting_failures

    return run_reporting_failures(args.func, args, prog, debug, value_error=EXIT_DATA)  # about the cohort
