"""Cohort -> training pairs: items, patient-level split, cached preprocessing, prompt draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_medimp.core.preprocess import PreprocessConfig
from src_train.data import ContrastiveDataset, cohort_items, split_by_patient

CONFIG = PreprocessConfig(target_spacing=(6.0, 4.0, 4.0), input_size=(8, 16, 16))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from napari_medimp.core import synth

    out = tmp_path_factory.mktemp("cohort")
    synth.generate_cohort(out, n_patients=3, seed=11, grid=(16, 40, 48), spacing=(6.0, 4.0, 4.0))
    return out


def test_items_follow_the_table_and_the_images(cohort):
    items, skipped = cohort_items(cohort)
    images = sorted(cohort.rglob("*_dce.nii.gz"))
    assert len(items) + len(skipped) == len(images)
    assert {i.exam for i in items} <= {"D15", "D30", "M3", "M12"}
    assert all(i.record.exam == i.exam for i in items)


def test_patients_never_straddle_the_split(cohort):
    items, _ = cohort_items(cohort)
    train, val = split_by_patient(items, 0.34, seed=1)
    assert train and val
    assert not {i.patient for i in train} & {i.patient for i in val}
    assert len(train) + len(val) == len(items)


def test_dataset_gives_model_inputs_and_reproducible_prompts(cohort):
    items, _ = cohort_items(cohort)
    data = ContrastiveDataset(items, CONFIG, seed=3)
    sample = data[0]
    assert isinstance(sample["image"], torch.Tensor) and tuple(sample["image"].shape) == (1, 8, 16, 16)
    assert sample["text"] in data.prompts[0]
    prompts_epoch0 = [data.prompt(i) for i in range(len(data))]
    data.set_epoch(1)
    again = ContrastiveDataset(items, CONFIG, seed=3, augment=False)
    again.set_epoch(1)
    assert [again.prompt(i) for i in range(len(data))] == [data.prompt(i) for i in range(len(data))]
    draws = set()
    for epoch in range(12):
        data.set_epoch(epoch)
        draws.add(data.prompt(0))
    assert len(draws) > 1, "the paraphrase variant must change between epochs"
    assert len(prompts_epoch0) == len(items)
    # without augmentation the cached image comes back identical; with it, it changes at some draw
    np.testing.assert_array_equal(again[0]["image"], again[0]["image"])
    assert any(not torch.equal(data[0]["image"], again[0]["image"]) for _ in range(8))


def test_ablation_attributes_shape_the_prompt(cohort):
    items, _ = cohort_items(cohort)
    data = ContrastiveDataset(items, CONFIG, attributes=("exam",), augment=False)
    from napari_medimp.core.prompts import exam_phrase

    for i, item in enumerate(data.items):
        assert exam_phrase(item.exam) in data.prompt(i) and "filtration" not in data.prompt(i)
    gfr_only = ContrastiveDataset(items, CONFIG, attributes=("gfr",), augment=False)
    assert all("filtration" in p.lower() or "gfr" in p.lower() for p in gfr_only.prompts[0])
    assert all(exam_phrase(gfr_only.items[0].exam) not in p for p in gfr_only.prompts[0])


def test_missing_table_and_unknown_patients(cohort, tmp_path):
    with pytest.raises(ValueError, match="no clinical table"):
        cohort_items(tmp_path)
    table = tmp_path / "clinical.csv"
    table.write_text("patient_id,donor_age\nP9999,50\n")  # matches no patient: refused, naming both sets of ids
    with pytest.raises(ValueError, match=r"none of its patient ids.*P9999.*folders: P0"):
        cohort_items(cohort, table=table)
    first = sorted(p.name for p in cohort.iterdir() if p.is_dir())[0]
    table.write_text(f"patient_id,donor_age\nP9999,50\n{first},50\n")  # the others are skipped, each named
    items, skipped = cohort_items(cohort, table=table)
    assert {i.patient for i in items} == {first} and skipped and all("not in clinical.csv" in s for s in skipped)


@pytest.mark.parametrize("cache_rate", [1.0, 0.0])
def test_an_unreadable_exam_is_skipped_with_its_reason_and_the_rest_trains(cohort, tmp_path, cache_rate):
    """A truncated image in the cohort: that exam is left out (named, with why), the others are used."""
    import shutil

    copy = tmp_path / "cohort"
    shutil.copytree(cohort, copy)
    items, _ = cohort_items(copy)
    bad = items[1]
    image = next(bad.image.rglob("*_dce.nii.gz"))  # the exam folder's dynamic series
    raw = image.read_bytes()
    image.write_bytes(raw[: len(raw) // 3])
    data = ContrastiveDataset(items, CONFIG, seed=3, cache_rate=cache_rate)
    assert len(data) == len(items) - 1
    assert [(i.patient, i.exam) for i in data.items] == [(i.patient, i.exam) for i in items if i is not bad]
    assert len(data.skipped) == 1 and data.skipped[0].startswith(f"{bad.patient}/{bad.exam}: ")
    assert "truncated or corrupt" in data.skipped[0] or "gzip" in data.skipped[0]
    assert all(data.prompts[k] for k in range(len(data)))
    assert tuple(data[len(data) - 1]["image"].shape) == (1, 8, 16, 16)


def test_batches_are_the_same_built_inline_or_in_the_background(cohort):
    """On the CPU with every exam in memory batches are built in the training thread (a second thread's
    torch ops slow the model on a small machine); with exams read from disk they are built one step ahead
    in a background thread. Either way the batches, their order and their draws are identical."""
    import threading

    from src_train.batches import batch_indices, batch_stream

    items, _ = cohort_items(cohort)
    built_in: dict[str, set] = {}

    def stream(cache_rate):
        data = ContrastiveDataset(items, CONFIG, seed=3, cache_rate=cache_rate)
        data.set_epoch(2)
        sample = data.sample

        def recording(index):
            built_in.setdefault(str(cache_rate), set()).add(threading.get_ident())
            return sample(index)

        data.sample = recording
        chunks = list(enumerate(batch_indices(len(data), 2, 0, 2, True, True)))
        return data, list(batch_stream(data, chunks, torch.device("cpu")))

    cached, inline = stream(1.0)
    partly, background = stream(0.5)
    assert cached.fully_cached and not partly.fully_cached
    assert built_in["1.0"] == {threading.get_ident()}
    assert threading.get_ident() not in built_in["0.5"]
    assert [p for p, _ in inline] == [p for p, _ in background] == list(range(len(inline)))
    for (_, a), (_, b) in zip(inline, background, strict=True):
        assert a["text"] == b["text"]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["augment"], b["augment"])


def test_steps_per_epoch_count_whole_batches_only():
    from napari_medimp.core.training_run import BatchPlan, steps_per_epoch, suggested_batch

    # by hand: 7 exams in batches of 8 -> none; 8 -> 1; 17 in batches of 8 -> 2 (1 left over); 286 / 16 -> 17
    assert steps_per_epoch(7, 8) == 0
    assert steps_per_epoch(8, 8) == 1
    assert steps_per_epoch(17, 8) == 2
    assert steps_per_epoch(286, 16) == 17
    assert steps_per_epoch(0, 2) == 0
    # several processes share each batch: the count stays that of one process
    assert steps_per_epoch(17, 8, world_size=4) == 2
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        steps_per_epoch(17, 6, world_size=4)
    with pytest.raises(ValueError, match="batch_size must be >= 2"):
        steps_per_epoch(17, 1)
    # the way out: the largest power of two the exams fill (shared by the processes)
    assert suggested_batch(7) == 4 and suggested_batch(2) == 2 and suggested_batch(1) is None
    assert suggested_batch(7, world_size=3) == 6 and suggested_batch(2, world_size=4) is None

    plan = BatchPlan(train_exams=7, train_patients=2, val_exams=4, val_patients=1, batch_size=8)
    assert plan.steps_per_epoch == 0
    assert plan.problem() == ("7 training exams (2 of 3 patients; 4 exams of 1 patient kept for validation) make "
                              "no batch of 8; use batch 4 or more patients")
    assert BatchPlan(8, 2, 4, 1, 8).problem() is None
    one = BatchPlan(train_exams=1, train_patients=1, val_exams=0, val_patients=0, batch_size=2).problem()
    assert one == ("1 training exam (1 patient, none kept for validation) cannot make a contrastive batch (it "
                   "needs at least 2 exams); use more patients")
    assert "(2 processes of 4)" in BatchPlan(7, 2, 4, 1, 8, world_size=2).problem()


def test_batch_plan_splits_the_cohort_as_the_trainer_does(cohort):
    from napari_medimp.core.training_run import TrainConfig, batch_plan

    items, _ = cohort_items(cohort)
    train, val = split_by_patient(items, 0.34, seed=1)
    plan = batch_plan(TrainConfig(cohort=str(cohort), batch_size=len(train) + 1, val_fraction=0.34, seed=1))
    assert (plan.train_exams, plan.val_exams) == (len(train), len(val))
    assert (plan.train_patients, plan.val_patients) == (2, 1)
    assert plan.steps_per_epoch == 0 and f"make no batch of {len(train) + 1}" in plan.problem()
    assert batch_plan(TrainConfig(cohort=str(cohort), batch_size=2, val_fraction=0.34,
                                  seed=1)).steps_per_epoch == len(train) // 2
