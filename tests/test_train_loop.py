"""Smoke training on a tiny cohort: outputs, model files, progress events, exact resume after a stop."""

from __future__ import annotations

import json

import pytest
import torch

from napari_medimp.core.checkpoint import load_model
from napari_medimp.core.preprocess import PreprocessConfig
from src_train.train import TrainConfig, lr_lambda, parameter_groups, train


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from napari_medimp.core import synth

    out = tmp_path_factory.mktemp("cohort")
    synth.generate_cohort(out, n_patients=3, seed=21, grid=(16, 40, 48), spacing=(6.0, 4.0, 4.0))
    return out


def _config(cohort, out, **kw):
    base = dict(cohort=str(cohort), out=str(out), image_encoder="clip_resnet_tiny", embed_dim=16,
                text_trainable_layers=1, epochs=2, batch_size=2, warmup_steps=2, val_fraction=0.34,
                preprocessing=PreprocessConfig(target_spacing=(6.0, 4.0, 4.0), input_size=(8, 16, 16)).to_dict())
    base.update(kw)
    return TrainConfig(**base)


def test_smoke_training_writes_everything(cohort, tmp_path):
    events = []
    summary = train(_config(cohort, tmp_path / "run"), progress=events.append)
    run = tmp_path / "run"
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


def test_stop_then_resume_equals_an_uninterrupted_run(cohort, tmp_path):
    reference = tmp_path / "ref"
    train(_config(cohort, reference))
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
    code = main(["train", "--cohort", str(cohort), "--out", str(run), "--config", str(config), "--epochs", "1",
                 "--batch-size", "2", "--embed-dim", "16", "--json-progress"])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert lines[0]["event"] == "start" and lines[-1]["event"] == "done"
    model = lines[-1]["model"]
    code = main(["evaluate", "--model", model, "--cohort", str(cohort), "--out", str(tmp_path / "eval"),
                 "--splits", "2", "--repeats", "1", "--write-heads"])
    assert code == 0
    table = (tmp_path / "eval" / "evaluation.md").read_text()
    for name in ("MEDIMP", "untrained encoder", "clinical values only"):
        assert name in table
    predictor = Predictor.from_file(model)  # the rewritten file still passes its hash check
    evaluation = predictor.card["metrics"]["evaluation"]
    assert {row["feature_set"] for row in evaluation} == {"MEDIMP", "untrained encoder", "clinical values only"}
    # heads exist only for horizons where both classes occur among the three patients
    assert set(predictor.prognosis_horizons) <= {"2y", "3y", "4y"}
