"""Readings of exam embeddings against prompts, on unseen patients: the zero-shot GFR bin and the
prompt-content retrieval, each with its scale (and content prior) fitted on other patients than those scored."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy.special import softmax

from .bootstrap import bootstrap_by_patient


def fit_temperature(similarities: np.ndarray, truth: np.ndarray) -> float:
    """Scale ``t`` minimising the negative log-likelihood of ``softmax(t * similarity)`` (1 <= t <= 1000)."""
    from scipy.optimize import minimize_scalar

    sims, truth = np.asarray(similarities, float), np.asarray(truth, int)

    def nll(log_t: float) -> float:
        prob = softmax(math.exp(log_t) * sims, axis=1)
        return float(-np.mean(np.log(prob[np.arange(len(truth)), truth] + 1e-12)))

    res = minimize_scalar(nll, bounds=(0.0, math.log(1000.0)), method="bounded")
    return float(math.exp(res.x))


def _patient_halves(patients: Sequence[str], seed: int) -> np.ndarray:
    """Fold 0 or 1 per item: half of the patients (drawn with ``seed``) in fold 0, the others in fold 1,
    every item with its patient (for cross-fitting a scale or a prior on patients an item's own never are)."""
    owners = np.asarray(list(patients))
    unique = np.unique(owners)
    half = set(np.random.default_rng(seed).permutation(unique)[: len(unique) // 2].tolist())
    return np.array([0 if p in half else 1 for p in owners])


def content_evaluation(vectors: np.ndarray, exams: Sequence[str], slots: Sequence[dict], patients: Sequence[str],
                       attributes: Sequence[str], encode_text: Callable, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """Prompt-content retrieval of exam embeddings on a cohort (:func:`src_train.metrics.content_items`):
    top-1 against always answering the commonest content of the visit, with patient-level bootstrap 95 %
    intervals and the paired difference on the same resamples. Empty when fewer than two contents."""
    from .metrics import content_items

    items = content_items(vectors, exams, slots, attributes, encode_text)
    if not items:
        return {}
    right, base, ranks = items["right"], items["baseline"], items["rank"]
    with_prior, prior_only = _content_with_prior(items["similarities"], items["true"], list(exams), list(patients),
                                                 seed)
    out = {"n_exams": int(len(right)), "n_patients": int(len(set(patients))), "n_contents": items["n_contents"],
           "content_attributes": [a for a in attributes if a != "exam"],
           "top1": float(right.mean()), "commonest": float(base.mean()), "difference": float(right.mean() - base.mean()),
           "mean_rank": float(ranks.mean()), "chance_mean_rank": (items["n_contents"] + 1) / 2.0}
    for name, fn in (("top1", lambda i: float(right[i].mean())), ("commonest", lambda i: float(base[i].mean())),
                     ("difference", lambda i: float(right[i].mean() - base[i].mean())),
                     ("mean_rank", lambda i: float(ranks[i].mean())),
                     ("with_prior", lambda i: float(with_prior[i].mean())),
                     ("prior_only", lambda i: float(prior_only[i].mean())),
                     ("prior_difference", lambda i: float(with_prior[i].mean() - prior_only[i].mean()))):
        out[f"{name}_ci"] = bootstrap_by_patient(patients, fn, n_boot=n_boot, seed=seed)
    out.update(with_prior=float(with_prior.mean()), prior_only=float(prior_only.mean()),
               prior_difference=float(with_prior.mean() - prior_only.mean()),
               prior_protocol="content prior per visit and similarity scale fitted on half of the patients, "
                              "scored on the other half, and the reverse")
    return out


def _content_with_prior(sims: np.ndarray, true: np.ndarray, exams: list, patients: list, seed: int):
    """Cross-fitted content reading that adds what the images say to what is common: argmax over contents
    of ``t * similarity + log prior(content | visit)`` (an InfoNCE model scores how much more likely a
    content is given the image than a priori, so the prior is added back), against the prior alone
    (the commonest content of the visit). Prior (counts + 0.5) and ``t`` are fitted on one half of the
    patients and the other half is scored, then the reverse. Returns two boolean arrays (right or not)."""
    n, k = sims.shape
    visits = np.asarray(exams)
    fold = _patient_halves(patients, seed)
    with_prior, prior_only = np.zeros(n, bool), np.zeros(n, bool)
    for f in (0, 1):
        fit, score = fold != f, fold == f
        if not fit.any() or not score.any():
            continue
        log_prior = np.zeros((n, k))
        for visit in np.unique(visits):
            counts = np.bincount(true[fit & (visits == visit)], minlength=k) + 0.5
            log_prior[visits == visit] = np.log(counts / counts.sum())

        def nll(log_t: float, rows=fit, log_prior=log_prior) -> float:
            z = np.exp(log_t) * sims[rows] + log_prior[rows]
            z = z - z.max(axis=1, keepdims=True)
            return float(-(z[np.arange(z.shape[0]), true[rows]] - np.log(np.exp(z).sum(axis=1))).mean())

        from scipy.optimize import minimize_scalar

        log_t = minimize_scalar(nll, bounds=(-3.0, math.log(200.0)), method="bounded").x
        scores = np.exp(log_t) * sims + log_prior
        with_prior[score] = scores[score].argmax(axis=1) == true[score]
        prior_only[score] = log_prior[score].argmax(axis=1) == true[score]
    return with_prior, prior_only


def zero_shot_evaluation(similarities: np.ndarray, truth: np.ndarray, patients: Sequence[str], bins: Sequence[str],
                         *, seed: int = 0) -> dict[str, Any]:
    """Zero-shot GFR-bin reading scored on patients whose temperature was fitted on other patients.

    ``similarities``: (n_exams, n_bins) cosine similarity of each exam with each bin's prompt (averaged
    over paraphrases); ``truth``: true bin index per exam. Two-fold cross-fitting by patient: the scale
    is fitted on one half of the patients and the other half is scored, then the reverse. Returns the
    pooled accuracy, balanced accuracy, confusion matrix (rows true, columns read), the accuracy of
    always answering the fitting half's most frequent bin, the median top probability, and the scale
    fitted on all patients (stored in the model card for new patients)."""
    sims, truth = np.asarray(similarities, float), np.asarray(truth, int)
    pats = np.asarray(list(patients))
    unique = np.unique(pats)
    fold = _patient_halves(pats, seed)
    n = len(bins)
    pred = np.zeros(len(truth), int)
    top = np.zeros(len(truth))
    majority = np.zeros(len(truth), bool)  # right when always answering the fitting half's commonest bin
    for k in (0, 1):
        fit, score = fold != k, fold == k
        if not fit.any() or not score.any():
            continue
        t = fit_temperature(sims[fit], truth[fit])
        prob = softmax(t * sims[score], axis=1)
        pred[score] = prob.argmax(axis=1)
        top[score] = prob.max(axis=1)
        majority[score] = truth[score] == np.bincount(truth[fit], minlength=n).argmax()
    confusion = np.zeros((n, n), int)
    np.add.at(confusion, (truth, pred), 1)
    recalls = [confusion[i, i] / confusion[i].sum() for i in range(n) if confusion[i].sum()]

    def balanced(idx: np.ndarray) -> float:
        t, r = truth[idx], pred[idx]
        return float(np.mean([np.mean(r[t == b] == b) for b in np.unique(t)]))

    intervals = {
        "accuracy_ci": bootstrap_by_patient(pats, lambda idx: float(np.mean(pred[idx] == truth[idx])), seed=seed),
        "balanced_accuracy_ci": bootstrap_by_patient(pats, balanced, seed=seed),
        "majority_accuracy_ci": bootstrap_by_patient(pats, lambda idx: float(np.mean(majority[idx])), seed=seed),
    } if len(truth) else {}
    return {"bins": list(bins), "n_exams": int(len(truth)), "n_patients": int(len(unique)),
            "accuracy": float((pred == truth).mean()) if len(truth) else math.nan,
            "balanced_accuracy": float(np.mean(recalls)) if recalls else math.nan,
            "chance_balanced_accuracy": 1.0 / len(recalls) if recalls else math.nan,
            "bins_present": int(len(recalls)), **intervals,
            "majority_accuracy": float(majority.mean()) if len(truth) else math.nan,
            "median_top_probability": float(np.median(top)) if len(truth) else math.nan,
            "confusion": confusion.tolist(),
            "temperature": fit_temperature(sims, truth) if len(truth) else math.nan,
            "protocol": "scale fitted on half of the patients, scored on the other half, and the reverse"}
