"""The ``medimp`` command: every action of the plugin, without a window."""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
from pathlib import Path

from .cli_sources import (
    ExamSource,
    cohort_records,
    each_exam,
    exam_label_file,
    exam_labels,
    exam_of,
    exam_sources,
    input_paths,
)
from .core.terms import DEFAULT_EXAM, TOP_TEXT


def _cmd_synth(args) -> int:
    from .core import synth

    def progress(done, total):
        print(f"\r{done}/{total} patients", end="", file=sys.stderr, flush=True)

    from .core.synth.summary import bin_shares, summary_table

    if args.patients < 1:
        raise ValueError(f"--patients must be at least 1, got {args.patients}")
    settings = synth.SynthSettings(hyperfiltration=args.hyperfiltration, world=args.world, images=args.images)
    if args.summary:  # the prompts' bins only: no image is rendered, nothing is written
        print(summary_table(bin_shares(synth.sample_patients(args.patients, args.seed, settings))))
        return 0
    if args.out is None:
        raise ValueError("give --out FOLDER (or --summary to print the bins without writing anything)")
    summary = synth.generate_cohort(Path(args.out), n_patients=args.patients, seed=args.seed,
                                    progress=progress, settings=settings, n_jobs=args.jobs)
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


def _print_series_table(matches) -> None:
    header = ("patient", "study date", "series", "description", "images", "study UID", "series UID")
    rows = [(m.patient_id, m.study_date, str(m.series_number or ""), m.series_description,
             "" if m.n_images is None else str(m.n_images), m.study_uid, m.series_uid) for m in matches]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    studies = {m.study_uid for m in matches}
    print(f"{len(matches)} series in {len(studies)} stud{'y' if len(studies) == 1 else 'ies'}")


def _cmd_pacs(args) -> int:
    from .core import pacs
    from .core.io import load_dce

    server = pacs.server_named(args.server, args.config)
    if args.pacs_command == "find":
        _print_series_table(pacs.find(server, patient_id=args.patient or "", study_date=args.date or "",
                                      modality=args.modality))
        return 0
    matches = pacs.find(server, study_uid=args.study, modality=args.modality)
    if not matches:
        raise pacs.PacsError(f"PACS '{server.name}' has no {args.modality} series in study {args.study}")
    if args.series:
        wanted = set(args.series)
        matches = [m for m in matches if m.series_uid in wanted or str(m.series_number) in wanted]
        missing = wanted - {m.series_uid for m in matches} - {str(m.series_number) for m in matches}
        if missing:
            raise pacs.PacsError(f"study {args.study} has no series {', '.join(sorted(missing))}")

    def progress(done, total):
        print(f"\r{done}/{total if total is not None else '?'} images", end="", file=sys.stderr, flush=True)

    folder = pacs.retrieve(server, matches, progress=progress)
    print(file=sys.stderr)
    volume = load_dce(folder)
    z, y, x = volume.shape[1:]
    print(f"{folder}\n{volume.n_frames} frames of {x}x{y}x{z} voxels "
          f"({' x '.join(f'{s:.3g}' for s in volume.spacing[::-1])} mm), {volume.metadata.get('grouped_by', '')}; "
          f"open it with `medimp analyze {folder} --out DIR` or in napari")
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
def _model_card(args) -> dict | None:
    """The card of the model the command will use (read without loading the weights), or None when it
    cannot be read (loading the model then says why)."""
    from .core.checkpoint import read_card
    from .core.sample import default_model_path

    try:
        return read_card(args.model or default_model_path())
    except (OSError, ValueError):
        return None


def _predictor(args):
    import re

    from .core.inference import Predictor
    from .core.sample import default_model_path

    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", str(args.device)):
        raise ValueError(f"--device {args.device!r}: choose auto, cpu, mps, cuda or cuda:N")
    return Predictor.from_file(args.model or default_model_path(), device=args.device)


def _record(args, exam: str):
    from .core.clinical import ClinicalRecord

    if all(getattr(args, k) is None for k in ("gfr", "donor_age", "creatinine", "creatinine_std")):
        return None
    return ClinicalRecord.from_values(exam=exam, donor_age=args.donor_age, gfr=args.gfr,
                                      creatinine=args.creatinine, creatinine_std=args.creatinine_std,
                                      creatinine_unit=args.creatinine_unit)


def _roi(args):
    return None if args.roi is None else tuple(args.roi)


def _cmd_embed(args) -> int:
    import numpy as np

    from .core.io import load_dce
    from .core.outputs import check_output, spreadsheet_safe

    out = check_output(args.out, args.overwrite, (".npz", ".csv"), inputs=input_paths(args.path))
    predictor = _predictor(args)
    ids, vectors = [], []
    sources = exam_sources(Path(args.path))
    def embed_one(source: ExamSource):
        vectors.append(predictor.embed_image(load_dce(source.path), _roi(args)).vector)
        ids.append(source.label)
        print(f"\r{len(ids)}/{len(sources)} exams", end="", file=sys.stderr, flush=True)

    each_exam(sources, embed_one)
    print(file=sys.stderr)
    from .core.atomic import atomic_write
    from .core.outputs import write_csv

    matrix = np.stack(vectors).astype(np.float32)
    if out.suffix == ".csv":
        columns = ["id", *(f"e{i}" for i in range(matrix.shape[1]))]
        write_csv(out, [{"id": spreadsheet_safe(i), **{f"e{k}": f"{v:.7g}" for k, v in enumerate(vec)}}
                        for i, vec in zip(ids, matrix, strict=True)], columns)
    else:
        def write(tmp: str) -> None:
            with open(tmp, "wb") as fh:  # a file object: numpy adds no second .npz
                np.savez(fh, ids=np.array(ids), embeddings=matrix, weights_sha256=predictor.loaded.weights_sha256)

        atomic_write(out, write)
    print(f"{len(ids)} embeddings ({matrix.shape[1]} dimensions) -> {out}")
    return 0


def _risk_columns(reading) -> dict:
    """CSV columns of a prognosis reading: image-only ``p_dysfunction_<h>`` (MEDIMP), then with the clinical
    values and the clinical-only reference, and what each used."""
    if reading is None:
        return {}
    names = {"image": "p_dysfunction_{}", "image+clinical": "p_dysfunction_with_clinical_{}",
             "clinical": "p_dysfunction_clinical_only_{}"}
    row = {}
    for kind, template in names.items():
        row.update({template.format(h): round(v, 4) for h, v in reading.risks.get(kind, {}).items()})
    row["reading_visit"] = reading.visit
    row["reading_exams"] = "+".join(reading.exams_used)
    row["clinical_values_used"] = "+".join(reading.clinical_given)
    return row


def _cmd_predict(args) -> int:
    from .core.checks import failed_messages
    from .core.clinical import ClinicalRecord, normalize_exam
    from .core.identity import ExamIdentity
    from .core.inference import analyze
    from .core.io import load_dce
    from .core.outputs import check_output
    from .core.prompts import build_prompt
    from .core.terms import EXAMS

    inputs = input_paths(args.path)
    out = check_output(args.out, args.overwrite, (".csv", ".json"), inputs=inputs)
    patients_out = out.with_name(out.stem + "_patients.csv")
    if out.suffix == ".csv":
        check_output(patients_out, args.overwrite, option="--out (its patients' table)", inputs=inputs)
    predictor = _predictor(args)
    as_json = out.suffix == ".json"
    sources = exam_sources(Path(args.path))
    rows, table = [], cohort_records(Path(args.path), sources)
    # readings use the exams so far: each patient's exams in follow-up order
    order = {e: i for i, e in enumerate(EXAMS)}
    sources.sort(key=lambda s: (s.patient if s.in_tree else s.label,
                                order.get((s.exam or args.exam or DEFAULT_EXAM).upper(), 99)))
    by_patient: dict[str, dict] = {}
    last_reading: dict[str, object] = {}
    def predict_one(source: ExamSource):
        volume = load_dce(source.path)
        exam, patient = source.exam, source.patient
        if not source.in_tree:  # a file or series on its own: its exam and patient as its data state them
            who = ExamIdentity.from_volume(volume)
            (exam, _source), patient = exam_of(args.exam, who, source.path), who.patient
        exam = normalize_exam(exam)
        patient = patient or source.label
        record = _record(args, exam)
        if record is None and patient in table:
            record = ClinicalRecord.from_csv_row(table[patient], exam)
        prompt = build_prompt(record) if record is not None else None
        result = analyze(predictor, volume, exam=exam, prompt=prompt, roi=_roi(args), record=record,
                         earlier=by_patient.get(patient), show_anyway=args.show_anyway)
        by_patient.setdefault(patient, {})[exam] = result.embedding
        # the panel's rule: an exam that failed its checks has its readings withheld (unless --show-anyway)
        withheld = result.readings_withheld
        row = {"id": source.label, "exam": exam, "prompt": prompt or "", "similarity": result.shown_similarity,
               "outside_training": result.outside_training, "failed_checks": "; ".join(failed_messages(result.checks)),
               "readings_withheld": withheld is not None, "shown_anyway": result.shown_by_choice}
        row.update({f"gfr_{k.replace(' ', '_')}": round(v, 4) for k, v in result.shown_gfr_reading.items()})
        row.update(_risk_columns(result.shown_reading))
        if as_json:
            row["checks"] = [c.to_dict() for c in result.checks]
        rows.append(row)
        if result.reading is not None:
            # a patient's reading is their latest exam's: withheld when that exam failed its checks
            last_reading[patient] = (result.shown_reading, withheld)

    skipped = each_exam(sources, predict_one)
    patients = [{"patient": p, "readings_withheld": why or "", **_risk_columns(r)}
                for p, (r, why) in last_reading.items()]
    from .core.atomic import atomic_write_bytes
    from .core.outputs import write_csv

    if out.suffix == ".json":
        atomic_write_bytes(out, (json.dumps({"exams": rows, "patients": patients, "skipped": skipped,
                                             "model": predictor.model_facts()}, indent=1) + "\n").encode())
    else:
        write_csv(out, rows)
        if patients:
            write_csv(patients_out, patients)
    print(f"{len(rows)} exams, {len(patients)} patients -> {out}")
    return 0


def _cmd_saliency(args) -> int:
    from .core.card import default_method
    from .core.io import load_dce, save_nifti
    from .core.outputs import check_output
    from .core.pipeline import faithfulness_line, saliency_file_name, saliency_section
    from .core.prompts import build_prompt
    from .core.saliency import card_faithfulness, compute_saliency

    methods = list(dict.fromkeys(args.method or [default_method(_model_card(args))]))
    targets = list(dict.fromkeys(args.target))
    sources = exam_sources(Path(args.path))
    out = Path(args.out)
    single = len(sources) == 1 and len(methods) == 1 and len(targets) == 1 and out.name.endswith((".nii", ".nii.gz"))
    if out.name.endswith((".nii", ".nii.gz")) and not single:
        raise ValueError(f"--out {out} is one file but {len(sources)} exams x {len(methods)} methods x "
                         f"{len(targets)} targets make several maps; give a folder")

    def file_for(source: ExamSource, method, target):
        if single:
            return out
        return out / saliency_file_name(method, target, (source.exam or args.exam or DEFAULT_EXAM),
                                        prefix=source.patient if source.in_tree else None)

    planned = {(source, m, t): file_for(source, m, t) for source in sources for m in methods for t in targets}
    inputs = input_paths(args.path)
    for target in planned.values():
        check_output(target, args.overwrite, inputs=inputs)
        check_output(target.with_name(target.name.split(".nii")[0] + ".json"), args.overwrite,
                     option="--out (its sidecar)", inputs=inputs)
    predictor = _predictor(args)
    if args.method:
        print(f"saliency method: {', '.join(methods)}")
    else:
        print(f"saliency method: {methods[0]} (the default: the method that measured most faithful on unseen "
              "labelled synthetic exams; see saliency_faithfulness in the demo model's card)")
    for method in methods:
        print(faithfulness_line(method, card_faithfulness(predictor.card, method)))

    table = cohort_records(Path(args.path), sources) if args.prompt is None else {}

    def explain_one(source: ExamSource):
        from .core.clinical import ClinicalRecord

        exam = (source.exam or args.exam or DEFAULT_EXAM).upper()
        record = _record(args, exam)
        if record is None and source.in_tree and source.patient in table:  # the cohort's values, exam by exam
            record = ClinicalRecord.from_csv_row(table[source.patient], exam)
        prompt = args.prompt or (build_prompt(record) if record is not None else None)
        volume = load_dce(source.path)
        labels, names = exam_labels(source.path, volume)
        for method in methods:
            for target in targets:
                result = compute_saliency(predictor, volume, _roi(args), method=method, target=target,
                                          prompt=prompt, exam=exam)
                section = saliency_section(result, labels, names, prompt=prompt if target == "similarity" else None)
                destination = planned[(source, method, target)]
                save_nifti(destination, result.data, result.roi_affine,
                           sidecar={"method": method, "target": target, "exam": exam, "prompt": prompt,
                                    "score": result.score, "score_meaning": section["score_meaning"],
                                    "roi_zyx": result.roi.to_list(), "regions": section["regions"],
                                    "regions_note": section["regions_note"],
                                    "method_faithfulness": section["method_faithfulness"],
                                    "model_sha256": predictor.loaded.weights_sha256})
                shares = _shares_text(section)
                print(f"{source.label}: {method} for {target} (score {result.score:.3f}){shares} -> {destination}")

    each_exam(sources, explain_one)
    return 0


def _shares_text(section: dict) -> str:
    """'; top 10 % on graft and artery 64 % (box 15 %)' when the map's region shares are known."""
    group = (section.get("groups") or {}).get("graft and artery")
    if not group:
        return ""
    return f"; {TOP_TEXT} on graft and artery {100 * group['top']:.0f} % (box {100 * group['box']:.0f} %)"


# --------------------------------------------------------------------------------------------------
# medimp analyze: one exam, everything at once, with a report
# --------------------------------------------------------------------------------------------------
SAMPLE_ARGUMENT = "sample"


def _refuse_typed_non_numbers(args) -> None:
    """A typed 'nan' / 'inf' is a mistake on the command line (a CSV cell 'nan' means missing)."""
    from .core.clinical import ClinicalValueError

    for name in ("gfr", "donor_age", "creatinine_std"):
        value = getattr(args, name)
        if value is not None and value.strip().lower().lstrip("+-") in ("nan", "inf", "infinity"):
            raise ClinicalValueError(name, value, f"--{name.replace('_', '-')} {value!r} is not a number")


def _load_exam(path: Path):
    """(volume, exam folder's label file or None): one exam, refusing 3D images and images without signal."""
    import warnings

    import numpy as np

    from .core.io import load_dce
    from .core.volume import DCEReadError, DCEReadWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DCEReadWarning)
        volume = load_dce(path)
    notes = [str(w.message) for w in caught if issubclass(w.category, DCEReadWarning)]
    if volume.n_frames < 2:
        raise DCEReadError(path, "a 3D image (one frame); a DCE exam needs several time frames (4D)")
    if not volume.is_lazy and float(np.ptp(volume.data)) == 0.0:
        nan = any("NaN" in n for n in notes)
        raise DCEReadError(path, "every voxel is NaN/Inf: nothing to analyse" if nan else
                           "the image is constant (no signal): nothing to analyse")
    for note in notes:
        print(f"medimp: warning: {note}", file=sys.stderr)
    return volume, exam_label_file(path)


def _cmd_analyze(args) -> int:
    import numpy as np

    from .core.card import default_method
    from .core.clinical import ClinicalRecord, normalize_exam
    from .core.identity import ExamIdentity, table_source
    from .core.io.cohort import cohort_clinical_row
    from .core.io.nifti import label_names, load_labels
    from .core.outputs import check_output_folder, replacing_output_folder
    from .core.pipeline import ANALYSIS_FILES, AnalysisRequest, run_analysis
    from .core.prompts import build_prompt
    from .core.report import clinical_inputs, report_summary
    from .core.terms import KIDNEY_REGION_NAMES

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is a file; give a folder for the report")
    from .cli_patient import analyze_patient_command, is_patient_folder

    if args.path != SAMPLE_ARGUMENT and is_patient_folder(args.path):
        return analyze_patient_command(args, _predictor)
    if not args.overwrite:
        check_output_folder(out, ANALYSIS_FILES, overwrite=False)  # before any work
    _refuse_typed_non_numbers(args)
    exam = normalize_exam(args.exam or DEFAULT_EXAM)
    exam_source = "typed (--exam)" if args.exam else f"default ({DEFAULT_EXAM})"
    names = None
    row, table, line = None, None, None
    if args.path == SAMPLE_ARGUMENT:
        from .core.sample import SAMPLE_SEED, sample_exam

        volume, labels = sample_exam(exam=exam)
        source = f"bundled synthetic sample (seed {SAMPLE_SEED}, exam {exam}; not patient data)"
        names = KIDNEY_REGION_NAMES
        label_file = None
    else:
        sources = exam_sources(Path(args.path))
        if len(sources) != 1:
            raise ValueError(f"{args.path} holds {len(sources)} exams; `medimp analyze` takes one exam "
                             "(a file, a series or an exam folder) or one patient folder; use `medimp predict` "
                             "for a cohort")
        path = sources[0].path
        volume, label_file = _load_exam(path)
        source = str(path)
        labels = None
        who = ExamIdentity.from_volume(volume)  # a file reads its sidecar as an exam folder does
        exam, exam_source = exam_of(args.exam, who, path)
        if who.patient:
            row, table, line = cohort_clinical_row(Path(path), who.patient)
    if args.labels or label_file:
        label_file = Path(args.labels) if args.labels else label_file
        labels, label_affine = load_labels(label_file)
        names = label_names(label_file)
        if labels.shape == volume.shape[1:] and not np.allclose(label_affine, volume.affine, atol=1e-3):
            print(f"medimp: warning: {label_file} has the exam's grid but not its position/orientation "
                  "(affine); region curves assume they are aligned", file=sys.stderr)
    labels_origin = None
    if labels is not None:
        labels_origin = {"file": str(label_file) if label_file else "bundled synthetic sample",
                         "identity": (ExamIdentity.from_volume(volume) if args.labels is None or
                                      args.path == SAMPLE_ARGUMENT else ExamIdentity()).to_dict()}

    record = _record(args, exam)
    from_table = table_source(table, line)
    differs: dict = {}
    if record is None and row is not None:
        record = ClinicalRecord.from_csv_row(row, exam)
        entered = clinical_inputs(gfr=record.gfr, donor_age=record.donor_age,
                                  creatinine=list(record.creatinine) or None, creatinine_std=record.creatinine_std,
                                  record=record, source=from_table, table=table)
    else:
        if record is not None and row is not None:  # typed against the cohort's table: said, and recorded
            listed = ClinicalRecord.from_csv_row(row, exam)
            for name, typed, known in (("gfr", record.gfr, listed.gfr), ("donor_age", record.donor_age,
                                                                          listed.donor_age)):
                if typed is not None and known is not None and abs(typed - known) > 1e-9:
                    differs[name] = {"source": from_table, "value": f"{known:g}"}
                    print(f"medimp: warning: --{name.replace('_', '-')} {typed:g} typed, {from_table} says "
                          f"{known:g} at {exam}; the typed value is used", file=sys.stderr)
        entered = clinical_inputs(gfr=args.gfr, donor_age=args.donor_age, creatinine=args.creatinine,
                                  creatinine_std=args.creatinine_std, creatinine_unit=args.creatinine_unit,
                                  record=record, source="typed" if record is not None else None,
                                  table=table if differs else None, differs=differs or None)
    prompt = args.prompt or (build_prompt(record) if record is not None else None)
    request = AnalysisRequest(
        volume=volume, exam=exam, record=record, prompt=prompt, roi=_roi(args),
        roi_source="given" if args.roi else "automatic (enhancing kidney)", labels=labels, region_names=names,
        clinical=entered, source=source, exam_source=exam_source, labels_origin=labels_origin,
        saliency_method=None if args.saliency == "none" else (args.saliency or default_method(_model_card(args))),
        saliency_target=args.target, show_anyway=args.show_anyway)
    request.check()  # options and labels, before the model loads

    result = run_analysis(_predictor(args), request)
    for note in result.notes:
        print(f"medimp: {note}", file=sys.stderr)
    with replacing_output_folder(out, ANALYSIS_FILES, overwrite=args.overwrite):  # earlier analysis kept until done
        files = result.write(out)
    print(report_summary(result.written_report, files))
    for section in result.written_report.get("saliency_maps") or []:
        _print_saliency_regions(section)
    return 0


def _print_saliency_regions(section: dict) -> None:
    from .core.pipeline import faithfulness_line

    regions = section.get("regions")
    if not regions:
        print(f"saliency {section['method']} for {section['target']}: {section.get('regions_note')}")
    else:
        print(f"saliency {section['method']} for {section['target']}, share of its {TOP_TEXT} voxels (of the box): "
              + ", ".join(f"{name} {100 * r['top']:.0f} % ({100 * r['box']:.0f} %)" for name, r in regions.items()))
    print(faithfulness_line(section["method"], section.get("method_faithfulness")))


def _series_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--series", metavar="UID_OR_NUMBER",
                   help="in a DICOM folder holding several series: the one to open (SeriesInstanceUID or SeriesNumber)")


def _model_options(p: argparse.ArgumentParser, clinical: bool = True, path_help: str | None = None) -> None:
    p.add_argument("path", help=path_help or "a DCE file or series, an exam folder, or a cohort/patient folder")
    _series_option(p)
    p.add_argument("--model", help="model file (.safetensors with its .json card); default: the demo model")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cuda, mps or cpu")
    p.add_argument("--roi", type=int, nargs=6, metavar=("Z0", "Z1", "Y0", "Y1", "X0", "X1"),
                   help="kidney box in voxel indices (half-open); default: found from the enhancement")
    if clinical:
        p.add_argument("--exam", help="exam of a single file: D15, D30, M3 or M12 (default: the exam its sidecar "
                                      f"states, else {DEFAULT_EXAM})")
        p.add_argument("--gfr", help="GFR at this exam, mL/min/1.73 m2")
        p.add_argument("--donor-age", help="donor age, years")
        p.add_argument("--creatinine", help="serum creatinine values up to this exam, e.g. '120;135;150'")
        p.add_argument("--creatinine-std", help="creatinine variability (std) instead of the values")
        p.add_argument("--creatinine-unit", default="umol/L", help="umol/L or mg/dL")


TRAINING_COMMANDS = ("train", "evaluate")


def build_parser() -> argparse.ArgumentParser:
    from .core.terms import SALIENCY_METHODS

    parser = argparse.ArgumentParser(prog="medimp", description=__doc__, allow_abbrev=False,
                                     epilog="medimp train / medimp evaluate: see `medimp train --help` "
                                            "(same as python -m src_train). A failure prints one line and "
                                            "exits with 1 (data or files) or 2 (command line); --debug "
                                            "anywhere on the line shows the traceback instead.")
    # options are spelled out: an abbreviation (--gf 40) could silently mean another option
    sub = parser.add_subparsers(dest="command", required=True,
                                parser_class=functools.partial(argparse.ArgumentParser, allow_abbrev=False))

    p = sub.add_parser("synth", help="generate a synthetic renal-graft DCE-MRI cohort")
    p.add_argument("--patients", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output folder (clinical.csv, images, ground truth)")
    p.add_argument("--hyperfiltration", type=float, default=0.4,
                   help="share of the filtration lost to graft damage that the remaining nephrons make up at "
                        "the first-year exams, hiding it from GFR and creatinine (0 = none; default 0.4)")
    p.add_argument("--world", choices=["transplant", "v1"], default="transplant",
                   help="transplant: one graft calibrated to transplant cohorts (default); v1: generator 1.x's "
                        "world (a healthy pair of kidneys' flow in one graft, most GFR 'high')")
    p.add_argument("--images", choices=["own", "other"], default="own",
                   help="own: each exam shows the patient's graft (default); other: the null setting, each "
                        "patient's images show another patient's graft, so images carry nothing of the prompts")
    p.add_argument("--summary", action="store_true",
                   help="print the share of every prompt bin per visit (no image is rendered, nothing written)")
    p.add_argument("--jobs", type=int, default=1, help="patients rendered in parallel (processes)")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("info", help="describe a DCE-MRI file or folder as it will be opened")
    p.add_argument("path")
    _series_option(p)
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("embed", help="image embeddings of one exam or every exam of a cohort")
    _model_options(p, clinical=False)
    p.add_argument("--out", required=True, help="embeddings file: .npz (ids + matrix) or .csv")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=_cmd_embed)

    p = sub.add_parser("predict", help="prompt similarity, zero-shot GFR bins and prognosis")
    _model_options(p)
    p.add_argument("--out", required=True, help="predictions: .csv (plus _patients.csv) or .json")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--show-anyway", action="store_true",
                   help="give the readings of exams that failed their checks (withheld by default); each row "
                        "records the choice")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("saliency", help="saliency maps (integrated gradients, Grad-CAM, occlusion) as NIfTI in "
                                        "the exam's geometry")
    _model_options(p)
    p.add_argument("--method", nargs="+", choices=SALIENCY_METHODS,
                   help="one or more methods (default: the one the model's card measured most faithful on "
                        f"unseen labelled synthetic exams, else {SALIENCY_METHODS[0]})")
    p.add_argument("--target", nargs="+", default=["similarity"],
                   help="one or more of: similarity (with the prompt), 2y, 3y, 4y")
    p.add_argument("--prompt", help="prompt text for the similarity target (default: built from the values)")
    p.add_argument("--out", required=True,
                   help="a .nii.gz for one map, or a folder (saliency-METHOD-TARGET-EXAM.nii.gz per map, the "
                        "patient in front for a cohort)")
    p.add_argument("--overwrite", action="store_true", help="replace existing maps")
    p.set_defaults(func=_cmd_saliency)

    p = sub.add_parser("analyze", help="one exam, everything at once: prognosis, zero-shot GFR bins, "
                                       "saliency, time-intensity curves, a report and a figure",
                       description="Analyse one DCE-MRI exam and write DIR/medimp_report.json/.csv, "
                                   "DIR/results.png and DIR/saliency-METHOD-TARGET-EXAM.nii.gz. Research "
                                   "software, not for clinical use.")
    _model_options(p, path_help="a DCE file or series or an exam folder; a patient folder for every exam of "
                                "the patient visit by visit; `sample` for the bundled synthetic sample exam "
                                "(with its tissue labels)")
    p.add_argument("--prompt", help="prompt text (default: built from the clinical values)")
    p.add_argument("--labels", help="label map (NIfTI) on the exam's grid: one curve per region "
                                    "(default: the exam folder's segmentation, if any)")
    p.add_argument("--saliency", choices=[*SALIENCY_METHODS, "none"],
                   help="saliency method (default: the one the model's card measured most faithful on unseen "
                        f"labelled synthetic exams, else {SALIENCY_METHODS[0]}), or none")
    p.add_argument("--target", help="saliency target: similarity, 2y, 3y or 4y (default: similarity when "
                                    "there is a prompt, else the first prognosis horizon)")
    p.add_argument("--show-anyway", action="store_true",
                   help="show the readings of an exam that failed its checks (outside what the model was trained "
                        "on; withheld by default); the report records the choice")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier analysis in that folder (its files are removed first)")
    p.set_defaults(func=_cmd_analyze)

    p = sub.add_parser("pacs", help="query and retrieve DCE-MRI from a PACS (servers in the PACS settings file)")
    pacs_sub = p.add_subparsers(dest="pacs_command", required=True,
                                parser_class=functools.partial(argparse.ArgumentParser, allow_abbrev=False))
    for name, text in (("find", "list the series of a patient or a study date (C-FIND)"),
                       ("get", "retrieve series of one study into the local cache (C-GET, or C-MOVE when the "
                               "server's retrieval setting is \"move\") and check they open")):
        q = pacs_sub.add_parser(name, help=text)
        q.add_argument("--server", help="entry of the settings file (default: its 'default')")
        q.add_argument("--config", help="PACS settings file (default: $NAPARI_MEDIMP_PACS_CONFIG or the user "
                                        "settings folder's napari-medimp/pacs.toml)")
        q.add_argument("--modality", default="MR", help="modality code (default MR)")
        if name == "find":
            q.add_argument("--patient", help="patient ID (wildcards * and ? allowed)")
            q.add_argument("--date", help="study date YYYYMMDD or range YYYYMMDD-YYYYMMDD")
        else:
            q.add_argument("--study", required=True, help="StudyInstanceUID (from `medimp pacs find`)")
            q.add_argument("--series", nargs="+", help="series UIDs or numbers to retrieve (default: all)")
        q.set_defaults(func=_cmd_pacs)

    p = sub.add_parser("demo", help="open napari with the synthetic sample graft")
    p.add_argument("--headless", action="store_true",
                   help="render off-screen (xvfb), write a screenshot and a report, and exit")
    p.add_argument("--out", default="medimp-demo", help="folder for the screenshot and report")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if argv and argv[0] in TRAINING_COMMANDS:
        from src_train.cli import main as train_main

        return train_main(argv + (["--debug"] if debug else []), prog="medimp")
    args = build_parser().parse_args(argv)
    from .core.failures import run_reporting_failures

    if getattr(args, "series", None) is not None:
        from .core.io import chosen_series

        with chosen_series(args.series):
            return run_reporting_failures(args.func, args, "medimp", debug)
    return run_reporting_failures(args.func, args, "medimp", debug)


if __name__ == "__main__":
    sys.exit(main())
