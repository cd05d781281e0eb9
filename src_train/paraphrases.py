"""New paraphrases of the prompt templates from a local causal language model (the paper used 10 LLM
paraphrases per sentence), and the checks a candidate must pass to replace a template. Used when the
template bank is extended, never at inference; a kept paraphrase enters :data:`~napari_medimp.core.prompts.
TEMPLATES` only with a template version bump."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

_SLOT_RE = re.compile(r"\{(\w+)\}")


def is_valid_paraphrase(text: str, template: str, min_words: int = 3, max_words: int = 40) -> bool:
    """True when ``text`` can replace ``template``: every slot of the template exactly once, no other
    braces, one line, ``min_words``-``max_words`` words, starting with a letter or a slot and ending
    with a period."""
    if not isinstance(text, str):
        return False
    text = text.strip()
    slots = _SLOT_RE.findall(template)
    if not text or "\n" in text or not text.endswith("."):
        return False
    if not (text[0].isalpha() or text.startswith("{")):
        return False
    if any(text.count("{" + s + "}") != 1 for s in slots):
        return False
    rest = _SLOT_RE.sub("", text)
    if "{" in rest or "}" in rest or len(_SLOT_RE.findall(text)) != len(slots):
        return False
    return min_words <= len(text.split()) <= max_words


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def filter_paraphrases(candidates: Iterable[str], template: str, **kwargs: int) -> list[str]:
    """Valid (:func:`is_valid_paraphrase`), de-duplicated candidates that differ from the template."""
    kept: list[str] = []
    seen = {_norm(template)}
    for c in candidates:
        if is_valid_paraphrase(c, template, **kwargs) and _norm(c) not in seen:
            seen.add(_norm(c))
            kept.append(c.strip())
    return kept


def _clean_generation(text: str) -> str:
    """First line, first sentence, no space before punctuation, first letter capitalised."""
    text = text.strip().split("\n", 1)[0].strip().strip('"').strip()
    text = re.sub(r"\s+([.,;:!?])", r"\1", text)
    text = re.sub(r"([.!?])[.!?]+", r"\1", text)
    m = re.search(r"[.!?](\s|$)", text)
    if m:
        text = text[: m.start() + 1]
    if text[:1].islower():
        text = text[0].upper() + text[1:]
    return text


def generate_paraphrases(
    template: str,
    model_path: str | Path,
    n: int = 10,
    *,
    seed: int = 0,
    max_new_tokens: int = 48,
    temperature: float = 0.9,
    top_p: float = 0.95,
    batch_size: int = 16,
    max_rounds: int = 5,
    instruction: str | None = None,
) -> list[str]:
    """Paraphrase ``template`` with a local HuggingFace causal LM and keep only usable outputs.

    The model and tokenizer are loaded from ``model_path`` with ``local_files_only=True`` (never
    downloads). Up to ``max_rounds`` batches of ``batch_size`` samples are drawn (seeded, without
    touching the global RNG) until ``n`` paraphrases pass :func:`filter_paraphrases` (slot
    placeholders preserved exactly once, no other braces, one sentence of reasonable length).
    Returns the kept list, possibly empty; failures during generation are logged, never raised
    (a model path that cannot be loaded does raise).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_path), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(model_path), local_files_only=True)
    model.eval()
    slots = ", ".join("{" + s + "}" for s in _SLOT_RE.findall(template)) or "none"
    instruction = instruction or (
        "Rewrite the following sentence about a kidney transplant patient in different words, as one "
        f"medically correct sentence. Keep the placeholders {slots} exactly as written."
    )
    prompt = f"{instruction}\nSentence: {template}\nParaphrase:"
    if getattr(tokenizer, "chat_template", None):
        try:
            prompt = tokenizer.apply_chat_template(
                [{"role": "user", "content": f"{instruction}\nSentence: {template}"}],
                add_generation_prompt=True,
                tokenize=False,
            )
        except Exception:  # noqa: BLE001 - fall back to the plain prompt
            pass
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    kept: list[str] = []
    candidates: list[str] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(max_rounds):
            try:
                enc = tokenizer(prompt, return_tensors="pt")
                enc.pop("token_type_ids", None)
                with torch.no_grad():
                    out = model.generate(
                        **enc,
                        do_sample=True,
                        temperature=temperature,
                        top_p=top_p,
                        max_new_tokens=max_new_tokens,
                        num_return_sequences=batch_size,
                        pad_token_id=pad_id,
                    )
                start = enc["input_ids"].shape[1]
                texts = tokenizer.batch_decode(out[:, start:], skip_special_tokens=True)
                candidates += [_clean_generation(t) for t in texts]
            except Exception as exc:  # noqa: BLE001 - a bad generation must not break the caller
                log.warning("paraphrase generation failed: %s", exc)
                break
            kept = filter_paraphrases(candidates, template)
            if len(kept) >= n:
                break
    return kept[:n]
