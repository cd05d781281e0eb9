"""Smoke training on a tiny cohort: outputs, model files, progress events, exact resume after a stop."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from napari_medimp.core.checkpoint import load_model
from napari_medimp.core.preprocess import PreprocessConfig
from napari_medimp.core.training_run import PRESETS
from src_train.precision import resolve_amp
from src_train.schedule import lr_lambda, parameter_groups
from src_train.state import load_training_state, save_training_state
from src_train.train import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cohort(training_cohort):
    return training_cohort


#: the tiny training every test here runs (as a ``--config`` file for the command line, over the cpu-small
#: preset): the in-process and the command-line trainings of these options are the same run
TINY = {"preprocessing": PreprocessConfig(target_spacing=(6.0, 4.0, 4.0), input_size=(8, 16, 16)).to_dict(),
        "image_encoder": "clip_resnet_tiny", "image_encoder_kwargs": {"width": 8}, "embed_dim": 16,
        "text_trainable_layers": 1, "epochs": 2, "batch_size": 2, "warmup_steps": 2, "val_fraction": 0.34,
        "lr": 1e-4}


def _config(cohort, out, **kw):
    return TrainConfig.from_dict({**PRESETS["cpu-small"], **TINY, "cohort": str(cohort), "out": str(out), **kw})


@pytest.fixture(scope="module")
def reference_run(cohort, tmp_path_factory):
    """One uninterrupted training of the reference configuration, shared by the tests that compare an
    interrupted run with it: (run folder, progress events, summary)."""
    run = tmp_path_factory.mktemp("reference") / "run"
    events: list = []
    summary = train(_config(cohort, run), progress=events.append)
    return run, events, summary


def test_smoke_training_writes_everything(reference_run):
    run, events, summary = reference_run
    for name in ("last.safetensors", "last.json", "log.csv", "loss_curve.png", "last_model.safetensors",
                 "last_model.json", "train_config.json"):
        assert (run / name).exists(), name
    assert len((run / "log.csv").read_text().splitlines()) == 1 + 2
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("epoch") == 2
    steps = [e for e in events if e["event"] == "step"]
    assert steps and all(e["loss"] > 0 for e in steps)
    assert 0 <= summary["recall_at_1"] <= 1 and summary["mean_rank"] >= 1
    json.dumps(events)  # progress events are JSON-serialisable (the napari dialog reads them as lines)
    loaded = load_model(run / "last_model")
    assert loaded.card["training"]["epochs"] == 2
    assert loaded.card["training"]["amp"] == "off" and loaded.card["training"]["device"] == "cpu"


def test_stop_then_resume_equals_an_uninterrupted_run(cohort, reference_run, tmp_path):
    reference = reference_run[0]
    interrupted = tmp_path / "cut"
    calls = {"n": 0}

    def stop_after_two_steps():
        calls["n"] += 1
        return calls["n"] == 2

    result = train(_config(cohort, interrupted), should_stop=stop_after_two_steps)
    assert result["stopped"]
    state = json.loads((interrupted / "last.json").read_text())
    assert state["next_batch"] > 0, "the stop happened mid-epoch"
    train(_config(cohort, interrupted), resume=True)
    a = load_model(reference / "last_model").model.state_dict()
    b = load_model(interrupted / "last_model").model.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


def test_schedule_and_weight_decay_groups():
    f = lr_lambda(warmup=4, total=14)
    assert [round(f(s), 3) for s in (0, 3)] == [0.25, 1.0]
    assert f(9) == pytest.approx(0.5) and f(14) == pytest.approx(0.0)
    from napari_medimp.core.models import ModelConfig, build_model

    model = build_model(ModelConfig(image_encoder="clip_resnet_tiny", input_size=(8, 16, 16), embed_dim=16,
                                    text_trainable_layers=1))
    decay, no_decay = parameter_groups(model, 0.1)
    assert model.logit_scale in no_decay["params"] and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"])


def test_bad_configuration_is_refused(tmp_path):
    with pytest.raises(ValueError, match="batch_size >= 2"):
        TrainConfig(cohort=str(tmp_path), batch_size=1)
    with pytest.raises(ValueError, match="unknown training options"):
        TrainConfig.from_dict({"epochs": 2, "learning_rate": 1})
    with pytest.raises(ValueError, match="no clinical table"):
        train(TrainConfig(cohort=str(tmp_path), out=str(tmp_path / "o")))


def test_command_line_train_then_evaluate_stores_heads(cohort, tmp_path, capsys):
    from napari_medimp.cli import main
    from napari_medimp.core.inference import Predictor

    run = tmp_path / "run"
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"preprocessing": PreprocessConfig(target_spacing=(6.0, 4.0, 4.0),
                                                                    input_size=(8, 16, 16)).to_dict(),
                                  "image_encoder_kwargs": {"width": 8}, "val_fraction": 0.34}))
    argv = ["train", "--cohort", str(cohort), "--out", str(run), "--config", str(config), "--epochs", "1",
            "--batch-size", "2", "--embed-dim", "16", "--json-progress"]
    code = main(argv)
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert lines[0]["event"] == "start" and lines[-1]["event"] == "done"
    model = lines[-1]["model"]
    # the model card tells how it was made: the command as typed, the cohort's data seed, the options
    training = json.loads(Path(model).with_suffix(".json").read_text())["training"]
    assert training["command"] == "medimp " + " ".join(argv)
    assert training["resume_commands"] == []
    assert training["data_seed"] == 21 and training["data_generator"].startswith("napari_medimp.core.synth")
    assert training["config"]["embed_dim"] == 16 and training["config"]["batch_size"] == 2
    assert training["config"]["preprocessing"]["input_size"] == [8, 16, 16]
    # who trained it is recorded, and evaluating on those patients is refused before any model work
    seen = training["patients_seen"]
    assert seen["cohort"] == "synthetic seed 21"
    assert sorted(seen["pretraining"] + seen["checkpoint_selection"]) == ["P0001", "P0002", "P0003"]
    capsys.readouterr()
    evaluate = ["evaluate", "--model", model, "--cohort", str(cohort), "--out", str(tmp_path / "eval"),
                "--splits", "2", "--repeats", "1", "--bootstrap", "50", "--write-heads"]
    assert main(evaluate) == 1
    err = capsys.readouterr().err
    assert "3 of the 3 evaluation patients were used to pretrain this model or select its checkpoint" in err
    assert "--allow-overlap" in err and not (tmp_path / "eval").exists()
    code = main([*evaluate, "--allow-overlap"])
    assert code == 0
    table = (tmp_path / "eval" / "evaluation.md").read_text()
    assert "WARNING: in-sample table" in table
    for name in ("MEDIMP", "untrained encoder", "clinical values only", "oracle image reader"):
        assert name in table
    predictor = Predictor.from_file(model)  # the rewritten file still passes its hash check
    evaluation = predictor.card["metrics"]["evaluation"]
    assert {row["feature_set"] for row in evaluation} >= {"MEDIMP", "MEDIMP + clinical", "untrained encoder",
                                                          "clinical values only"}
    assert predictor.card["metrics"]["evaluation_protocol"]["in_sample_warning"].startswith("WARNING")
    # heads exist only for horizons where both classes occur among the three patients
    assert set(predictor.prognosis_horizons) <= {"2y", "3y", "4y"}
    # the same output rules as every command: a second run never silently replaces the first
    capsys.readouterr()
    assert main([*evaluate, "--allow-overlap"]) == 1
    assert "already holds an earlier result" in capsys.readouterr().err
    assert (tmp_path / "eval" / "evaluation.md").read_text() == table
    for bad, words in ((["--splits", "1"], "at least 2 splits"), (["--repeats", "-1"], "at least 1 repeat"),
                       (["--bootstrap", "5"], "at least 40 resamples")):
        assert main([*evaluate, "--allow-overlap", "--overwrite", *bad]) == 1
        assert words in capsys.readouterr().err


def test_card_records_resume_commands_and_no_seed_for_other_cohorts(tmp_path):
    from src_train.run_folder import cohort_provenance, command_line

    assert command_line(["train", "--cohort", "a b"], "python -m src_train") == \
        "python -m src_train train --cohort 'a b'"
    assert cohort_provenance(tmp_path) == {}  # a cohort folder without ground_truth.json
    (tmp_path / "ground_truth.json").write_text("{not json")
    assert cohort_provenance(tmp_path) == {}


# --------------------------------------------------------------------------------------------------
# mixed precision
# --------------------------------------------------------------------------------------------------
def test_amp_option_is_validated_and_off_on_cpu_by_default():
    cpu = torch.device("cpu")
    assert resolve_amp("auto", cpu).mode == "off" and resolve_amp("off", cpu).mode == "off"
    assert resolve_amp("bf16", cpu).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        resolve_amp("fp16", cpu)
    with pytest.raises(ValueError, match="amp must be one of"):
        TrainConfig(amp="half")
    assert not resolve_amp("auto", cpu).grad_scaler().is_enabled()


def test_cpu_bf16_training_runs(cohort, tmp_path):
    events = []
    train(_config(cohort, tmp_path / "bf16", amp="bf16", epochs=1), progress=events.append)
    losses = [e["loss"] for e in events if e["event"] == "step"]
    assert losses and all(0 < x < 100 for x in losses)
    assert events[0]["amp"] == "bf16"
    card = load_model(tmp_path / "bf16" / "last_model").card
    assert card["training"]["amp"] == "bf16"
    # weights stay float32 (autocast changes the compute type only)
    assert all(v.dtype == torch.float32 for v in load_model(tmp_path / "bf16" / "last_model").model.state_dict().values()
               if v.is_floating_point())


def test_loss_scale_is_saved_and_restored(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=7)
    scaler.scale(model(torch.ones(4, 3)).sum()).backward()
    scaler.step(optimizer)
    scaler.update(new_scale=123.0)
    save_training_state(tmp_path, model, optimizer, scheduler, {"next_epoch": 1}, scaler=scaler)
    restored = torch.amp.GradScaler("cpu", init_scale=1.0)
    state = load_training_state(tmp_path, torch.nn.Linear(3, 2), torch.optim.AdamW(torch.nn.Linear(3, 2).parameters()),
                                scheduler, scaler=restored)
    assert state["next_epoch"] == 1
    assert restored.get_scale() == 123.0 and restored.state_dict() == scaler.state_dict()


# --------------------------------------------------------------------------------------------------
# a run killed with SIGKILL resumes exactly
# --------------------------------------------------------------------------------------------------
def _steps(events):
    return {e["step"]: e["loss"] for e in events if e["event"] == "step"}


def _log_rows(path):
    import csv

    with open(path, newline="") as fh:
        return [[float(x) if x else None for x in row.values()] for row in csv.DictReader(fh)]


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(cohort, reference_run, tmp_path, capsys):
    """The command-line training killed in its second epoch, resumed: the same run as the reference."""
    from src_train.cli import main

    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))

    def argv(out):
        return ["train", "--cohort", str(cohort), "--out", str(out), "--config", str(config), "--json-progress"]

    reference_folder, reference, _ = reference_run
    steps_per_epoch = reference[0]["steps_per_epoch"]
    assert steps_per_epoch >= 3

    run = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "src_train", *argv(run)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    killed, epoch_done = [], False
    try:
        for line in proc.stdout:
            if not line.startswith("{"):
                continue
            killed.append(json.loads(line))
            epoch_done = epoch_done or killed[-1]["event"] == "epoch"
            if epoch_done and killed[-1]["event"] == "step" and killed[-1]["epoch"] == 1:
                proc.send_signal(signal.SIGKILL)  # the first step of the second epoch is done
                break
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    state = json.loads((run / "last.json").read_text())
    assert (state["next_epoch"], state["next_batch"]) == (1, 0), "killed after epoch 0's checkpoint, in epoch 1"
    # a write cut short leaves only hidden temporaries, never a file the loader takes for a checkpoint
    leftovers = {p.name for p in run.iterdir()} - {"last.safetensors", "last.json", "log.csv", "train_config.json",
                                                   "best.safetensors", "best.json",
                                                   "run.lock"}  # the killed process's lock: taken over below
    assert all(name.startswith(".") and name.endswith(".part") for name in leftovers), leftovers
    payload = (run / "last.safetensors").read_bytes()
    (run / ".last.safetensors.abc123.part").write_bytes(payload[: len(payload) // 2])  # as if killed mid-write
    (run / ".last.json.abc123.part").write_text('{"next_epoch": 2')

    assert main([*argv(run), "--resume"]) == 0
    resumed = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert resumed[0] == {"event": "resumed", "epoch": 1, "batch": 0, "step": steps_per_epoch}
    assert resumed[-1]["event"] == "done"
    assert not list(run.glob(".*.part")), "stale temporaries are removed on resume"
    assert not (run / "run.lock").exists(), "the lock goes with the run that held it"

    ref_steps, killed_steps, resumed_steps = _steps(reference), _steps(killed), _steps(resumed)
    assert sorted(resumed_steps) == list(range(steps_per_epoch + 1, 2 * steps_per_epoch + 1))
    for step, loss in {**killed_steps, **resumed_steps}.items():
        assert loss == pytest.approx(ref_steps[step], rel=0, abs=1e-6), step
    ref_log, run_log = _log_rows(reference_folder / "log.csv"), _log_rows(run / "log.csv")
    assert len(run_log) == len(ref_log) == 2
    for a, b in zip(ref_log, run_log, strict=True):
        assert b == pytest.approx(a, rel=0, abs=1e-6)
    a = load_model(reference_folder / "last_model").model.state_dict()
    b = load_model(run / "last_model").model.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    card = load_model(run / "last_model").card["training"]
    assert card["command"].startswith("python -m src_train train") or "src_train" in card["command"]
    assert card["resume_commands"] == ["python -m src_train " + " ".join([*argv(run), "--resume"])]


# --------------------------------------------------------------------------------------------------
# data: cached once, augmentation drawn per sample and applied per batch
# --------------------------------------------------------------------------------------------------
def test_each_exam_is_read_and_prepared_once(cohort, monkeypatch):
    from src_train import data as data_module

    calls = []
    original = data_module.PrepareExam.__call__
    monkeypatch.setattr(data_module.PrepareExam, "__call__", lambda self, item: calls.append(1) or original(self, item))
    items, _ = data_module.cohort_items(cohort)
    dataset = data_module.ContrastiveDataset(items[:3], PreprocessConfig(target_spacing=(6.0, 4.0, 4.0),
                                                                         input_size=(8, 16, 16)))
    assert len(calls) == 3
    for epoch in range(2):
        dataset.set_epoch(epoch)
        [dataset[i] for i in range(3)]
    assert len(calls) == 3, "training must not read the images again"


def test_batch_augmentation_is_per_sample_and_does_what_it_says():
    from src_train.data import DRAW, augment_batch, draw_augmentation

    flags = [DRAW[name] for name in ("flip", "affine", "blur", "noise", "gamma")]

    a = draw_augmentation(0, 3, 5)
    assert torch.equal(a, draw_augmentation(0, 3, 5)) and not torch.equal(a, draw_augmentation(0, 4, 5))
    torch.manual_seed(0)
    images = torch.rand(6, 2, 8, 12, 10)
    before = images.clone()
    params = torch.stack([draw_augmentation(1, 0, i) for i in range(6)])
    params[:, flags] = torch.tensor([[1, 1, 1, 1, 1], [0, 1, 0, 0, 0], [1, 0, 0, 0, 0], [0, 0, 1, 0, 0],
                                     [0, 0, 0, 1, 0], [0, 0, 0, 0, 1]], dtype=torch.float64)
    batch = augment_batch(images, params)
    assert torch.equal(images, before), "the input (the cache) is never modified"
    assert all(not torch.equal(batch[i], images[i]) for i in range(6))
    # a sample's augmentation does not depend on the rest of the batch (ranks, resumes)
    single = torch.cat([augment_batch(images[i:i + 1], params[i:i + 1]) for i in range(6)])
    torch.testing.assert_close(batch, single, rtol=0, atol=1e-6)

    nothing = params.clone()
    nothing[:, flags] = 0
    assert torch.equal(augment_batch(images, nothing), images)
    flip = nothing.clone()
    flip[:, DRAW["flip"]] = 1
    assert torch.equal(augment_batch(images, flip), images.flip(-1))
    shift = nothing.clone()
    shift[:, DRAW["affine"]], shift[:, DRAW["angles"]], shift[:, DRAW["scales"]] = 1, 0, 1
    shift[:, DRAW["shifts"]] = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)  # one voxel along x
    out = augment_batch(images, shift)
    torch.testing.assert_close(out[..., :-1], images[..., 1:], rtol=0, atol=1e-5)
    assert torch.all(out[..., -1] == 0)
    gamma = nothing.clone()
    gamma[:, DRAW["gamma"]] = 1
    out = augment_batch(images, gamma)
    dims = (1, 2, 3, 4)
    torch.testing.assert_close(out.amin(dim=dims), images.amin(dim=dims))
    torch.testing.assert_close(out.amax(dim=dims), images.amax(dim=dims))
    blur = nothing.clone()
    blur[:, DRAW["blur"]] = 1
    out = augment_batch(images, blur)
    assert out[:, :, 2:-2, 2:-2, 2:-2].std() < images[:, :, 2:-2, 2:-2, 2:-2].std()


def test_augmentation_draws_keep_their_layout():
    """Resumed runs and saved draws rely on the layout: flip, affine, 3 angles, 3 scales, 3 shifts, blur,
    3 sigmas, noise, its std and seed, gamma and its value."""
    from src_train.data import DRAW, N_AUGMENT_PARAMS, draw_augmentation

    assert N_AUGMENT_PARAMS == 20
    assert (DRAW["flip"], DRAW["affine"], DRAW["blur"], DRAW["noise"], DRAW["gamma"]) == (0, 1, 11, 15, 18)
    assert DRAW["sigmas"] == slice(12, 15) and DRAW["gamma_value"] == 19
    v = draw_augmentation(3, 1, 4).numpy()
    assert set(v[[0, 1, 11, 15, 18]]) <= {0.0, 1.0}
    assert 0.8 <= v[DRAW["gamma_value"]] <= 1.25 and 0.25 <= v[DRAW["sigmas"]].min()


def test_prefetch_joins_its_producer_when_the_consumer_stops_early():
    """A stop mid-epoch closes the batch generator: the producer thread must be finished then, not left
    running torch code while the process exits."""
    import threading
    import time as _time

    from src_train.batches import prefetch

    started = threading.Event()

    def slow():
        for i in range(100):
            started.set()
            _time.sleep(0.02)  # a batch being built
            yield i

    before = set(threading.enumerate())
    stream = prefetch(slow(), depth=1)
    assert next(stream) == 0
    started.wait()
    stream.close()  # what a stop request does to the training loop's generator
    assert not [t for t in set(threading.enumerate()) - before if t.is_alive()]
    assert list(prefetch(iter(range(5)))) == [0, 1, 2, 3, 4]  # order kept, exhausted normally

    def broken():
        yield 1
        raise RuntimeError("bad exam")

    with pytest.raises(RuntimeError, match="bad exam"):
        list(prefetch(broken()))


def test_an_earlier_run_is_neither_overwritten_nor_shared(cohort, reference_run, tmp_path, capsys):
    """Training again into a used folder needs --resume or --overwrite; a live training's folder is refused."""
    import shutil

    from src_train.cli import main

    run = tmp_path / "used"
    shutil.copytree(reference_run[0], run)
    best = (run / "best.safetensors").read_bytes() if (run / "best.safetensors").exists() else None
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"preprocessing": PreprocessConfig(target_spacing=(6.0, 4.0, 4.0),
                                                                    input_size=(8, 16, 16)).to_dict(),
                                  "embed_dim": 16, "val_fraction": 0.34, "epochs": 1, "batch_size": 2}))
    argv = ["train", "--cohort", str(cohort), "--out", str(run), "--config", str(config)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "holds an earlier run" in err and "--resume" in err and "--overwrite" in err and err.count("\n") == 1
    assert best is None or (run / "best.safetensors").read_bytes() == best, "nothing was touched"

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / "run.lock").write_text(f"{other.pid}\n")
        assert main([*argv, "--overwrite"]) == 1
        assert f"in use by another training (process {other.pid})" in capsys.readouterr().err
    finally:
        other.kill()
        other.wait()
    (run / "run.lock").write_text("999999999\n")  # a process that no longer runs
    assert main([*argv, "--overwrite"]) == 0
    assert not (run / "run.lock").exists()
    assert len((run / "log.csv").read_text().splitlines()) == 2  # the new run's one epoch only


def test_ties_and_nan_count_as_misses_in_retrieval_ranks():
    from src_train.validation import retrieval_ranks

    sim = torch.tensor([[0.9, 0.1, 0.2], [0.5, 0.5, 0.1], [float("nan"), 0.2, 0.3]])
    assert retrieval_ranks(sim).tolist() == [1.0, 2.0, 3.0]  # best; tied with another prompt; NaN row last
    assert retrieval_ranks(torch.full((3, 3), float("nan"))).tolist() == [3.0, 3.0, 3.0]


def test_a_diverging_loss_stops_the_run_and_keeps_the_last_good_checkpoint(cohort, tmp_path, monkeypatch):
    from src_train import train as train_module

    real_step = train_module._Training.train_step

    def diverging(self, images, texts):  # finite through the first epoch, NaN in the second
        loss = real_step(self, images, texts)
        return float("nan") if self.step >= self.steps_per_epoch else loss

    monkeypatch.setattr(train_module._Training, "train_step", diverging)
    run = tmp_path / "run"
    with pytest.raises(ValueError, match=r"training diverged at step \d+ \(loss nan\); the last good checkpoint"):
        train(_config(cohort, run, epochs=3))
    state = json.loads((run / "last.json").read_text())
    assert (state["next_epoch"], state["next_batch"]) == (1, 0)  # the end of the finite first epoch
    assert not (run / "run.lock").exists()


def test_resume_checks_the_checkpoint_and_the_options(cohort, tmp_path):
    from safetensors.torch import load_file, save_file

    from napari_medimp.core.safetensors_file import metadata, read_header

    run = tmp_path / "run"
    calls = {"n": 0}

    def stop_after_one_step():
        calls["n"] += 1
        return calls["n"] == 1

    assert train(_config(cohort, run), should_stop=stop_after_one_step)["stopped"]
    with pytest.raises(ValueError, match=r"trained with other options \(lr 0.0001 -> 0.01\).*--override"):
        train(_config(cohort, run, lr=1e-2), resume=True)
    assert not (run / "last_model.safetensors").exists(), "nothing was trained"

    checkpoint = run / "last.safetensors"
    tensors = load_file(str(checkpoint))
    name = next(k for k, v in tensors.items() if k.startswith("model.") and v.is_floating_point())
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, str(checkpoint), metadata=metadata(read_header(checkpoint)))
    with pytest.raises(ValueError, match=f"holds NaN or infinite values \\({name}"):
        train(_config(cohort, run), resume=True)


def test_early_stopping_keeps_the_best_mean_rank_and_a_resume_trains_no_further(cohort, tmp_path):
    """``patience`` epochs without a better validation mean rank end the run; the best model is the epoch
    of the best mean rank; resuming an early-stopped run does not train again."""
    run = tmp_path / "patient"
    events: list = []
    train(_config(cohort, run, epochs=8, patience=1, lr=3e-3), progress=events.append)
    epochs = [e for e in events if e["event"] == "epoch"]
    ranks = [e["mean_rank"] for e in epochs]
    best = min(range(len(ranks)), key=lambda i: (ranks[i], epochs[i]["val_loss"]))
    for e in epochs:  # every epoch reports the chance levels beside its numbers
        sizes = [2] * (e["n_val"] // 2) + [1] * (e["n_val"] % 2)  # validation batches of 2 (TINY)
        assert e["val_chance_loss"] == pytest.approx(sum(math.log(b) for b in sizes) / len(sizes))
        assert e["chance_mean_rank"] == (e["n_val"] + 1) / 2 and 0 <= e["val_floor_loss"] <= e["val_chance_loss"]
    if len(epochs) < 8:  # stopped early: exactly one epoch after the best, without a better rank
        assert [e["event"] for e in events].count("early_stop") == 1
        assert len(epochs) - 1 - best == 1
    assert load_model(run / "best").card["metrics"]["best_epoch"] == best
    state = json.loads((run / "last.json").read_text())
    assert state["best_mean_rank"] == pytest.approx(ranks[best])
    again: list = []
    train(_config(cohort, run, epochs=8, patience=1, lr=3e-3), resume=True, progress=again.append)
    if len(epochs) < 8:
        assert not [e for e in again if e["event"] == "step"]


def test_exams_that_make_no_batch_are_refused_with_the_numbers(cohort, tmp_path, capsys):
    from napari_medimp.cli import main

    run = tmp_path / "run"
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({k: v for k, v in TINY.items() if k not in ("epochs", "batch_size")}))
    code = main(["train", "--cohort", str(cohort), "--out", str(run), "--config", str(config), "--epochs", "1",
                 "--batch-size", "16", "--json-progress"])
    assert code != 0
    captured = capsys.readouterr()
    # 3 patients: 2 train (8 exams), 1 validates (4 exams); 8 exams make no batch of 16
    assert ("8 training exams (2 of 3 patients; 4 exams of 1 patient kept for validation) make no batch of 16; "
            "use batch 8 or more patients") in captured.err
    assert not any(line.startswith("{") for line in captured.out.splitlines())  # no start, no done
    assert not run.exists() or not list(run.glob("*.safetensors"))


def test_a_loop_that_gets_no_batch_writes_no_model(cohort, tmp_path, monkeypatch):
    """The check inside the loop, for exams the check before the run could not foresee."""
    from src_train import train as train_module

    monkeypatch.setattr(train_module, "batch_indices", lambda *a, **k: [])
    events: list = []
    with pytest.raises(ValueError, match="epoch 1 took no training step"):
        train(_config(cohort, tmp_path / "run"), progress=events.append)
    assert not list((tmp_path / "run").glob("*.safetensors"))
    assert [e["event"] for e in events] == ["start"]
