"""Model files: safetensors + JSON card; refusal of pickles, tampering and foreign architectures."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_medimp.core.checkpoint import (
    ModelFileError,
    PrognosisHead,
    load_model,
    model_paths,
    read_card,
    save_model,
)
from napari_medimp.core.models import ModelConfig, build_model
from napari_medimp.core.prompts import TEMPLATE_VERSION

INPUT = (16, 24, 32)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    config = ModelConfig(image_encoder="clip_resnet_tiny", input_size=INPUT, embed_dim=32,
                         text_trainable_layers=1)
    return build_model(config).eval()


def _head(n=32, horizon="2y"):
    rng = np.random.default_rng(0)
    return PrognosisHead(horizon, mean=rng.normal(size=n), scale=rng.uniform(0.5, 2, n),
                         coef=rng.normal(size=n), intercept=-0.3, features="mean exam embedding")


def _save(model, path, **kw):
    return save_model(path, model, preprocessing={"version": 1, "input_size": list(INPUT)},
                      prompt_template_version=TEMPLATE_VERSION, **kw)


def _evil_pickle(marker: Path) -> bytes:
    class Evil:
        def __reduce__(self):
            return (Path.write_text, (marker, "code ran"))

    return pickle.dumps(Evil())


def test_round_trip_gives_identical_embeddings_and_a_complete_card(tiny_model, tmp_path):
    heads = {"2y": _head(), "3y": _head(horizon="3y")}
    weights = _save(tiny_model, tmp_path / "demo", training={"patients": 3}, metrics={"auc_2y": 0.7},
                    prognosis=heads)
    card = read_card(weights)
    assert card["weights"]["sha256"] and card["prompt_template_version"] == TEMPLATE_VERSION
    assert card["architecture"]["image_encoder"] == "clip_resnet_tiny"
    assert card["text_model"]["revision"] and card["licence"]
    assert set(card["prognosis"]) == {"2y", "3y"}
    # frozen MiniLM layers are not copied into the file
    assert weights.stat().st_size < 20 * 2**20

    loaded = load_model(weights)
    x = torch.randn(2, 1, *INPUT)
    texts = ["The estimated glomerular filtration rate is low.", "The donor age is high."]
    with torch.no_grad():
        np.testing.assert_allclose(loaded.model.encode_image(x), tiny_model.encode_image(x), atol=1e-6)
        np.testing.assert_allclose(loaded.model.encode_text(texts), tiny_model.encode_text(texts), atol=1e-6)
    features = np.random.default_rng(1).normal(size=(4, 32))
    np.testing.assert_allclose(loaded.prognosis["2y"].predict_proba(features), heads["2y"].predict_proba(features))


def test_prognosis_head_matches_hand_computation():
    head = PrognosisHead("2y", mean=[1.0, 2.0], scale=[2.0, 4.0], coef=[0.5, -1.0], intercept=0.25)
    z = ((3.0 - 1.0) / 2.0) * 0.5 + ((6.0 - 2.0) / 4.0) * -1.0 + 0.25  # = -0.25
    assert head.predict_proba([[3.0, 6.0]])[0] == pytest.approx(1 / (1 + np.exp(-z)))
    with pytest.raises(ValueError, match="expects 2 features"):
        head.predict_proba([[1.0, 2.0, 3.0]])


@pytest.mark.parametrize("name", ["model.safetensors", "model.pt"])
def test_pickles_are_refused_and_never_run(tiny_model, tmp_path, name):
    weights = _save(tiny_model, tmp_path / "model")
    marker = tmp_path / "pwned.txt"
    payload = _evil_pickle(marker)
    target = tmp_path / name
    if name.endswith(".pt"):
        torch.save({"state": payload}, target)  # zip container, as torch.save writes
        weights.write_bytes(target.read_bytes())
    else:
        weights.write_bytes(payload)
    with pytest.raises(ModelFileError, match="pickle"):
        load_model(tmp_path / "model")
    assert not marker.exists()


def test_tampered_weights_are_detected(tiny_model, tmp_path):
    weights = _save(tiny_model, tmp_path / "model")
    blob = bytearray(weights.read_bytes())
    blob[-5] ^= 0xFF
    weights.write_bytes(bytes(blob))
    with pytest.raises(ModelFileError, match="modified after the card was written"):
        load_model(weights)


def test_architecture_mismatch_is_one_sentence(tiny_model, tmp_path):
    weights = _save(tiny_model, tmp_path / "model")
    _, card_path = model_paths(weights)
    card = json.loads(card_path.read_text())
    card["architecture"]["embed_dim"] = 48
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelFileError) as info:
        load_model(weights)
    message = str(info.value)
    assert "different architecture" in message and "\n" not in message
    assert "file (32," in message and "model (48," in message


def test_missing_or_foreign_card(tiny_model, tmp_path):
    weights = _save(tiny_model, tmp_path / "model")
    _, card_path = model_paths(weights)
    card_path.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ModelFileError, match="is not a napari-medimp-model card"):
        load_model(weights)
    card_path.unlink()
    with pytest.raises(ModelFileError, match="card .JSON. not found"):
        load_model(weights)


def test_newer_card_format_asks_for_an_update(tiny_model, tmp_path):
    weights = _save(tiny_model, tmp_path / "model")
    _, card_path = model_paths(weights)
    card = json.loads(card_path.read_text())
    card["format_version"] = 99
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelFileError, match="update napari-medimp"):
        read_card(weights)


def test_safetensors_whose_header_length_starts_with_0x80_is_not_taken_for_a_pickle(tmp_path):
    """A header of 128 + 256 k bytes makes the file's first byte 0x80, as a pickle's."""
    import struct

    from safetensors.torch import save_file

    from napari_medimp.core.checkpoint import check_safetensors

    path = tmp_path / "w.safetensors"
    for pad in range(600):
        save_file({"x": torch.zeros(2)}, str(path), metadata={"pad": "p" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    raw = path.read_bytes()
    assert raw[0] == 0x80 and struct.unpack("<Q", raw[:8])[0] % 256 == 0x80
    assert check_safetensors(path)["__metadata__"]["pad"]
    pickled = tmp_path / "p.safetensors"
    torch.save({"x": torch.zeros(2)}, pickled, _use_new_zipfile_serialization=False)
    assert pickled.read_bytes()[0] == 0x80
    with pytest.raises(ModelFileError, match="pickled"):
        check_safetensors(pickled)


def test_text_weights_hash_is_recorded_and_checked_for_the_default_text_model(tmp_path):
    import json

    from helpers import make_model_file

    from napari_medimp.core.checkpoint import ModelFileError, load_model

    path = make_model_file(tmp_path)
    card_path = path.with_suffix(".json")
    card = json.loads(card_path.read_text())
    if card["text_model"]["frozen_weights_stored"]:
        pytest.skip("this model file stores its text weights")
    assert len(card["text_model"]["base_weights_sha256"]) == 64
    card["text_model"]["base_weights_sha256"] = "0" * 64
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelFileError, match="other text-model weights"):
        load_model(path)


def test_the_demo_model_records_its_text_weights():
    import json

    from napari_medimp.core.checkpoint import _text_base_weights, sha256_file
    from napari_medimp.core.sample import default_model_path

    card = json.loads(default_model_path().with_suffix(".json").read_text())
    assert card["text_model"]["base_weights_sha256"] == sha256_file(_text_base_weights(card["text_model"]["name_or_path"]))


def test_a_pipe_named_as_a_model_file_is_refused_without_blocking(tmp_path):
    import os

    from helpers import make_model_file

    from napari_medimp.core.checkpoint import ModelFileError, load_model

    path = make_model_file(tmp_path)
    weights = path.with_suffix(".safetensors")
    weights.unlink()
    os.mkfifo(weights)
    with pytest.raises(ModelFileError, match="not a regular file"):
        load_model(path)
    card = path.with_suffix(".json")
    card.unlink()
    os.mkfifo(card)
    with pytest.raises(ModelFileError, match="not a regular file"):
        load_model(path)


def _edit_card(weights, edit) -> None:
    _, card_path = model_paths(weights)
    card = json.loads(card_path.read_text())
    edit(card)
    card_path.write_text(json.dumps(card))


@pytest.mark.parametrize(("change", "message"), [
    ({"embed_dim": 10**9}, r"embed_dim must be a whole number from 1 to 16384, got 1000000000"),
    ({"embed_dim": "32"}, r"embed_dim must be a whole number .* got '32'"),
    ({"input_size": [16, 24, 10**6]}, r"input_size\[2\] must be a whole number from 4 to 1024"),
    ({"input_size": 16}, r"input_size must be \(z, y, x\), got 16"),
    ({"image_encoder_kwargs": {"width": 10**6}}, r"image_encoder_kwargs\['width'\] must be a whole number"),
    ({"image_encoder_kwargs": {"layers": list(range(100))}}, r"image_encoder_kwargs\[.layers.\] lists 100 values; at most 16"),
    ({"image_encoder_kwargs": {"width": {"a": 1}}}, r"must be a number, a text, a flag or a list"),
    ({"logit_scale_init": None}, r"logit_scale_init must be a finite number"),
    ({"text_model": ["x"]}, r"text_model must be a text"),
])
def test_card_architecture_is_checked_before_anything_is_built(tiny_model, tmp_path, change, message):
    weights = _save(tiny_model, tmp_path / "model")
    _edit_card(weights, lambda card: card["architecture"].update(change))
    with pytest.raises(ModelFileError, match=r"architecture cannot be rebuilt \(.*" + message):
        load_model(weights)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda c: c.update(prognosis=[1, 2]), r"'prognosis' section is a list, not a mapping"),
    (lambda c: c.update(architecture="resnet"), r"'architecture' section is a str, not a mapping"),
    (lambda c: c["weights"].update(sha256=5), r"weights section has no sha256 text"),
    (lambda c: c.update(training={"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": {"j": {"k": {"l": 1}}}}}}}}}}}}),
     r"nested more than 12 levels deep"),
])
def test_malformed_card_sections_are_named(tiny_model, tmp_path, edit, message):
    weights = _save(tiny_model, tmp_path / "model")
    _edit_card(weights, edit)
    with pytest.raises(ModelFileError, match=message):
        load_model(weights)


def test_a_card_nested_beyond_the_json_reader_is_refused(tiny_model, tmp_path):
    weights = _save(tiny_model, tmp_path / "model")
    _, card_path = model_paths(weights)
    card_path.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(ModelFileError, match="nested too deeply"):
        load_model(weights)


def test_a_malformed_prognosis_head_is_one_message(tiny_model, tmp_path):
    weights = _save(tiny_model, tmp_path / "model", prognosis={"2y": _head()})
    _edit_card(weights, lambda card: card["prognosis"]["2y"].update(threshold="high"))
    with pytest.raises(ModelFileError, match=r"prognosis heads cannot be read \(ValueError"):
        load_model(weights)


def test_an_encoder_larger_than_the_memory_budget_is_refused_before_it_is_built(monkeypatch):
    from napari_medimp.core.memory import BUDGET_ENV, MemoryBudgetError

    monkeypatch.setenv(BUDGET_ENV, "100M")
    config = ModelConfig(image_encoder="clip_resnet50_3d", input_size=(96, 144, 192), embed_dim=512)
    with pytest.raises(MemoryBudgetError, match=r"image encoder clip_resnet50_3d would need 9\d\d\.\d MiB"):  # 4 x 4 B x ~60 M
        build_model(config)


def test_a_card_saved_without_a_name_is_named_after_its_file_not_after_a_head(tmp_path):
    from helpers import make_model_file

    from napari_medimp.core.checkpoint import read_card

    card = read_card(make_model_file(tmp_path, name="graft-model"))  # stored with prognosis heads
    assert card["name"] == "graft-model"


def test_a_model_file_with_non_finite_weights_or_heads_is_refused_naming_the_tensor(tmp_path):
    """Re-saved through the checked writer (so its hashes match) with a NaN in a weight or in a prognosis
    head: loading refuses it instead of giving NaN embeddings and "nan" risks."""
    from helpers import make_heads, make_model_file

    from napari_medimp.core.checkpoint import ModelFileError, load_model

    heads = make_heads()
    heads["clinical/D30/2y"].coef[1] = np.nan
    path = make_model_file(tmp_path, heads=heads, name="nan-head")
    with pytest.raises(ModelFileError, match=r"tensor 'prognosis\.clinical/D30/2y\.coef' holds 1 non-finite"):
        load_model(path)
    loaded = load_model(make_model_file(tmp_path, name="fine"))
    with torch.no_grad():
        next(loaded.model.image_encoder.parameters()).fill_(float("inf"))
    from napari_medimp.core.checkpoint import save_model

    card = loaded.card
    broken = save_model(tmp_path / "inf-weight", loaded.model, preprocessing=card["preprocessing"],
                        prompt_template_version=card["prompt_template_version"], prognosis=loaded.prognosis)
    with pytest.raises(ModelFileError, match=r"tensor 'image_encoder\..*' holds \d+ non-finite value"):
        load_model(broken)


def test_a_model_named_by_the_environment_that_does_not_exist_is_refused(monkeypatch, tmp_path):
    from napari_medimp.core.checkpoint import ModelFileError
    from napari_medimp.core.sample import default_model_path

    monkeypatch.setenv("NAPARI_MEDIMP_MODEL", str(tmp_path / "gone.safetensors"))
    with pytest.raises(ModelFileError, match="set by NAPARI_MEDIMP_MODEL, but there is no such model file"):
        default_model_path()
    monkeypatch.delenv("NAPARI_MEDIMP_MODEL")
    assert default_model_path().name == "medimp-demo.safetensors"


def test_a_text_model_whose_tokenizer_changed_is_refused(tmp_path):
    """The card covers the text model's folder (tokenizer, configs) besides its weights: a vocabulary
    edited after training would read every prompt differently."""
    import shutil

    from helpers import make_model_file

    from napari_medimp.core.checkpoint import ModelFileError, load_model
    from napari_medimp.core.models.text import resolve_text_model_path

    path = make_model_file(tmp_path)
    card = json.loads(path.with_suffix(".json").read_text())
    assert {"vocab.txt", "tokenizer.json", "config.json"} <= set(card["text_model"]["files_sha256"])
    folder = tmp_path / "text"
    shutil.copytree(resolve_text_model_path(None), folder)
    assert load_model(path, text_model_path=folder).model is not None  # an identical copy is accepted
    with open(folder / "vocab.txt", "a") as fh:
        fh.write("[unused-extra]\n")
    with pytest.raises(ModelFileError, match=r"differs from the one the model was trained with \(vocab\.txt"):
        load_model(path, text_model_path=folder)
