"""The training dialog's logic without Qt: form validation, command line, progress events, tables."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_medimp._widgets import run_options as ro
from napari_medimp._widgets import run_progress as rp
from napari_medimp.core import evaluation_table as et
from napari_medimp.core import training_run
from napari_medimp.core.training_run import PRESETS, STATE_KEY

CLINICAL = "patient_id,donor_age,gfr_D15,outcome_2y\nP0001,44,70.2,0\nP0002,64,47.5,1\n"


@pytest.fixture
def cohort(tmp_path) -> Path:
    """A cohort skeleton: clinical.csv and patient folders (enough for the form's checks)."""
    folder = tmp_path / "cohort"
    for patient in ("P0001", "P0002"):
        (folder / patient / "D15" / "dce").mkdir(parents=True)
    (folder / "clinical.csv").write_text(CLINICAL)
    return folder


def _options(cohort_path, tmp_path, **kw) -> ro.TrainingOptions:
    values = dict(cohort=str(cohort_path), out=str(tmp_path / "run"), epochs=2, batch_size=4)
    values.update(kw)
    return ro.TrainingOptions(**values)


def _fake_checkpoint(run: Path, state: dict, in_metadata: bool = True, json_copy: bool = True) -> None:
    from safetensors.numpy import save_file

    run.mkdir(parents=True, exist_ok=True)
    metadata = {STATE_KEY: json.dumps(state)} if in_metadata else None
    save_file({"model.w": np.zeros(2, np.float32)}, str(run / training_run.CHECKPOINT_FILE), metadata=metadata)
    if json_copy:
        (run / "last.json").write_text(json.dumps(state))
    (run / "train_config.json").write_text(json.dumps(state["config"]))


STATE = {"next_epoch": 1, "next_batch": 2, "step": 6, "best_val_loss": 0.7,
         "config": {"epochs": 30, "batch_size": 2, "attributes": ["gfr", "exam"], "cohort": "/c", "out": "/r"}}


# --------------------------------------------------------------------------------------------------
# cohort, config, presets
# --------------------------------------------------------------------------------------------------
def test_cohort_folder_or_its_clinical_csv(cohort):
    assert ro.resolve_cohort(cohort) == cohort
    assert ro.resolve_cohort(cohort / "clinical.csv") == cohort


@pytest.mark.parametrize("case, expected", [
    ("", "choose a cohort folder or its clinical.csv"),
    ("missing", "does not exist"),
    ("other.csv", "must be the cohort's clinical.csv"),
    ("notes.txt", "neither a cohort folder nor its clinical.csv"),
    ("no_table", "no clinical.csv"),
    ("no_id", "no patient_id column"),
    ("no_folders", "none of the 2 patients"),
])
def test_cohort_problems_say_what_is_expected(cohort, tmp_path, case, expected):
    path: str | Path = ""
    if case == "missing":
        path = tmp_path / "nowhere"
    elif case in ("other.csv", "notes.txt"):
        path = cohort / case
        path.write_text(CLINICAL)
    elif case == "no_table":
        (cohort / "clinical.csv").unlink()
        path = cohort
    elif case == "no_id":
        (cohort / "clinical.csv").write_text("id,donor_age\nP0001,40\n")
        path = cohort
    elif case == "no_folders":
        path = tmp_path / "table_only"
        path.mkdir()
        (path / "clinical.csv").write_text(CLINICAL)
    with pytest.raises(ValueError, match=expected) as info:
        ro.resolve_cohort(path)
    if case in ("", "other.csv", "notes.txt", "no_table", "no_folders"):
        assert ro.COHORT_HINT in str(info.value)  # says what a cohort is


def test_presets_follow_the_training_program():
    assert set(ro.PRESET_LABELS) == set(PRESETS)
    assert ro.preset_defaults("cpu-small") == {"epochs": PRESETS["cpu-small"]["epochs"],
                                               "batch_size": PRESETS["cpu-small"]["batch_size"],
                                               "device": "auto", "amp": "auto"}
    with pytest.raises(ValueError, match="unknown preset"):
        ro.preset_defaults("huge")
    assert ro.preset_warning("paper", ["cpu"]) and "CUDA" in ro.preset_warning("paper", ["mps", "cpu"])
    assert ro.preset_warning("paper", ["cuda", "cpu"]) is None
    assert ro.preset_warning("cpu-small", ["cpu"]) is None


def test_config_file_is_checked_and_its_values_become_the_defaults(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"epochs": 3, "embed_dim": 16, "amp": "bf16"}))
    assert ro.read_config(good) == {"epochs": 3, "embed_dim": 16, "amp": "bf16"}
    small = PRESETS["cpu-small"]
    assert ro.effective_defaults("cpu-small", good) == {"epochs": 3, "batch_size": small["batch_size"],
                                                        "device": "auto", "amp": "bf16"}
    (tmp_path / "bad.json").write_text("{epochs: 3")
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "typo.json").write_text(json.dumps({"epoch": 3}))
    for name, message in (("missing.json", "does not exist"), ("bad.json", "not valid JSON"),
                          ("list.json", "JSON object"), ("typo.json", "unknown training option")):
        with pytest.raises(ValueError, match=message):
            ro.read_config(tmp_path / name)
    assert ro.effective_defaults("cpu-small", tmp_path / "bad.json") == {
        "epochs": small["epochs"], "batch_size": small["batch_size"], "device": "auto", "amp": "auto"}


# --------------------------------------------------------------------------------------------------
# the form
# --------------------------------------------------------------------------------------------------
def test_valid_options_give_a_command_the_training_program_accepts(cohort, tmp_path):
    from src_train.cli import build_parser, train_config_from_args

    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"embed_dim": 16}))
    options = _options(cohort / "clinical.csv", tmp_path, attributes=("donor_age", "gfr"), config=str(config))
    assert options.problems() == {}
    command = options.command(python="PY")
    assert command[:4] == ["PY", "-m", "src_train", "train"] and command[-1] == "--json-progress"
    assert "--resume" not in command
    args = build_parser().parse_args(command[3:])
    train_config = train_config_from_args(args)
    assert Path(train_config.cohort) == cohort.absolute()
    assert Path(train_config.out).is_absolute()
    assert (train_config.epochs, train_config.batch_size, train_config.embed_dim) == (2, 4, 16)
    assert train_config.attributes == ("gfr", "donor_age")  # always in the prompt's order
    assert (train_config.device, train_config.amp) == ("auto", "auto")


def test_device_and_precision_reach_the_training_program(cohort, tmp_path):
    from src_train.cli import build_parser, train_config_from_args

    gpu = ("cuda", "cpu")
    options = _options(cohort, tmp_path, device="cuda", amp="fp16", devices=gpu)
    assert options.problems() == {}
    config = train_config_from_args(build_parser().parse_args(options.command()[3:]))
    assert (config.device, config.amp) == ("cuda", "fp16")
    assert _options(cohort, tmp_path, device="cpu", amp="bf16").problems() == {}  # bf16 runs on the CPU
    # the choices are those the trainer accepts, checked as it would
    assert training_run.AMP_MODES == ("auto", "bf16", "fp16", "off") and set(ro.PRECISION_LABELS) == set(training_run.AMP_MODES)
    assert "needs a CUDA GPU" in _options(cohort, tmp_path, amp="fp16").problems()["amp"]  # auto is the CPU here
    assert "needs a CUDA GPU" in _options(cohort, tmp_path, device="cpu", amp="fp16", devices=gpu).problems()["amp"]
    assert "not on an Apple GPU" in ro.precision_problem("bf16", "auto", ("mps", "cpu"))
    assert ro.precision_problem("fp16", "auto", gpu) is None and ro.precision_problem("off", "mps", ("cpu",)) is None
    assert "no CUDA GPU on this machine" in _options(cohort, tmp_path, device="cuda").problems()["device"]
    assert ro.device_choices(("cpu",)) == ["auto", "cpu"]
    assert ro.device_choices(("cuda", "mps", "cpu")) == ["auto", "cuda", "mps", "cpu"]
    # the evaluation embeds the exams on the same device
    command = ro.evaluation_command("m", "c", tmp_path, device="cuda")
    assert command[command.index("--device") + 1] == "cuda"


@pytest.mark.parametrize("changes, field, message", [
    ({"epochs": 0}, "epochs", "at least 1 epoch"),
    ({"batch_size": 1}, "batch_size", "at least 2"),
    ({"attributes": ()}, "attributes", "at least one"),
    ({"attributes": ("gfr", "height")}, "attributes", "height"),
    ({"preset": "huge"}, "preset", "unknown preset"),
    ({"config": "/no/such/options.json"}, "config", "does not exist"),
    ({"out": ""}, "out", "choose an output folder"),
    ({"cohort": ""}, "cohort", "choose a cohort"),
])
def test_each_bad_field_is_named(cohort, tmp_path, changes, field, message):
    options = _options(cohort, tmp_path, **changes)
    problems = options.problems()
    assert list(problems) == [field] and message in problems[field]
    with pytest.raises(ro.OptionsError) as info:
        options.command()
    assert info.value.problems == problems


def test_a_previous_run_is_never_overwritten(cohort, tmp_path):
    run = tmp_path / "run"
    _fake_checkpoint(run, STATE)
    problems = _options(cohort, tmp_path).problems()
    assert "tick Resume" in problems["out"] and "step 6, in epoch 2/30" in problems["out"]
    (run / training_run.CHECKPOINT_FILE).unlink()
    (run / "last.json").unlink()
    (run / "log.csv").write_text("epoch\n")
    assert "files of a previous run" in _options(cohort, tmp_path).problems()["out"]
    assert "nothing to resume" in _options(cohort, tmp_path, resume=True).problems()["out"]
    (tmp_path / "afile").write_text("x")
    assert "is a file" in _options(cohort, tmp_path, out=str(tmp_path / "afile")).problems()["out"]
    assert "outside the cohort" in _options(cohort, tmp_path, out=str(cohort / "runs")).problems()["out"]
    # an unrelated, existing folder is fine
    assert _options(cohort, tmp_path, out=str(tmp_path / "cohort" / ".." / "fresh")).problems() == {}


def test_resume_uses_the_runs_own_settings(cohort, tmp_path):
    from src_train.cli import build_parser

    run = tmp_path / "run"
    _fake_checkpoint(run, STATE)
    options = _options(cohort, tmp_path, resume=True, epochs=40, batch_size=16, config="/ignored.json",
                       amp="fp16", device="cpu")
    assert options.problems() == {}  # the precision is the run's own: the form's is not checked
    args = build_parser().parse_args(options.command()[3:])
    assert args.resume and args.config == str(run.absolute() / "train_config.json")
    assert args.epochs == 40 and args.batch_size is None and args.attributes is None
    assert args.amp is None and args.device == "cpu"  # a resumed run may move to another device


def test_run_folder_state_from_the_checkpoint(tmp_path):
    assert not ro.inspect_run_folder(tmp_path / "none").exists
    run = tmp_path / "a"
    _fake_checkpoint(run, STATE, json_copy=False)  # state inside the safetensors metadata
    info = ro.inspect_run_folder(run)
    assert info.checkpoint and (info.next_epoch, info.next_batch, info.step, info.epochs) == (1, 2, 6, 30)
    assert info.config["attributes"] == ["gfr", "exam"] and not info.finished
    old = tmp_path / "b"
    _fake_checkpoint(old, {**STATE, "next_epoch": 30, "next_batch": 0}, in_metadata=False)  # last.json only
    info = ro.inspect_run_folder(old)
    assert info.checkpoint and info.finished and info.describe() == "step 6, 30/30 epochs done"
    broken = tmp_path / "c"
    broken.mkdir()
    (broken / training_run.CHECKPOINT_FILE).write_bytes(b"not a checkpoint")
    info = ro.inspect_run_folder(broken)
    assert not info.checkpoint and info.previous_files == [training_run.CHECKPOINT_FILE]


def test_evaluation_command_and_child_environment(tmp_path):
    command = ro.evaluation_command("m.safetensors", "cohort", tmp_path, splits=2, repeats=1, python="PY")
    assert command[:4] == ["PY", "-m", "src_train", "evaluate"] and command[-1] == "--write-heads"
    assert command[command.index("--splits") + 1] == "2" and command[command.index("--device") + 1] == "auto"
    with pytest.raises(ValueError):
        ro.evaluation_command("m", "c", tmp_path, splits=1)
    assert ro.evaluation_command("m", "c", tmp_path, allow_overlap=True)[-1] == "--allow-overlap"
    # no evaluation cohort chosen (or the training one again): in-sample, and said so
    train = tmp_path / "train"
    assert ro.evaluation_cohort("", train) == (train, True)
    assert ro.evaluation_cohort(str(train / "clinical.csv"), train / "clinical.csv") == (train, True)
    assert ro.evaluation_cohort(str(tmp_path / "other"), train) == (tmp_path / "other", False)
    env = ro.child_environment({"PYTHONPATH": "/elsewhere"})
    root = str(ro.source_root())
    assert env["PYTHONPATH"].split(os.pathsep) == [root, "/elsewhere"]
    assert (Path(root) / "src_train" / "__main__.py").exists()
    assert env["PYTHONUNBUFFERED"] == "1" and env["MPLBACKEND"] == "Agg"
    assert ro.child_environment({"PYTHONPATH": root})["PYTHONPATH"] == root


# --------------------------------------------------------------------------------------------------
# progress events
# --------------------------------------------------------------------------------------------------
EVENTS = [
    {"event": "start", "train_exams": 8, "val_exams": 4, "skipped": [], "steps_per_epoch": 4, "epochs": 2,
     "device": "cpu"},
    {"event": "step", "epoch": 0, "step": 1, "loss": 1.5, "lr": 3e-4, "total_steps": 8},
    {"event": "step", "epoch": 0, "step": 2, "loss": float("nan"), "lr": 3e-4, "total_steps": 8},
    {"event": "epoch", "epoch": 0, "step": 4, "train_loss": 1.0, "val_loss": 0.74, "recall_at_1": 0.25,
     "recall_at_5": 1.0, "mean_rank": 2.5, "n_val": 4, "seconds": 0.9, "best_val_loss": 0.74},
    {"event": "stopped", "epoch": 1, "step": 5, "checkpoint": "/run/last.safetensors"},
    {"event": "done", "epoch": 1, "step": 8, "train_loss": 1.4, "model": "/run/best.safetensors"},
    {"event": "resumed", "epoch": 1, "batch": 1, "step": 5},
]


def test_events_as_the_training_prints_them_are_parsed():
    for event in EVENTS:
        line = json.dumps(event, default=float)  # as src_train.cli prints them
        parsed = rp.parse_event(line + "\n")
        assert parsed is not None and parsed["event"] == event["event"]
        assert rp.parse_event(line.encode()) is not None
    assert math.isnan(rp.parse_event(json.dumps(EVENTS[2]))["loss"])


@pytest.mark.parametrize("line", [
    "", "Loading weights: 100%", "{not json", "[1, 2]", '"text"', '{"no": "event"}',
    '{"event": "party"}',
    '{"event": "step", "epoch": 0, "step": 1, "loss": 1.0}',  # no total_steps
    '{"event": "step", "epoch": 0, "step": true, "loss": 1.0, "total_steps": 8}',  # bool is no int
    '{"event": "step", "epoch": 0, "step": 1, "loss": "1.0", "total_steps": 8}',
    '{"event": "epoch", "epoch": 0, "step": 4, "train_loss": 1.0, "val_loss": "low"}',
    '{"event": "done", "model": ""}',
    '{"event": "stopped", "epoch": 0, "step": 1}',
])
def test_anything_else_is_a_log_line(line):
    assert rp.parse_event(line) is None


def test_lines_are_whole_whatever_the_chunks():
    splitter = rp.LineSplitter()
    text = '{"event": "done", "model": "/r/é.safetensors"}\nhalf'.encode()
    cut = text.index("é".encode()) + 1  # inside the two bytes of é
    assert splitter.feed(text[:cut]) == []
    assert splitter.feed(text[cut:]) == ['{"event": "done", "model": "/r/é.safetensors"}']
    assert splitter.feed(b" a line\r\n") == ["half a line"]
    assert splitter.feed(b"embedding 1/4\rembedding 4/4\r\n") == ["embedding 4/4"]
    assert splitter.feed(b"no newline at the end") == []
    assert splitter.finish() == ["no newline at the end"] and splitter.finish() == []
    assert rp.LineSplitter().feed(b"\xff\n") == ["\ufffd"]


def test_library_warnings_become_one_plain_line_and_errors_stay_whole():
    stderr = [
        "/venv/lib/python3.11/site-packages/monai/utils/deprecate_utils.py:321: FutureWarning: monai.transforms"
        " Orientation: default axcodes will change",
        "  warn_deprecated(argname, msg, warning_category)",
        r"C:\Users\me\venv\torch\nn\modules\conv.py:605: UserWarning: Using padding='same' with even kernel"
        " lengths and odd dilation may require a zero-padded copy of the input be created",
        "  return F.conv3d(",
        "nibabel/nifti1.py:12: DeprecationWarning: get_data() is deprecated: 1: use get_fdata()",
        "training on 8 exams, validating on 4; 2 steps per epoch",
        "Traceback (most recent call last):",
        '  File "/work/src_train/train.py", line 12, in train',
        "    raise ValueError(problem)",
        "ValueError: 7 training exams make no batch of 8",
        "UserWarning: a warning raised as an error keeps its line",
        "x.py:3: UserWarning: a warning without its source line",
        "python -m src_train: the cohort is broken",
    ]
    lines = rp.WarningLines()
    shown = [out for line in stderr for out in lines.feed(line)]
    assert shown == [
        "warning: monai.transforms Orientation: default axcodes will change",
        "warning: Using padding='same' with even kernel lengths and odd dilation may require a zero-padded copy "
        "of the input be created",
        "warning: get_data() is deprecated: 1: use get_fdata()",
        "training on 8 exams, validating on 4; 2 steps per epoch",
        "Traceback (most recent call last):",
        '  File "/work/src_train/train.py", line 12, in train',
        "    raise ValueError(problem)",
        "ValueError: 7 training exams make no batch of 8",
        "UserWarning: a warning raised as an error keeps its line",
        "warning: a warning without its source line",
        "python -m src_train: the cohort is broken",
    ]
    # only the indented line right after a warning is its source: later indented lines stay
    again = rp.WarningLines()
    assert [out for line in ("a.py:1: UserWarning: w", "  src", "  kept") for out in again.feed(line)] == [
        "warning: w", "  kept"]


def test_progress_folds_events_into_status_and_curves():
    progress = rp.TrainingProgress()
    assert progress.status_text() == "preparing the data..." and progress.fraction == 0
    for event in EVENTS[:4]:
        progress.apply(event)
    assert progress.total_steps == 8 and progress.step == 4 and progress.fraction == 0.5
    text = progress.status_text()
    assert "epoch 1/2" in text and "step 4/8" in text and "val loss 0.740" in text and "recall@1 0.25" in text
    steps, losses, val_steps, val_losses = progress.curves()
    assert (steps, losses, val_steps, val_losses) == ([1], [1.5], [4], [0.74])  # the NaN step is left out
    progress.apply(EVENTS[4])
    assert progress.stopped and progress.checkpoint == "/run/last.safetensors"
    progress.apply(EVENTS[5])
    assert progress.done and progress.model == "/run/best.safetensors"


def test_resumed_run_shows_its_earlier_epochs(tmp_path):
    (tmp_path / "log.csv").write_text("epoch,step,train_loss,lr,val_loss,recall_at_1,recall_at_5,mean_rank\n"
                                      "0,4,1.1,0.0002,0.8,0.25,1.0,2.5\n")
    progress = rp.TrainingProgress()
    progress.add_history(rp.read_training_log(tmp_path))
    progress.apply(EVENTS[6])
    progress.apply({"event": "epoch", "epoch": 1, "step": 8, "train_loss": 0.9, "val_loss": 0.7})
    assert progress.first_step == 5
    assert progress.curves()[2:] == ([4, 8], [0.8, 0.7])
    assert rp.read_training_log(tmp_path / "none") == []


LOG = ("epoch,step,train_loss,lr,val_loss,recall_at_1,recall_at_5,mean_rank\n"
       "0,4,1.1,0.0002,0.8,0.25,1.0,2.5\n1,8,0.9,0.0002,0.7,0.25,1.0,2.5\n")


def test_a_resumed_run_shows_its_whole_loss_curve(tmp_path):
    """The checkpoint keeps every step's loss across resumes: the curve starts at step 1."""
    run = tmp_path / "run"
    losses = [2.0, 1.9, 1.8, 1.7, 1.6, 1.5, 1.4, 1.3, 1.2, 1.1]
    _fake_checkpoint(run, {**STATE, "next_epoch": 2, "next_batch": 2, "step": 10, "loss_history": losses,
                           "epoch_losses": [1.2, 1.1]})
    (run / "log.csv").write_text(LOG)
    assert rp.read_loss_history(run) == list(enumerate(losses, 1))
    progress = rp.TrainingProgress()
    progress.add_run_history(run)
    progress.apply({"event": "resumed", "epoch": 2, "batch": 2, "step": 10})
    for step, loss in ((11, 1.0), (12, 0.9)):
        progress.apply({"event": "step", "epoch": 2, "step": step, "loss": loss, "total_steps": 120})
    steps, train, val_steps, val = progress.curves()
    assert steps == list(range(1, 13)) and train == [*losses, 1.0, 0.9]
    assert (val_steps, val) == ([4, 8], [0.8, 0.7])
    # what an interrupted attempt showed beyond the checkpoint is done again: left out at the resume
    progress = rp.TrainingProgress()
    progress.apply({"event": "step", "epoch": 2, "step": 11, "loss": 5.0, "total_steps": 120})
    progress.add_run_history(run)
    progress.apply({"event": "resumed", "epoch": 2, "batch": 2, "step": 10})
    assert progress.curves()[0] == list(range(1, 11))


def test_a_run_of_an_earlier_version_shows_its_epochs_then_its_steps(tmp_path):
    """Checkpoints without the step history: epoch means from log.csv, then the stopped epoch's steps."""
    run = tmp_path / "run"
    _fake_checkpoint(run, {**STATE, "next_epoch": 2, "next_batch": 2, "step": 10, "epoch_losses": [1.2, 1.1]})
    (run / "log.csv").write_text(LOG + "2,12,0.5,0.0002,0.6,0.25,1.0,2.5\n")  # logged after the checkpoint
    assert rp.read_loss_history(run) == [(4, 1.1), (8, 0.9), (9, 1.2), (10, 1.1)]
    # resumed from such a checkpoint: the history covers the steps after it only
    _fake_checkpoint(run, {**STATE, "next_epoch": 3, "next_batch": 0, "step": 12, "loss_history": [0.6, 0.5]})
    assert rp.read_loss_history(run) == [(4, 1.1), (8, 0.9), (11, 0.6), (12, 0.5)]
    (run / training_run.CHECKPOINT_FILE).unlink()
    assert rp.read_loss_history(run) == [(4, 1.1), (8, 0.9), (12, 0.5)]  # a log without checkpoint
    assert rp.read_loss_history(tmp_path / "none") == []


def test_an_earlier_run_folder_gives_back_its_curve_model_and_evaluation(tmp_path):
    run = tmp_path / "run"
    _fake_checkpoint(run, {**STATE, "next_epoch": 2, "next_batch": 0, "step": 8, "loss_history": [1.0] * 8})
    (run / "log.csv").write_text(LOG)
    (run / "best.safetensors").write_bytes(b"")
    (run / "evaluation").mkdir()
    (run / "evaluation" / "evaluation.csv").write_text(EVALUATION_CSV)
    (run / "evaluation" / "evaluation.md").write_text("**WARNING: in-sample table: 2 of the 2 ...**\n")
    results = rp.read_run_results(run)
    assert results.model == run / "best.safetensors" and len(results.evaluation) == 2 and results.in_sample
    p = results.progress
    assert (p.step, p.steps_per_epoch, p.total_steps) == (8, 4, 120) and len(p.curves()[0]) == 8
    assert results.describe() == ("earlier run in run: 2 epochs; model best.safetensors; its evaluation below "
                                  "(IN-SAMPLE: not a result)")
    (run / "evaluation" / "evaluation.csv").write_text("a,b\n")
    assert "not an evaluation table" in rp.read_run_results(run).evaluation_problem
    assert rp.read_run_results(tmp_path / "none").empty and rp.read_run_results(tmp_path).empty


def test_exit_codes_in_words():
    level, text = rp.describe_exit("train", 3, False, checkpoint="/run/last.safetensors")
    assert level == "info" and text == ("stopped; checkpoint saved at /run/last.safetensors; "
                                        "Start with resume to continue")
    level, text = rp.describe_exit("training", 1, False, ["Traceback", "ValueError: bad cohort"])
    assert level == "error" and "exit code 1" in text and "ValueError: bad cohort" in text
    assert rp.describe_exit("evaluation", 0, False)[0] == "info"
    assert "killed" in rp.describe_exit("training", 9, True)[1]


# --------------------------------------------------------------------------------------------------
# evaluation table
# --------------------------------------------------------------------------------------------------
EVALUATION_CSV = """feature_set,horizon,n_patients,n_positive,auc,auc_low,auc_high,f1,f1_low,f1_high,brier,brier_low,brier_high,status,message
MEDIMP,2y,40,20,0.625,0.5,0.75,0.5,0.4,0.6,0.2,0.1,0.3,ok,
clinical values only,2y,,,,,,,,,,,,not enough patients,"not enough patients: 2 positive and 1 negative"
"""


def test_evaluation_table_is_read_with_types(tmp_path):
    (tmp_path / "evaluation.csv").write_text(EVALUATION_CSV)
    rows = et.read_evaluation_table(tmp_path)  # the folder or the file
    assert rows == et.read_evaluation_table(tmp_path / "evaluation.csv")
    assert len(rows) == 2
    assert rows[0]["n_patients"] == 40 and rows[0]["auc"] == 0.625 and rows[0]["feature_set"] == "MEDIMP"
    assert rows[1]["n_patients"] is None and rows[1]["auc"] is None
    lines = et.evaluation_lines(rows)
    assert [line.heading for line in lines] == [True, False, False]
    assert lines[0].cells == ["Graft dysfunction at 2 years\n40 patients, 20 with graft dysfunction"]
    assert lines[1].cells == ["MEDIMP", "0.62 (0.50–0.75)", "0.50", "ok"] and not lines[1].flagged
    assert lines[2].cells == ["clinical\nvalues only", "–", "–", "not enough\npatients"] and lines[2].flagged
    assert "2 positive" in lines[2].tooltip and "clinical values only" in lines[2].tooltip
    assert len(et.DISPLAY_COLUMNS) == len(et.COLUMN_HINTS) == len(lines[1].cells)
    # a table of the first release (fold mean and std) still reads
    old = {"feature_set": "MEDIMP", "horizon": "2y", "auc_mean": 0.7, "auc_std": 0.1, "f1_mean": 0.6}
    assert et.evaluation_lines([old])[1].cells[1:3] == ["0.70 ± 0.10", "0.60"]


def _row(n, pos, auc, name="MEDIMP", horizon="2y"):
    return {"feature_set": name, "horizon": horizon, "n_patients": n, "n_positive": pos, "auc": auc,
            "auc_low": max(0.0, auc - 0.2), "auc_high": min(1.0, auc + 0.2), "f1": 0.5, "status": "ok"}


@pytest.mark.parametrize("n, pos, auc, flags", [
    (6, 4, 0.25, ["too few patients", "weak"]),  # what a short run on a small cohort gives
    (120, 40, 0.81, []),
    (30, 10, 0.6, []),  # the thresholds themselves are enough
    (29, 10, 0.8, ["too few patients"]),
    (100, 9, 0.8, ["too few patients"]),  # 9 patients with dysfunction
    (100, 91, 0.8, ["too few patients"]),  # 9 without
    (100, 50, 0.59, ["weak"]),
])
def test_an_evaluation_too_small_or_too_weak_is_flagged(n, pos, auc, flags):
    assert et.reliability(_row(n, pos, auc)) == flags
    line = et.evaluation_lines([_row(n, pos, auc)])[1]
    assert line.flagged == bool(flags) and line.cells[-1] == ("\n".join(flags) or "ok")
    assert bool(et.evaluation_warnings([_row(n, pos, auc)])) == bool(flags)


def test_the_flags_are_said_in_words():
    rows = [_row(6, 4, 0.25), _row(6, 4, 0.7, "clinical values only"), _row(6, 4, 0.3, "untrained encoder"),
            _row(6, 4, 0.8, horizon="3y"), _row(100, 50, 0.55, horizon="4y")]
    warnings = et.evaluation_warnings(rows)
    assert warnings == [
        "Graft dysfunction at 2 and 3 years: only 6 patients (4 with graft dysfunction, 2 without), too few "
        f"to rely on these numbers; at least {et.MIN_PATIENTS} patients, {et.MIN_PER_OUTCOME} with and "
        f"{et.MIN_PER_OUTCOME} without dysfunction, are needed.",
        "AUC below 0.6 (MEDIMP at 2 years: 0.25; MEDIMP at 4 years: 0.55): the model barely tells the patients who "
        "will have graft dysfunction from those who will not (0.5 is chance)."]
    lines = et.evaluation_lines(rows)
    assert [line.flagged for line in lines if line.heading] == [True, True, False]
    assert "Too few patients" in lines[0].tooltip
    assert lines[3].cells[-1] == "too few patients\nweak"  # the untrained encoder: flagged in its row only


def test_the_table_says_horizons_in_the_products_words():
    from napari_medimp.core.terms import horizons_words

    rows = [_row(6, 4, 0.7, horizon=h) for h in ("2y", "3y", "4y")] + [_row(6, 4, 0.7, horizon="")]
    headings = [line.cells[0].split("\n")[0] for line in et.evaluation_lines(rows) if line.heading]
    assert headings == ["Graft dysfunction at 2 years", "Graft dysfunction at 3 years",
                        "Graft dysfunction at 4 years", "Graft dysfunction at ?"]  # a blank horizon stays "?"
    warning = et.evaluation_warnings(rows[:3])[0]
    assert warning.startswith(f"Graft dysfunction at {horizons_words(['2y', '3y', '4y'])}: only 6 patients")
    assert "2, 3 and 4 years" in warning


def test_evaluation_table_problems(tmp_path):
    with pytest.raises(ValueError, match="no evaluation table"):
        et.read_evaluation_table(tmp_path)
    (tmp_path / "evaluation.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not an evaluation table"):
        et.read_evaluation_table(tmp_path)


def test_evaluation_table_matches_what_evaluate_writes(tmp_path):
    from src_train.evaluate import evaluate
    from src_train.readings import ClinicalTable, EmbeddingSource, FeatureSet
    from src_train.tables import write_csv

    rng = np.random.default_rng(0)
    pats = [f"P{i}" for i in range(12)]
    source = EmbeddingSource({p: {"D30": rng.normal(size=3)} for p in pats})
    table = ClinicalTable({}, {p: ["D30"] for p in pats})
    result = evaluate([FeatureSet("MEDIMP", "image", source)], table, pats, {"2y": np.array([0.0, 1.0] * 6)},
                      n_splits=2, n_repeats=1, n_boot=20)
    rows = et.read_evaluation_table(write_csv(result.table, tmp_path / "evaluation.csv"))
    assert [r["horizon"] for r in rows] == ["2y"]
    assert isinstance(rows[0]["auc"], float) and rows[0]["n_patients"] == 12
    assert et.evaluation_lines(rows)[1].cells[1].count("(") == 1


def test_module_needs_no_qt():
    import subprocess

    code = ("import sys; import napari_medimp._widgets.run_options, napari_medimp._widgets.run_progress; "
            "import napari_medimp.core.evaluation_table; "
            "assert not any(m.split('.')[0] in ('qtpy', 'PyQt6', 'PyQt5', 'napari') for m in sys.modules), "
            "[m for m in sys.modules if m.startswith(('qtpy', 'PyQt', 'napari.'))]")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


# --------------------------------------------------------------------------------------------------
# loss plot
# --------------------------------------------------------------------------------------------------
def test_nice_ceiling():
    assert [rp.nice_ceiling(v) for v in (0.9, 1.0, 1.1, 2.1, 3.2, 7, 0.031)] == [1, 1, 2, 2.5, 5, 10, 0.05]
    assert rp.nice_ceiling(0) == 1.0 and rp.nice_ceiling(float("nan")) == 1.0


def test_plot_axes_change_rarely():
    progress = rp.TrainingProgress()
    assert rp.plot_limits(progress) == (1.0, 1.0)
    progress.apply(EVENTS[0])  # the run's length alone does not redraw the axes
    assert rp.plot_limits(progress, (1.0, 1.0)) == (1.0, 1.0)
    limits = None
    history = []
    for step, loss in enumerate([0.9, 0.5, 0.2, 2.5, 2.7, 3.1, 1.0, 0.4], 1):
        progress.apply({"event": "step", "epoch": 0, "step": step, "loss": loss, "total_steps": 8})
        limits = rp.plot_limits(progress, limits)
        history.append(limits)
    assert history[0] == (8.0, 2.0)  # whole run on x; 1.25 x the loss, rounded up, on y
    assert len(set(history)) == 2 and history[-1] == (8.0, 5.0)  # one change for the spike, none after
    assert rp.plot_limits(progress, (8.0, 10.0)) == (8.0, 10.0)  # never shrinks


def test_long_curves_are_averaged_for_the_plot():
    progress = rp.TrainingProgress()
    for step in range(1, 10_001):
        progress.apply({"event": "step", "epoch": 0, "step": step, "loss": 1.0 + step % 2, "total_steps": 10_000})
    steps, losses, _, _ = progress.curves(max_points=1000)
    assert len(steps) == 1000 and steps[0] == 5.5 and all(v == 1.5 for v in losses)
    assert len(progress.curves(max_points=0)[0]) == 10_000


def test_status_puts_each_validation_number_beside_its_chance_level():
    progress = rp.TrainingProgress()
    for event in EVENTS[:1]:
        progress.apply(event)
    progress.apply({"event": "epoch", "epoch": 0, "step": 4, "train_loss": 1.0, "val_loss": 1.2,
                    "val_chance_loss": 1.386, "val_floor_loss": 0.17, "mean_rank": 2.0, "chance_mean_rank": 2.5,
                    "recall_at_1": 0.5})
    text = progress.status_text()
    assert "val loss 1.200 (chance 1.39)" in text and "mean rank 2.0 (chance 2.5)" in text
    assert "recall@1" not in text


def test_horizons_without_an_auc_are_said_once_with_their_reason():
    reason = "not enough patients: 4 positive and 0 negative patients with a known outcome (need >= 2 of each)"
    rows = [{"feature_set": name, "horizon": h, "status": "skipped", "message": reason}
            for h in ("2y", "3y") for name in ("MEDIMP", "clinical values only")]
    assert et.evaluation_warnings(rows) == [f"Graft dysfunction at 2 and 3 years: no AUC, {reason}."]
    assert et.evaluation_warnings([_row(100, 50, 0.8)]) == []  # a scored horizon adds nothing
