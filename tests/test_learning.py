"""Learning is shown, not assumed: what the validation compares a loss with, the content-level retrieval,
the fair untrained baseline, and a loop that overfits a handful of pairs (a slow test: a small run beats
the commonest answer on patients it never saw)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_medimp.core.preprocess import PreprocessConfig
from napari_medimp.core.prompts import prompt_from_slots, slot_values
from napari_medimp.core.training_run import PRESETS, TrainConfig
from src_train.metrics import chance_loss, content_key, content_retrieval, duplicate_floor


def test_chance_level_follows_the_actual_batch_sizes():
    assert chance_loss([8, 8, 3]) == pytest.approx((2 * math.log(8) + math.log(3)) / 3)
    assert math.isnan(chance_loss([]))


def test_duplicate_floor_by_hand():
    # batch 1: a, a, b, c -> ln2, ln2, 0, 0 (mean ln2 / 2); batch 2: all four the same -> ln4
    floor = duplicate_floor([["a", "a", "b", "c"], ["d", "d", "d", "d"]])
    assert floor == pytest.approx((math.log(2) / 2 + math.log(4)) / 2)
    assert duplicate_floor([["a", "b", "c"]]) == 0.0  # distinct prompts: a perfect reader reaches 0


def test_content_key_leaves_the_visit_out_when_asked():
    slots = {"gfr": "low", "exam": "first month", "creatinine": None, "donor_age": "high"}
    assert content_key(slots, ("gfr", "exam", "donor_age")) == (("gfr", "low"), ("exam", "first month"),
                                                                 ("donor_age", "high"))
    assert content_key(slots, ("gfr", "exam", "donor_age"), with_exam=False) == (("gfr", "low"),
                                                                                  ("donor_age", "high"))


def _slots(gfr, exam="first month"):
    return {"gfr": gfr, "exam": exam, "creatinine": None, "donor_age": "low"}


def _oracle_text_encoder(dim=8):
    """Text embedding = a one-hot of the GFR bin word (a perfect, hand-made reader)."""
    words = ["extremely low", "very low", "low", "medium", "high"]

    def encode(texts):
        out = torch.zeros(len(texts), dim)
        for i, t in enumerate(texts):
            j = next(k for k, w in sorted(enumerate(words), key=lambda kw: -len(kw[1])) if f"is {w}." in t)
            out[i, j] = 1.0
        return out
    return encode, words


def test_content_retrieval_by_hand():
    encode, words = _oracle_text_encoder()
    truth = ["low", "low", "low", "medium", "high"]
    exams = ["D30"] * 5
    slots = [_slots(g) for g in truth]
    attributes = ("gfr", "exam", "donor_age")
    perfect = torch.zeros(5, 8)
    for i, g in enumerate(truth):
        perfect[i, words.index(g)] = 1.0
    out = content_retrieval(perfect, exams, slots, attributes, encode)
    assert out == {"content_top1": 1.0, "content_baseline": pytest.approx(3 / 5), "content_mean_rank": 1.0,
                   "n_contents": 3}
    # always reading "low": right 3 of 5 times, as the commonest answer; the two others rank 2nd and 3rd
    lazy = torch.zeros(5, 8)
    lazy[:, words.index("low")] = 1.0
    lazy[:, words.index("medium")] = 0.5
    out = content_retrieval(lazy, exams, slots, attributes, encode)
    assert out["content_top1"] == pytest.approx(3 / 5) and out["content_top1"] == out["content_baseline"]
    assert out["content_mean_rank"] == pytest.approx((1 + 1 + 1 + 2 + 3) / 5)
    # one content only: nothing to tell apart
    assert content_retrieval(perfect[:3], exams[:3], slots[:3], attributes, encode) == {}


def test_content_baseline_is_the_commonest_content_at_each_visit():
    encode, words = _oracle_text_encoder()
    truth = ["low", "low", "high", "high", "high", "medium"]
    exams = ["D15", "D15", "D15", "M12", "M12", "M12"]
    slots = [_slots(g, {"D15": "two weeks", "M12": "first year"}[e]) for g, e in zip(truth, exams, strict=True)]
    feats = torch.zeros(6, 8)
    out = content_retrieval(feats, exams, slots, ("gfr", "exam", "donor_age"), encode)
    assert out["content_baseline"] == pytest.approx((2 + 2) / 6)
    assert out["content_top1"] == 0.0  # a tie counts against the true content


def test_prompt_from_slots_is_the_prompt_builder():
    from napari_medimp.core.clinical import ClinicalRecord
    from napari_medimp.core.prompts import build_prompt

    record = ClinicalRecord.from_values(exam="M3", gfr=40, donor_age=70, creatinine=[200, 90, 95])
    for k in (0, 3):
        assert prompt_from_slots(slot_values(record), variant=k) == build_prompt(record, variant=k)


def test_untrained_encoder_with_recalibrated_statistics_tells_exams_apart():
    from napari_medimp.core.models import ModelConfig, build_model
    from src_train.batch_norm import image_batches, recalibrate_batchnorm

    torch.manual_seed(0)
    config = ModelConfig(image_encoder="clip_resnet_tiny", image_encoder_kwargs={"width": 8}, embed_dim=16,
                         in_channels=1)
    model = build_model(config).eval()
    gen = torch.Generator().manual_seed(1)
    # preprocessed images are small numbers (robust normalisation): against the initial statistics
    # (mean 0, variance 1) a fresh encoder gives every exam almost the same embedding
    images = [0.05 * torch.rand(1, 8, 16, 16, generator=gen) * (1 + i) for i in range(12)]

    def spread():
        with torch.no_grad():
            z = torch.nn.functional.normalize(model.encode_image(torch.stack(images)), dim=-1)
        cos = z @ z.T
        return float(cos[~torch.eye(len(images), dtype=bool)].mean())

    before = spread()
    weights = {k: v.clone() for k, v in model.image_encoder.state_dict().items() if "running" not in k
               and "num_batches" not in k}
    assert recalibrate_batchnorm(model.image_encoder, image_batches(images)) > 0
    after = spread()
    assert before > 0.99 and after < before - 0.05
    assert not model.image_encoder.training
    for k, v in model.image_encoder.state_dict().items():
        if k in weights:
            assert torch.equal(v, weights[k]), k


@pytest.fixture(scope="module")
def handful(tmp_path_factory):
    from napari_medimp.core import synth

    out = tmp_path_factory.mktemp("handful")
    synth.generate_cohort(out, n_patients=2, seed=5, grid=(16, 40, 48), spacing=(6.0, 4.0, 4.0))
    return out


def test_the_loop_overfits_a_handful_of_pairs(handful, tmp_path):
    """Two patients (7 exams, 7 distinct prompts), augmentation off, no validation, every pair in one
    batch: the training loss falls far below the chance level ln(7) and the images rank their own prompts
    first."""
    from src_train.data import ContrastiveDataset, cohort_items
    from src_train.train import train
    from src_train.validation import validate

    tiny = {"preprocessing": PreprocessConfig(target_spacing=(6.0, 4.0, 4.0), input_size=(8, 16, 16),
                                              phases=("baseline", "first-pass", "late")).to_dict(),
            "image_encoder": "clip_resnet_tiny", "image_encoder_kwargs": {"width": 8}, "embed_dim": 16,
            "epochs": 50, "batch_size": 7, "warmup_steps": 2, "val_fraction": 0.0, "lr": 1e-3,
            "augment": False, "text_dropout": 0.0}
    config = TrainConfig.from_dict({**PRESETS["cpu-small"], **tiny, "cohort": str(handful),
                                    "out": str(tmp_path / "run")})
    events = []
    train(config, progress=events.append)
    losses = [e["loss"] for e in events if e["event"] == "step"]
    assert len(losses) == 50 and losses[0] > 0.8 * math.log(7)
    assert np.mean(losses[-5:]) < 0.25 * math.log(7)

    from napari_medimp.core.checkpoint import load_model

    model = load_model(tmp_path / "run" / "last_model").model
    items, _ = cohort_items(handful)
    data = ContrastiveDataset(items, PreprocessConfig.from_dict(tiny["preprocessing"]), augment=False)
    metrics = validate(model, data, batch_size=len(data))
    assert len(data) == 7 and metrics["recall_at_1"] >= 6 / 7
    assert metrics["val_loss"] < 0.5 * metrics["val_chance_loss"]


def _cohort_readings(informative: bool, n_patients: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    encode, words = _oracle_text_encoder()
    truth = rng.choice(["low", "medium", "high"], size=n_patients * 2, p=[0.2, 0.6, 0.2])
    feats = torch.zeros(len(truth), 8)
    for i, g in enumerate(truth):
        shown = g if informative else rng.choice(["low", "medium", "high"])
        feats[i, words.index(shown)] = 1.0
    feats += 0.3 * torch.as_tensor(rng.normal(size=feats.shape), dtype=torch.float32)
    exams = ["D30", "M12"] * n_patients
    slots = [_slots(g, {"D30": "first month", "M12": "first year"}[e]) for g, e in zip(truth, exams, strict=True)]
    patients = [f"P{i // 2:03d}" for i in range(len(truth))]
    return feats, exams, slots, patients, encode


def test_content_evaluation_adds_the_prior_back_and_credits_only_what_images_show():
    from src_train.zero_shot import content_evaluation

    feats, exams, slots, patients, encode = _cohort_readings(informative=True)
    out = content_evaluation(feats, exams, slots, patients, ("gfr", "exam", "donor_age"), encode, n_boot=200)
    assert out["n_contents"] == 3 and out["content_attributes"] == ["gfr", "donor_age"]
    assert out["with_prior"] > out["prior_only"] + 0.2 and out["prior_difference_ci"][0] > 0
    assert out["top1_ci"][0] <= out["top1"] <= out["top1_ci"][1]

    feats, exams, slots, patients, encode = _cohort_readings(informative=False)
    null = content_evaluation(feats, exams, slots, patients, ("gfr", "exam", "donor_age"), encode, n_boot=200)
    # images showing nothing: the raw reading falls below the commonest answer, the prior-corrected one
    # does not beat the prior alone
    assert null["top1"] < null["commonest"]
    assert null["prior_difference_ci"][0] <= 0.0


@pytest.mark.slow
def test_a_small_pretraining_beats_chance_on_patients_it_never_saw(tmp_path):
    """40 synthetic patients of the calibrated world on a coarse grid, the cpu-small recipe scaled down:
    on the 10 validation patients (never trained on) the images rank their own prompt content better than
    chance (mean rank among the contents) and the exact prompt better than chance; the loss is below the
    chance level of its batches. Runs for several minutes on 2 cores (``pytest -m slow``)."""
    from napari_medimp.core import synth
    from src_train.train import train

    cohort = tmp_path / "cohort"
    synth.generate_cohort(cohort, n_patients=40, seed=31, grid=(16, 48, 56), spacing=(6.0, 3.5, 3.5), n_jobs=2)
    prep = PreprocessConfig(target_spacing=(6.0, 3.5, 3.5), input_size=(16, 40, 40),
                            phases=("baseline", "28s", "52s", "120s", "late"))
    config = TrainConfig.from_dict({**PRESETS["cpu-small"], "preprocessing": prep.to_dict(), "epochs": 25,
                                    "batch_size": 8, "patience": 0, "val_fraction": 0.25,
                                    "cohort": str(cohort), "out": str(tmp_path / "run")})
    events = []
    train(config, progress=events.append)
    epochs = [e for e in events if e["event"] == "epoch"]
    best = min(epochs, key=lambda e: e["mean_rank"])
    assert best["mean_rank"] < 0.8 * best["chance_mean_rank"]
    assert best["content_mean_rank"] < 0.8 * (best["n_contents"] + 1) / 2
    assert best["val_loss"] < best["val_chance_loss"]


def test_console_puts_each_validation_number_beside_its_chance_level(capsys):
    from src_train.cli import _printer

    emit = _printer(False)
    emit({"event": "epoch", "epoch": 3, "step": 40, "train_loss": 2.1, "val_loss": 2.4, "val_chance_loss": 2.66,
          "val_floor_loss": 0.24, "mean_rank": 20.1, "chance_mean_rank": 37.0, "content_top1": 0.1,
          "content_baseline": 0.36})
    line = capsys.readouterr().err
    assert "val loss 2.400 (chance 2.660, floor 0.240)" in line and "mean rank 20.1 (chance 37.0)" in line
    assert "content top-1 0.100 (commonest 0.360)" in line
    emit({"event": "epoch", "epoch": 0, "step": 4, "train_loss": 2.1})  # no validation: nothing made up
    assert capsys.readouterr().err.strip() == "epoch 0: train loss 2.1000"
