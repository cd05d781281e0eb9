"""Tests for src_train.losses and src_train.distributed: InfoNCE, gathered negatives, exact accumulation."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from src_train.distributed import all_reduce_gradients, gather_features, rank_and_world
from src_train.losses import ContrastiveLoss, accumulated_step, clip_loss

N_PAIRS, DIM, WORLD = 8, 6, 2
VOCAB = [f"word{i}" for i in range(N_PAIRS)]


# ---------------------------------------------------------------------------------------------- clip_loss


def test_clip_loss_hand_computed_3x3():
    r = 1 / math.sqrt(2)
    image = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1]])
    text = torch.tensor([[1.0, 0, 0], [r, r, 0], [0, 0, 1]])
    # cos(image_i, text_j) = [[1, r, 0], [0, r, 0], [0, 0, 1]]; scale 2 -> logits 2 * cos
    e, s = math.exp, math.sqrt(2)
    image_to_text = [
        -2 + math.log(e(2) + e(s) + 1),  # row 0, target 2
        -s + math.log(1 + e(s) + 1),  # row 1, target sqrt(2)
        -2 + math.log(1 + 1 + e(2)),  # row 2, target 2
    ]
    text_to_image = [  # columns of the cosine matrix
        -2 + math.log(e(2) + 1 + 1),
        -s + math.log(e(s) + e(s) + 1),
        -2 + math.log(1 + 1 + e(2)),
    ]
    expected = 0.5 * (sum(image_to_text) / 3 + sum(text_to_image) / 3)
    got = clip_loss(image, text, torch.tensor(2.0))
    assert got.item() == pytest.approx(expected, abs=1e-6)
    assert clip_loss(image, text, 2.0).item() == pytest.approx(expected, abs=1e-6)
    assert ContrastiveLoss()(image, text, torch.tensor(2.0)).item() == pytest.approx(expected, abs=1e-6)


def test_clip_loss_is_symmetric_and_small_for_matching_pairs():
    x = F.normalize(torch.randn(5, 4, generator=torch.Generator().manual_seed(0)), dim=-1)
    y = F.normalize(torch.randn(5, 4, generator=torch.Generator().manual_seed(1)), dim=-1)
    assert clip_loss(x, y, 10.0).item() == pytest.approx(clip_loss(y, x, 10.0).item(), abs=1e-6)
    assert clip_loss(x, x, 100.0).item() < clip_loss(x, y, 100.0).item()


def test_gather_features_single_process_is_identity():
    a, b = torch.randn(3, 4), torch.randn(3, 5)
    ga, gb = gather_features(a, b)
    assert ga is a and gb is b
    assert rank_and_world() == (0, 1)
    with pytest.raises(ValueError, match="differ"):
        gather_features(a, torch.randn(2, 5))


# ------------------------------------------------------------------------------------------ distributed


class ToyCLIP(nn.Module):
    """Minimal model with MedimpCLIP's encode_image / encode_text / clamped_logit_scale."""

    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Linear(8, DIM)
        self.embedding = nn.Embedding(len(VOCAB), 5)
        self.text = nn.Linear(5, DIM)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image(images.flatten(1)), dim=-1)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        ids = torch.tensor([VOCAB.index(t) for t in texts])
        return F.normalize(self.text(self.embedding(ids)), dim=-1)

    def clamped_logit_scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(0.0, math.log(100.0))


def _fixed_features() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    image = F.normalize(torch.randn(N_PAIRS, DIM, generator=g), dim=-1)
    text = F.normalize(torch.randn(N_PAIRS, DIM, generator=g), dim=-1)
    return image, text, torch.tensor(7.0)


def _toy_batch() -> tuple[torch.Tensor, list[str]]:
    images = torch.randn(N_PAIRS, 1, 2, 2, 2, generator=torch.Generator().manual_seed(7))
    return images, list(reversed(VOCAB))


def _toy_model() -> ToyCLIP:
    torch.manual_seed(1)
    return ToyCLIP()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, init_method: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        n = N_PAIRS // world
        rows = slice(rank * n, (rank + 1) * n)
        image_all, text_all, scale = _fixed_features()
        out: dict[str, object] = {"rank_and_world": rank_and_world()}

        # ContrastiveLoss (local loss, differentiable gather)
        image = image_all[rows].clone().requires_grad_()
        text = text_all[rows].clone().requires_grad_()
        s = scale.clone().requires_grad_()
        loss = ContrastiveLoss()(image, text, s)
        loss.backward()
        out.update(loss=loss.detach(), image_grad=image.grad, text_grad=text.grad, scale_grad=s.grad)

        # the same local loss on detached copies with the local tensors re-inserted
        image = image_all[rows].clone().requires_grad_()
        text = text_all[rows].clone().requires_grad_()
        all_image, all_text = gather_features(image, text, sync_grads=False)
        assert torch.equal(all_image.detach(), image_all) and torch.equal(all_text.detach(), text_all)
        labels = torch.arange(n) + rank * n
        loss = 0.5 * (
            F.cross_entropy(scale * image @ all_text.T, labels)
            + F.cross_entropy(scale * text @ all_image.T, labels)
        )
        loss.backward()
        out.update(detached_loss=loss.detach(), detached_image_grad=image.grad)

        # accumulated_step on this rank's half (2 micro-batches) + gradient averaging
        model = _toy_model()
        images, texts = _toy_batch()
        out["acc_loss"] = accumulated_step(model, images[rows], texts[rows], micro_batch=2)
        all_reduce_gradients(model)
        out["acc_grads"] = {k: p.grad.clone() for k, p in model.named_parameters()}

        # unequal local batches are refused on every rank
        try:
            gather_features(torch.zeros(rank + 1, 3), torch.zeros(rank + 1, 3))
            out["unequal_raises"] = False
        except ValueError:
            out["unequal_raises"] = True
        torch.save(out, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("ddp")
    init_method = f"tcp://127.0.0.1:{_free_port()}"
    mp.spawn(_worker, args=(WORLD, init_method, str(out_dir)), nprocs=WORLD, join=True)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _single_process_reference() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    image_all, text_all, scale = _fixed_features()
    image, text, s = (t.clone().requires_grad_() for t in (image_all, text_all, scale))
    loss = clip_loss(image, text, s)
    loss.backward()
    return loss.detach(), image.grad, text.grad, s.grad


def test_distributed_loss_mean_equals_single_process(ddp_results):
    full_loss, *_ = _single_process_reference()
    assert [r["rank_and_world"] for r in ddp_results] == [(0, WORLD), (1, WORLD)]
    mean_loss = torch.stack([r["loss"] for r in ddp_results]).mean()
    torch.testing.assert_close(mean_loss, full_loss, atol=1e-6, rtol=0)


def test_distributed_gradients_equal_single_process(ddp_results):
    """Rank r's feature gradient / world (DDP's averaging) = rows of the single-process gradient."""
    _, image_grad, text_grad, scale_grad = _single_process_reference()
    n = N_PAIRS // WORLD
    for rank, r in enumerate(ddp_results):
        rows = slice(rank * n, (rank + 1) * n)
        torch.testing.assert_close(r["image_grad"] / WORLD, image_grad[rows], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(r["text_grad"] / WORLD, text_grad[rows], atol=1e-6, rtol=1e-5)
    mean_scale_grad = torch.stack([r["scale_grad"] for r in ddp_results]).mean()
    torch.testing.assert_close(mean_scale_grad, scale_grad, atol=1e-6, rtol=1e-5)


def test_detached_gather_misses_cross_rank_gradients(ddp_results):
    """Same loss value, but the local loss on detached copies loses the other ranks' negatives' terms."""
    full_loss, image_grad, *_ = _single_process_reference()
    mean_loss = torch.stack([r["detached_loss"] for r in ddp_results]).mean()
    torch.testing.assert_close(mean_loss, full_loss, atol=1e-6, rtol=0)
    n = N_PAIRS // WORLD
    for rank, r in enumerate(ddp_results):
        rows = slice(rank * n, (rank + 1) * n)
        assert not torch.allclose(r["detached_image_grad"] / WORLD, image_grad[rows], atol=1e-4)
        assert not torch.allclose(r["detached_image_grad"], image_grad[rows], atol=1e-4)


def test_distributed_accumulation_equals_single_process_full_batch(ddp_results):
    model = _toy_model()
    images, texts = _toy_batch()
    loss = clip_loss(model.encode_image(images), model.encode_text(texts), model.clamped_logit_scale().exp())
    loss.backward()
    assert sum(r["acc_loss"] for r in ddp_results) / WORLD == pytest.approx(loss.item(), abs=1e-6)
    for name, p in model.named_parameters():
        for r in ddp_results:
            torch.testing.assert_close(r["acc_grads"][name], p.grad, atol=1e-6, rtol=1e-4)


def test_unequal_local_batches_raise(ddp_results):
    assert all(r["unequal_raises"] for r in ddp_results)


# ----------------------------------------------------------------------------------- gradient accumulation

PROMPTS = [
    "kidney graft, creatinine 120",
    "graft at day fifteen, stable function",
    "poor function",
    "creatinine 250 umol/l at three months after transplantation",
    "delayed graft function, dialysis",
    "donor aged 61, cold ischaemia 14 h",
]


@pytest.fixture(scope="module")
def clip_model():
    from napari_medimp.core.models import ModelConfig, build_model

    torch.manual_seed(0)
    config = ModelConfig(
        image_encoder="clip_resnet_tiny", input_size=(16, 24, 24), embed_dim=32, text_trainable_layers=1
    )
    model = build_model(config)
    with torch.no_grad():  # the zero-initialised last BN of each block would hide the residual branches
        for module in model.modules():
            if isinstance(module, nn.BatchNorm3d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model


@pytest.fixture
def volumes() -> torch.Tensor:
    return torch.randn(len(PROMPTS), 1, 16, 24, 24, generator=torch.Generator().manual_seed(3))


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {k: p for k, p in model.named_parameters() if p.requires_grad}


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    """Gradients of the trainable parameters that got one (BERT's pooler is unused by mean pooling)."""
    return {k: p.grad.clone() for k, p in _trainable(model).items() if p.grad is not None}


def _full_batch_grads(model, images, texts) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    image_features, text_features, scale = model(images, texts)
    loss = clip_loss(image_features, text_features, scale)
    loss.backward()
    return loss.item(), _grads(model)


def _assert_grads_close(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    for name in expected:
        # float32 sums taken in another order: differences scale with the tensor, not with each element
        scale = float(expected[name].abs().max())
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=max(1e-6, 1e-3 * scale), msg=name)


@pytest.mark.parametrize("micro_batch", [2, 4])
def test_accumulated_step_equals_full_batch(clip_model, volumes, micro_batch):
    """Eval mode (BatchNorm on running stats, no dropout): same loss and every gradient as one backward."""
    model = clip_model.eval()
    full_loss, expected = _full_batch_grads(model, volumes, PROMPTS)
    assert "logit_scale" in expected and any(k.startswith("text_encoder.") for k in expected)
    assert all(g.abs().sum() > 0 for g in expected.values())

    model.zero_grad(set_to_none=True)
    loss = accumulated_step(model, volumes, PROMPTS, micro_batch=micro_batch, loss_fn=clip_loss)
    assert loss == pytest.approx(full_loss, rel=1e-5)
    _assert_grads_close(_grads(model), expected)


def test_naive_divided_accumulation_differs(clip_model, volumes):
    """The reference code's accumulation (loss per micro-batch / k) sees fewer negatives: other gradients."""
    model = clip_model.eval()
    _, expected = _full_batch_grads(model, volumes, PROMPTS)
    model.zero_grad(set_to_none=True)
    k = 3
    for start in range(0, len(PROMPTS), 2):
        image_features, text_features, scale = model(volumes[start : start + 2], PROMPTS[start : start + 2])
        (clip_loss(image_features, text_features, scale) / k).backward()
    naive = _grads(model)
    differing = [
        name for name in expected if not torch.allclose(naive[name], expected[name], rtol=1e-4, atol=1e-6)
    ]
    assert "logit_scale" in differing and "image_projection.net.weight" in differing
    assert len(differing) > len(expected) // 2


def test_accumulated_step_train_mode_updates_running_stats_once(clip_model, volumes):
    """Train mode (BatchNorm batch statistics, dropout): equals the backward of the micro-batched forward,
    running statistics updated once per sample, dropout masks replayed."""
    model = clip_model.train()
    initial = {
        k: v.clone() for k, v in model.state_dict().items() if "running" in k or "batches_tracked" in k
    }
    assert initial

    torch.manual_seed(11)
    model.zero_grad(set_to_none=True)
    chunks = [(0, 2), (2, 4), (4, 6)]
    images_parts, texts_parts = [], []
    for a, b in chunks:  # same order as accumulated_step: images then texts, micro-batch by micro-batch
        images_parts.append(model.encode_image(volumes[a:b]))
        texts_parts.append(model.encode_text(PROMPTS[a:b]))
    loss = clip_loss(torch.cat(images_parts), torch.cat(texts_parts), model.clamped_logit_scale().exp())
    loss.backward()
    expected_grads = _grads(model)
    expected_stats = {k: v.clone() for k, v in model.state_dict().items() if k in initial}
    expected_rng = torch.get_rng_state()

    model.load_state_dict(initial, strict=False)
    torch.manual_seed(11)
    model.zero_grad(set_to_none=True)
    acc_loss = accumulated_step(model, volumes, PROMPTS, micro_batch=2, loss_fn=clip_loss)
    assert acc_loss == pytest.approx(loss.item(), rel=1e-5)
    stats = {k: v for k, v in model.state_dict().items() if k in initial}
    for k in initial:
        torch.testing.assert_close(stats[k], expected_stats[k], rtol=1e-5, atol=1e-7, msg=k)
        if k.endswith("num_batches_tracked"):
            assert int(stats[k]) == int(initial[k]) + len(chunks)
    _assert_grads_close(_grads(model), expected_grads)
    assert torch.equal(torch.get_rng_state(), expected_rng)
    model.eval()


def test_accumulated_step_validates_inputs(clip_model, volumes):
    with pytest.raises(ValueError, match="texts"):
        accumulated_step(clip_model, volumes, PROMPTS[:3], micro_batch=2)
    with pytest.raises(ValueError, match="micro_batch"):
        accumulated_step(clip_model, volumes, PROMPTS, micro_batch=0)
