"""What a contrastive validation can show, given the prompts it has.

Prompts with the same content (the same bin words) are not negatives a model can rank apart, so next to
the InfoNCE loss we report what it is compared with:

* the **chance level**: ``ln(b)`` for a batch of ``b`` pairs (averaged over the actual batches: the last
  one may be smaller), the loss of a model that tells nothing apart;
* the **duplicate-prompt floor**: in a batch where item ``i`` shares its prompt content with ``m_i``
  items (itself included), a perfect reader of the content can do no better than spreading its
  probability over those ``m_i`` items: loss ``ln(m_i)`` in both directions; the floor is their mean;

and the retrieval is counted at the level of what the prompts can tell apart (**content retrieval**):
each image against the distinct contents of the evaluated set (GFR, creatinine and donor-age bins; the
visit is not a content to guess, it is known at every reading, so each candidate is written with the
image's own visit), compared with always answering the commonest content at that visit.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
import torch

#: the attributes whose bins make a prompt's content (the visit is given, not guessed)
CONTENT_ATTRIBUTES = ("gfr", "creatinine", "donor_age")


def content_key(slots: dict, attributes: Sequence[str], with_exam: bool = True) -> tuple:
    """The bin words of ``attributes`` (None where missing); with the visit's phrase when ``with_exam``."""
    names = [a for a in attributes if with_exam or a != "exam"]
    return tuple((a, slots.get(a)) for a in names)


def chance_loss(batch_sizes: Sequence[int]) -> float:
    """Mean of ``ln(b)`` over batches of ``b`` pairs: the loss of a model that tells nothing apart."""
    sizes = [b for b in batch_sizes if b > 0]
    return float(np.mean([math.log(b) for b in sizes])) if sizes else float("nan")


def duplicate_floor(batches: Sequence[Sequence[tuple]]) -> float:
    """Mean over batches of the mean ``ln(m_i)``, ``m_i`` the number of items of the batch sharing item
    ``i``'s prompt content: the lowest loss a perfect reader of the prompts' content can reach."""
    values = []
    for keys in batches:
        if not keys:
            continue
        counts = Counter(keys)
        values.append(float(np.mean([math.log(counts[k]) for k in keys])))
    return float(np.mean(values)) if values else float("nan")


def content_retrieval(image_features: torch.Tensor, exams: Sequence[str], slots: Sequence[dict],
                      attributes: Sequence[str], encode_text: Callable[[list[str]], torch.Tensor]) -> dict:
    """Image -> prompt content retrieval over the distinct contents of the set.

    ``image_features``: ``(n, d)`` unit-norm embeddings; ``exams`` and ``slots`` (each item's bin words,
    :func:`~napari_medimp.core.prompts.slot_values`) per item; ``encode_text`` embeds a
    list of prompts (unit norm). Returns ``content_top1`` (share of images whose own content scores
    highest; a tie counts against it), ``content_baseline`` (share right when always answering the
    commonest content of the image's visit), ``content_mean_rank`` and ``n_contents``; empty when
    fewer than 2 contents are present (nothing to tell apart).
    """
    items = content_items(image_features, exams, slots, attributes, encode_text)
    if not items:
        return {}
    return {"content_top1": float(np.mean(items["right"])), "content_baseline": float(np.mean(items["baseline"])),
            "content_mean_rank": float(np.mean(items["rank"])), "n_contents": items["n_contents"]}


def content_items(image_features: torch.Tensor, exams: Sequence[str], slots: Sequence[dict],
                  attributes: Sequence[str], encode_text: Callable[[list[str]], torch.Tensor]) -> dict:
    """Per item of :func:`content_retrieval`: ``rank`` of its content, ``right`` (ranked first) and
    ``baseline`` (the commonest content of its visit is its own), as arrays, with ``n_contents``, the
    ``similarities`` ``(n, n_contents)`` of each image with each content (written with its visit), the
    ``true`` content index per item and the ``contents`` themselves."""
    from napari_medimp.core.prompts import prompt_from_slots

    content_attrs = [a for a in attributes if a != "exam"]
    if not content_attrs:
        return {}
    keys = [content_key(s, content_attrs) for s in slots]
    distinct = sorted(set(keys), key=repr)
    if len(distinct) < 2:
        return {}
    index = {k: j for j, k in enumerate(distinct)}
    visits = sorted(set(exams))
    texts, where = [], {}
    for visit in visits:
        phrase = next(s.get("exam") for s, e in zip(slots, exams, strict=True) if e == visit)
        for k in distinct:
            where[(visit, k)] = len(texts)
            texts.append(prompt_from_slots({**dict(k), "exam": phrase}, attributes))
    text_features = torch.as_tensor(encode_text(texts)).float()
    image_features = torch.as_tensor(image_features).float()
    ranks = np.empty(len(keys), int)
    sims = np.empty((len(keys), len(distinct)))
    for i, (visit, key) in enumerate(zip(exams, keys, strict=True)):
        rows = [where[(visit, k)] for k in distinct]
        sim = image_features[i] @ text_features[rows].T
        true = sim[index[key]]
        ranks[i] = int((sim >= true).sum()) if torch.isfinite(sim).all() else len(distinct)
        sims[i] = sim.numpy()
    by_visit: dict[str, Counter] = {}
    for visit, key in zip(exams, keys, strict=True):
        by_visit.setdefault(visit, Counter())[key] += 1
    commonest = {visit: counts.most_common(1)[0][0] for visit, counts in by_visit.items()}
    baseline = np.array([key == commonest[visit] for visit, key in zip(exams, keys, strict=True)])
    return {"rank": ranks, "right": ranks == 1, "baseline": baseline, "n_contents": len(distinct),
            "similarities": sims, "true": np.array([index[k] for k in keys]), "contents": distinct}
