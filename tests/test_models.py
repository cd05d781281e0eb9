"""Models: 3D image encoders, text encoder (pooling, freezing), the MEDIMP CLIP model and its config."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from torch import nn

from napari_medimp.core.models import (
    LOGIT_SCALE_INIT,
    AntiAliasPool3d,
    Bottleneck3D,
    ClipResNet3D,
    MedimpCLIP,
    ModelConfig,
    TextEncoder,
    available_image_encoders,
    build_image_encoder,
    build_model,
    clip_resnet50_3d,
    count_flops,
    feature_grid,
    find_transformer_layers,
    freeze_all_but_last,
    pool_hidden_states,
    read_revision,
)

SMALL = (16, 24, 32)
SENTENCES = [
    "The GFR is low.",
    "Two weeks after transplantation, the donor age is high and the creatinine is unstable.",
]
#: training prompts with a repeat (the cache keeps one entry per distinct text)
TEXTS = [*SENTENCES, "First year after transplant; glomerular filtration rate is medium.", SENTENCES[0]]


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    enc = TextEncoder.from_pretrained(None, pooling="mean")
    enc.eval()
    return enc


def _layer_index(name: str) -> int | None:
    m = re.search(r"(?:^|\.)layer\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def _tiny_bert(n_layers: int = 12) -> nn.Module:
    from transformers import BertConfig, BertModel

    cfg = BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=n_layers,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    return BertModel(cfg)


# ---------------------------------------------------------------- image encoders


@pytest.mark.parametrize("name", available_image_encoders())
def test_registry_encoders_output_shape(name):
    kwargs = {"width": 8, "layers": (1, 1, 1, 1)} if name == "clip_resnet50_3d" else {}
    if name.startswith("monai"):
        kwargs = {"widen_factor": 0.125}
    enc = build_image_encoder(name, in_channels=2, output_dim=24, input_size=SMALL, **kwargs).eval()
    with torch.no_grad():
        out = enc(torch.randn(2, 2, *SMALL))
    assert out.shape == (2, 24)
    assert enc.output_dim == 24
    stage = enc.get_submodule(enc.gradcam_layer)
    assert any(isinstance(m, nn.Conv3d) for m in stage.modules())


def test_unknown_encoder_name():
    with pytest.raises(ValueError, match="available"):
        build_image_encoder("resnet9000")


def test_paper_clip_resnet50_3d_is_medimps_encoder():
    """MEDIMP's figures at its input (96x144x192 in NIfTI order = (z, y, x) 192x144x96 here): first
    convolution stride (1, 2, 2) in its order, feature grid 6x4x6, 61.2 M parameters, 403.1 GFLOP."""
    enc = clip_resnet50_3d()
    n_params = sum(p.numel() for p in enc.parameters())
    assert n_params / 1e6 == pytest.approx(61.2, abs=0.05)
    assert enc.output_dim == 1024
    assert enc.grid == (6, 4, 6) == feature_grid((192, 144, 96), (2, 2, 1), ceil_mode=False)
    assert enc.attnpool.positional_embedding.shape == (6 * 4 * 6 + 1, 2048)
    flops = count_flops(enc, (1, 1, 192, 144, 96))
    assert flops / 1e9 == pytest.approx(403.1, rel=0.02)
    assert [len(s) for s in (enc.layer1, enc.layer2, enc.layer3, enc.layer4)] == [3, 4, 6, 3]
    # the registry's "clip_resnet50_3d" (what the paper preset builds) is the same network
    same = build_image_encoder("clip_resnet50_3d", output_dim=1024)
    assert same.grid == enc.grid and same.conv1.stride == (2, 2, 1)
    # striding every axis would halve the work: the first release's encoder
    assert count_flops(clip_resnet50_3d(stem_stride=2), (1, 1, 192, 144, 96)) / flops == pytest.approx(0.5, abs=0.01)

    # anti-aliasing: the only strided convolution is the stem's first one, full resolution along x
    strided = [name for name, m in enc.named_modules() if isinstance(m, nn.Conv3d) and m.stride != (1, 1, 1)]
    assert strided == ["conv1"]
    assert enc.conv1.stride == (2, 2, 1)
    strided_blocks = [m for m in enc.modules() if isinstance(m, Bottleneck3D) and m.stride > 1]
    assert len(strided_blocks) == 3
    for block in strided_blocks:
        assert isinstance(block.avgpool, nn.AvgPool3d)
        assert isinstance(block.downsample[0], nn.AvgPool3d)  # shortcut: pool, then 1x1x1 conv + BN
        assert isinstance(block.downsample[1], nn.Conv3d) and block.downsample[1].kernel_size == (1, 1, 1)
        assert isinstance(block.downsample[2], nn.BatchNorm3d)


def test_feature_grid_matches_network_at_paper_size():
    enc = build_image_encoder("clip_resnet_tiny", input_size=(192, 144, 96)).eval()
    assert feature_grid((192, 144, 96)) == (6, 5, 3) == enc.grid
    with torch.no_grad():
        feats = enc.forward_features(torch.randn(1, 1, 192, 144, 96))
    assert tuple(feats.shape[2:]) == (6, 5, 3)


@pytest.mark.slow
def test_paper_clip_resnet50_3d_forward_full_input():
    enc = clip_resnet50_3d().eval()
    with torch.no_grad():
        feats = enc.forward_features(torch.randn(1, 1, 192, 144, 96))
        out = enc.attnpool(feats)
    assert feats.shape[2:] == (6, 4, 6) and out.shape == (1, 1024)


def test_count_flops_by_hand_for_one_convolution_and_one_linear():
    conv = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 5 * 6 * 7, 10))
    # conv: 2 x (3*3*3*2) multiply-adds per output voxel x 4 x 5 x 6 x 7 outputs; linear: 2 x 840 x 10
    assert count_flops(conv, (1, 2, 5, 6, 7)) == 2 * 27 * 2 * 4 * 210 + 2 * 840 * 10


def test_positional_embedding_interpolation():
    enc = ClipResNet3D((1, 1, 1, 1), output_dim=16, width=8, input_size=(32, 48, 64)).eval()
    assert enc.grid == (1, 2, 2)
    pool = enc.attnpool
    assert pool.positional_embedding_for((1, 2, 2)) is pool.positional_embedding
    assert pool.positional_embedding_for((2, 3, 4)).shape == (1 + 24, enc.feature_dim)
    with torch.no_grad():
        a = enc(torch.randn(2, 1, 32, 48, 64))
        b = enc(torch.randn(2, 1, 64, 96, 128))  # grid 2x3x4: interpolated embedding
    assert a.shape == b.shape == (2, 16)
    assert torch.isfinite(b).all()


def test_antialias_pool_handles_short_axes():
    x = torch.arange(3.0).reshape(1, 1, 3, 1, 1)
    y = AntiAliasPool3d(2)(x)
    assert y.shape == (1, 1, 2, 1, 1)
    assert torch.allclose(y.flatten(), torch.tensor([0.5, 2.0]))  # partial window: mean of valid voxels


# ---------------------------------------------------------------- text encoder: freezing


@pytest.mark.parametrize("n", [0, 1, 2, 6])
def test_freeze_all_but_last_minilm(minilm, n):
    minilm.freeze_all_but_last(n)
    assert minilm.num_layers == 6
    for name, p in minilm.transformer.named_parameters():
        idx = _layer_index(name)
        if idx is not None:
            expected = idx >= 6 - n
        else:  # embeddings, and the pooler that masked pooling never uses
            expected = False
        assert p.requires_grad == expected, (n, name)
    assert any(name.startswith("pooler.") for name, _ in minilm.transformer.named_parameters())


def test_freeze_12_layers_is_not_fooled_by_substrings():
    model = _tiny_bert(12)
    freeze_all_but_last(model, 2)
    trainable_layers = {
        _layer_index(n)
        for n, p in model.named_parameters()
        if p.requires_grad and _layer_index(n) is not None
    }
    assert trainable_layers == {10, 11}
    layer1 = find_transformer_layers(model)[1]
    assert not any(p.requires_grad for p in layer1.parameters())
    # the reference code's trap: "layer.1" is a substring of layer.10 and layer.11 names
    assert any("layer.1" in n for n, p in model.named_parameters() if p.requires_grad)
    assert not any(p.requires_grad for p in model.pooler.parameters())
    assert not any(p.requires_grad for p in model.embeddings.parameters())


def test_find_layers_generic_structure():
    from transformers import DistilBertConfig, DistilBertModel

    model = DistilBertModel(DistilBertConfig(vocab_size=64, dim=16, n_layers=3, n_heads=2, hidden_dim=32))
    assert find_transformer_layers(model) is model.transformer.layer
    freeze_all_but_last(model, 1)
    assert [any(p.requires_grad for p in layer.parameters()) for layer in model.transformer.layer] == [
        False,
        False,
        True,
    ]

    class Custom(nn.Module):  # no known attribute path: found through config.num_hidden_layers
        def __init__(self):
            super().__init__()
            self.config = type("Cfg", (), {"num_hidden_layers": 4, "hidden_size": 8})()
            self.embed = nn.Embedding(10, 8)
            self.blocks = nn.ModuleList(nn.Linear(8, 8) for _ in range(4))
            self.heads = nn.ModuleList(nn.Linear(8, 8) for _ in range(2))

    custom = Custom()
    assert find_transformer_layers(custom) is custom.blocks


def test_freeze_rejects_negative(minilm):
    with pytest.raises(ValueError):
        minilm.freeze_all_but_last(-1)


# ---------------------------------------------------------------- text encoder: pooling


def test_mean_pooling_is_masked_mean(minilm):
    batch = minilm.tokenize(SENTENCES)
    mask = batch["attention_mask"]
    assert (mask.sum(1)[0] < mask.sum(1)[1]).item()  # the first sentence is padded
    with torch.no_grad():
        hidden = minilm.transformer(**batch).last_hidden_state
        pooled = minilm.encode(SENTENCES)
        alone = minilm.encode(SENTENCES[:1])
    for i in range(len(SENTENCES)):
        n_real = int(mask[i].sum())
        assert torch.allclose(pooled[i], hidden[i, :n_real].mean(0), atol=1e-5)
    # padding must not change the embedding of the shorter sentence
    assert torch.allclose(alone[0], pooled[0], atol=1e-4)
    assert pooled.shape == (2, minilm.hidden_size) == (2, 384)


def test_cls_pooling_returns_first_token(minilm):
    batch = minilm.tokenize(SENTENCES)
    with torch.no_grad():
        hidden = minilm.transformer(**batch).last_hidden_state
    assert torch.equal(pool_hidden_states(hidden, batch["attention_mask"], "cls"), hidden[:, 0])
    with pytest.raises(ValueError):
        pool_hidden_states(hidden, batch["attention_mask"], "argmax")


def test_text_encoder_metadata(minilm, tmp_path):
    assert minilm.revision == "local"
    assert minilm.name_or_path
    assert minilm.hidden_size == 384
    sha = "0123456789abcdef0123456789abcdef01234567"
    (tmp_path / "config.json").write_text(json.dumps({"_commit_hash": sha}))
    assert read_revision(tmp_path) == sha
    snap = tmp_path / "snapshots" / sha[::-1]
    snap.mkdir(parents=True)
    assert read_revision(snap) == sha[::-1]
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text("{}")
    assert read_revision(other) == "local"
    (other / "README.md").write_text("weights at revision: deadbeef1234\n")
    assert read_revision(other) == "deadbeef1234"
    with pytest.raises(FileNotFoundError):
        TextEncoder.from_pretrained(tmp_path / "missing")


# ---------------------------------------------------------------- CLIP model and config


def _tiny_config(**overrides) -> ModelConfig:
    kw = dict(image_encoder="clip_resnet_tiny", input_size=SMALL, embed_dim=32, in_channels=2)
    kw.update(overrides)
    return ModelConfig(**kw)


@pytest.fixture(scope="module")
def tiny_model(minilm) -> MedimpCLIP:
    cfg = _tiny_config()
    image = build_image_encoder(cfg.image_encoder, in_channels=2, output_dim=32, input_size=SMALL)
    return MedimpCLIP(image, minilm, embed_dim=32, text_projection="mlp", config=cfg).eval()


def test_clip_embeddings_unit_norm(tiny_model):
    with torch.no_grad():
        img, txt, scale = tiny_model(torch.randn(3, 2, *SMALL), SENTENCES)
        tok = tiny_model.encode_text(tiny_model.text_encoder.tokenize(SENTENCES))
    assert img.shape == (3, 32) and txt.shape == (2, 32)
    assert torch.allclose(img.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(txt.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(tok, txt, atol=1e-5)
    sim = tiny_model.similarity(img, txt)
    assert sim.shape == (3, 2) and sim.abs().max() <= 1 + 1e-5
    assert torch.allclose(tiny_model.logits(img, txt), scale * sim)
    assert tiny_model.gradcam_layer == "image_encoder.layer4"


def test_logit_scale_init_and_clamp(tiny_model):
    assert math.isclose(LOGIT_SCALE_INIT, math.log(1 / 0.07))
    assert math.isclose(tiny_model.logit_scale.item(), LOGIT_SCALE_INIT, rel_tol=1e-6)
    x = torch.randn(1, 2, *SMALL)
    try:
        with torch.no_grad():
            tiny_model.logit_scale.fill_(-3.0)
            assert tiny_model(x, SENTENCES[:1])[2].item() == pytest.approx(1.0)
            tiny_model.logit_scale.fill_(10.0)
            assert tiny_model(x, SENTENCES[:1])[2].item() == pytest.approx(100.0)
            tiny_model.clamp_logit_scale_()
            assert tiny_model.logit_scale.item() == pytest.approx(math.log(100))
            tiny_model.logit_scale.fill_(-1.0)
            tiny_model.clamp_logit_scale_()
            assert tiny_model.logit_scale.item() == 0.0
    finally:
        with torch.no_grad():
            tiny_model.logit_scale.fill_(LOGIT_SCALE_INIT)


def test_config_roundtrip_rebuilds_identical_architecture():
    cfg = _tiny_config(
        image_encoder_kwargs={"layers": (1, 2, 1, 1)},
        image_projection="mlp",
        text_pooling="cls",
        text_trainable_layers=1,
    )
    d = json.loads(json.dumps(cfg.to_dict()))
    cfg2 = ModelConfig.from_dict(d)
    assert cfg2 == cfg
    a = build_model(cfg)
    b = build_model(cfg2, load_text_weights=False)
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(sa[k].shape == sb[k].shape for k in sa)
    assert b.text_encoder.pooling == "cls"
    assert a.config.text_revision == "local" and cfg.text_revision is None
    assert [p.requires_grad for p in a.parameters()] == [p.requires_grad for p in b.parameters()]
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict({**d, "surprise": 1})


def test_build_model_monai_encoder():
    cfg = ModelConfig(
        image_encoder="monai_resnet10",
        image_encoder_kwargs={"widen_factor": 0.125},
        input_size=SMALL,
        embed_dim=16,
    )
    model = build_model(cfg).eval()
    with torch.no_grad():
        feats = model.encode_image(torch.randn(2, 1, *SMALL))
    assert feats.shape == (2, 16)
    assert model.get_submodule(model.gradcam_layer) is model.image_encoder.backbone.layer4


# ---------------------------------------------------------------- text encoder: frozen layers cached


def _no_dropout(encoder: TextEncoder) -> None:
    for module in encoder.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


@pytest.mark.parametrize("trainable", [1, 3, 0])
def test_cached_frozen_layers_give_the_plain_features_and_gradients(trainable):
    enc = TextEncoder.from_pretrained(None, pooling="mean", trainable_layers=trainable)
    enc.eval()
    plain = enc.encode(TEXTS).detach()
    assert enc.cache_frozen_layers() and enc.caches_frozen_layers
    enc.train()
    _no_dropout(enc)  # training mode without dropout: the cached path must equal the plain forward
    cached = enc.encode(TEXTS)
    torch.testing.assert_close(cached, plain, atol=1e-5, rtol=1e-5)
    assert len(enc._prefix.store) == len(set(TEXTS))
    if trainable == 0:  # the whole tower is fixed: nothing of it learns (the projection above it does)
        assert not cached.requires_grad
        return
    cached.sum().backward()
    layers = enc.transformer.encoder.layer
    for i, layer in enumerate(layers):
        got = any(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())
        assert got == (i >= 6 - trainable), i


def test_the_cache_is_used_and_bounded():
    enc = TextEncoder.from_pretrained(None, pooling="mean", trainable_layers=1)
    assert enc.cache_frozen_layers(max_texts=2)
    enc.train()
    _no_dropout(enc)
    first = enc.encode(TEXTS[:1]).detach()
    for key in enc._prefix.store:  # a changed cache entry changes the output: the entry is what is used
        enc._prefix.store[key] = enc._prefix.store[key] + 1.0
    assert not torch.allclose(enc.encode(TEXTS[:1]), first)
    enc.encode(TEXTS[:3])
    assert len(enc._prefix.store) == 2  # the oldest text left the cache
    enc.eval()  # evaluation never reads the cache
    torch.testing.assert_close(enc.encode(TEXTS[:1]), first, atol=1e-5, rtol=1e-5)


def test_no_cache_for_a_fully_trainable_encoder_and_a_refreeze_drops_it():
    enc = TextEncoder.from_pretrained(None, pooling="mean")
    assert not enc.cache_frozen_layers()  # nothing frozen
    enc.freeze_all_but_last(2)
    assert enc.cache_frozen_layers()
    enc.freeze_all_but_last(4)
    assert not enc.caches_frozen_layers  # other layers frozen now: the cache would be wrong


def test_text_weights_are_read_from_safetensors_only(tmp_path):
    """A text-model folder holding only a pickled pytorch_model.bin is refused before anything is loaded;
    the pickle is never opened."""
    import shutil

    from napari_medimp.core.models.text import resolve_text_model_path

    source = resolve_text_model_path(None)
    folder = tmp_path / "text"
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("model.safetensors"))
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04 not a model, and never unpickled")
    with pytest.raises(FileNotFoundError, match="no model.safetensors; text-model weights are read from safetensors"):
        TextEncoder.from_pretrained(folder)
