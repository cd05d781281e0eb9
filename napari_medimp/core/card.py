"""Key facts of a model card, for display next to every result (so a demo model is never mistaken
for a clinical tool)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .terms import HORIZONS as HORIZON_ORDER
from .terms import SALIENCY_METHODS


def cv_auc(card: dict, feature_set: str = "MEDIMP") -> dict[str, tuple[float, float | None, float | None]]:
    """AUC on unseen patients (estimate, 95 % low, high) per horizon recorded in the card by
    ``medimp evaluate``. Cards of the first release (fold mean and std) give (mean, None, None)."""
    rows = (card.get("metrics") or {}).get("evaluation") or []
    out: dict[str, tuple[float, float | None, float | None]] = {}
    for row in rows:
        if row.get("feature_set") != feature_set:
            continue
        if row.get("auc") is not None:
            out[str(row.get("horizon"))] = (float(row["auc"]), row.get("auc_low"), row.get("auc_high"))
        elif row.get("auc_mean") is not None:
            out[str(row.get("horizon"))] = (float(row["auc_mean"]), None, None)
    return {h: out[h] for h in (*HORIZON_ORDER, "mean") if h in out} | {
        h: v for h, v in out.items() if h not in (*HORIZON_ORDER, "mean")}


def is_synthetic(model: Mapping) -> bool:
    """Whether a model card, or the facts of a loaded model (``Predictor.model_facts()``), say it was
    trained on synthetic data: the card's ``training.synthetic`` flag, the generator of a synthetic cohort
    recorded by training (``training.data_generator``), or "synthetic" in its training-data statement or
    name. The licence is not read: it says nothing about the data."""
    if model.get("synthetic") is True:  # facts of a loaded model
        return True
    training = model.get("training")
    texts = [model.get("training_data"), model.get("name")]
    if isinstance(training, Mapping):
        if training.get("synthetic") is True or training.get("data_generator"):
            return True
        texts.append(training.get("data"))
    return any(isinstance(t, str) and "synthetic" in t.lower() for t in texts)


#: an evaluation on fewer patients than this (with a known outcome at the horizon) is too small to rely on
MIN_PATIENTS = 30
#: ... or with fewer than this many patients of either outcome (with and without graft dysfunction)
MIN_PER_OUTCOME = 10
#: an AUC below this is weak (0.5 is chance; 0.6 separates patients poorly)
MIN_AUC = 0.6


def evaluation_cautions(card: dict, feature_set: str = "MEDIMP") -> list[str]:
    """Why the card's evaluation of ``feature_set`` cannot be relied on, in words (empty when it can, or when
    there is none): too few patients at a horizon, or an AUC below :data:`MIN_AUC`."""
    rows = [r for r in (card.get("metrics") or {}).get("evaluation") or [] if r.get("feature_set") == feature_set]
    small, weak = [], []
    for row in rows:
        horizon = str(row.get("horizon"))
        n, positive = row.get("n_patients"), row.get("n_positive")
        if n is not None and positive is not None and (
                n < MIN_PATIENTS or min(positive, n - positive) < MIN_PER_OUTCOME):
            small.append(f"{horizon}: {n:g} patients, {positive:g} with graft dysfunction")
        auc = row.get("auc", row.get("auc_mean"))
        if auc is not None and auc < MIN_AUC:
            weak.append(f"{horizon} {auc:.2f}")
    cautions = []
    if small:
        cautions.append(f"evaluated on too few patients to rely on ({'; '.join(small)}; at least {MIN_PATIENTS}, "
                        f"{MIN_PER_OUTCOME} with and {MIN_PER_OUTCOME} without, are needed)")
    if weak:
        cautions.append(f"its AUC is below {MIN_AUC} ({', '.join(weak)}): it barely tells the patients who will "
                        "have graft dysfunction from those who will not (0.5 is chance), whatever risk it reads")
    return cautions


def card_facts(card: dict) -> dict[str, Any]:
    """name, image encoder, training data statement, synthetic flag, AUC on unseen patients (estimate, 95 % interval) per horizon, prognosis
    horizons, licence and the first 12 hex digits of the weights' sha256."""
    training = card.get("training") or {}
    return {
        "name": card.get("name") or "unnamed model",
        "image_encoder": (card.get("architecture") or {}).get("image_encoder", "unknown"),
        "training_data": training.get("data") or "not recorded",
        "synthetic": is_synthetic(card),
        "cv_auc": cv_auc(card),
        "in_sample": bool(((card.get("metrics") or {}).get("evaluation_protocol") or {}).get("in_sample_warning")),
        "horizons": sorted({str(d.get("horizon") or k) for k, d in (card.get("prognosis") or {}).items()
                            if isinstance(d, Mapping)}),
        "head_kinds": sorted({str(d.get("kind") or "image") for d in (card.get("prognosis") or {}).values()
                              if isinstance(d, Mapping)}),
        "licence": card.get("licence"),
        "sha256": str((card.get("weights") or {}).get("sha256", ""))[:12],
        "cautions": evaluation_cautions(card),
    }


def facts_text(facts: dict[str, Any]) -> str:
    """Plain-text lines of :func:`card_facts` (the widget and reports use the same words)."""
    lines = [f"{facts['name']} ({facts['image_encoder']}, weights {facts['sha256']})",
             f"Trained on: {facts['training_data']}"]
    if facts["cv_auc"]:
        aucs = ", ".join(f"{h} {m:.2f}" + (f" [{lo:.2f}-{hi:.2f}]" if lo is not None and hi is not None else "")
                         for h, (m, lo, hi) in facts["cv_auc"].items())
        if facts.get("in_sample"):
            lines.append(f"AUC measured on its own training patients (in-sample, not a result): {aucs}")
        else:
            lines.append(f"AUC of the image-only reading on unseen patients: {aucs}")
    else:
        lines.append("No AUC on unseen patients recorded")
    lines.append("Prognosis heads: " + (", ".join(facts["horizons"]) if facts["horizons"] else "none"))
    lines += [f"CAUTION: {text}." for text in facts.get("cautions") or []]
    if facts["synthetic"]:
        lines.append("SYNTHETIC-DATA DEMO MODEL: its outputs say nothing about a real patient.")
    return "\n".join(lines)


def default_method(card: dict | None) -> str:
    """The saliency method to use when none is asked for: the one the model's card measured most faithful
    on unseen labelled exams (``saliency_faithfulness.best_method``), else the first of
    :data:`~napari_medimp.core.terms.SALIENCY_METHODS`."""
    measured = card.get("saliency_faithfulness") if isinstance(card, dict) else None
    best = measured.get("best_method") if isinstance(measured, dict) else None
    return best if best in SALIENCY_METHODS else SALIENCY_METHODS[0]


#: feature set of the card's evaluation table behind each kind of prognosis reading
EVALUATED_AS = {"image": "MEDIMP", "image+clinical": "MEDIMP + clinical", "clinical": "clinical values only"}


def reading_standing(card: dict | None) -> dict[str, str | None]:
    """Per reading (``"zero_shot_gfr"`` and ``"<kind>/<horizon>"``): None when the card shows it beats a
    trivial answer on patients the model never saw, else why not, in one line. The zero-shot GFR reading
    must be right more often than always answering the commonest range (the low end of its 95 % interval
    above that rate); a prognosis reading needs an AUC interval above 0.5 (chance) from an evaluation on
    unseen patients."""
    metrics = (card or {}).get("metrics") or {}
    out: dict[str, str | None] = {}
    zero = metrics.get("zero_shot_gfr") or {}
    accuracy, majority = zero.get("accuracy"), zero.get("majority_accuracy")
    low = (zero.get("accuracy_ci") or [None])[0]
    if accuracy is None or majority is None:
        out["zero_shot_gfr"] = "not checked on patients the model never saw"
    elif (low if low is not None else accuracy) <= majority:
        interval = f" [95 % interval {low:.0%}-{zero['accuracy_ci'][1]:.0%}]" if low is not None else ""
        out["zero_shot_gfr"] = (f"no better than a trivial answer: right for {accuracy:.0%}{interval} of exams of "
                                f"unseen patients, against {majority:.0%} for always answering the commonest range")
    else:
        out["zero_shot_gfr"] = None
    in_sample = bool((metrics.get("evaluation_protocol") or {}).get("in_sample_warning"))
    rows = {(r.get("feature_set"), str(r.get("horizon"))): r for r in metrics.get("evaluation") or []}
    horizons = {str(d.get("horizon")) for d in ((card or {}).get("prognosis") or {}).values() if isinstance(d, Mapping)}
    for kind, name in EVALUATED_AS.items():
        for horizon in sorted(horizons):
            row = rows.get((name, horizon))
            key = f"{kind}/{horizon}"
            if row is None or row.get("auc") is None:
                out[key] = "not evaluated on patients the model never saw"
            elif in_sample:
                out[key] = "evaluated only on the model's own training patients"
            elif row.get("auc_low") is None or row["auc_low"] <= 0.5:
                interval = (f" [{row['auc_low']:.2f}, {row['auc_high']:.2f}]" if row.get("auc_low") is not None
                            else "")
                out[key] = (f"no better than chance on unseen patients: AUC {row['auc']:.2f}{interval} "
                            "includes 0.5")
            else:
                out[key] = None
    return out
