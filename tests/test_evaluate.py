"""Prognosis evaluation: readings from the exams so far, folds by patient, intervals, paired differences,
calibration, zero-shot GFR on unseen patients, and the final heads."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import RepeatedStratifiedKFold

from napari_medimp.core.clinical import ClinicalRecord
from napari_medimp.core.prognosis import (
    CLINICAL_RISK_SIGNS,
    FEATURES_ID,
    HEAD_MODEL,
    ClinicalValues,
    check_head_constraints,
    cumulative_labels,
    feature_signs,
    subsets_with_visit,
)
from napari_medimp.core.terms import EXAMS
from src_train import cross_validation
from src_train.bootstrap import auc, bootstrap_intervals, brier, f1, paired_differences
from src_train.cross_validation import NOT_ENOUGH, cross_validate
from src_train.evaluate import evaluate
from src_train.heads import fit_heads, fit_model
from src_train.monotone import fit_cumulative_logit
from src_train.readings import ClinicalTable, EmbeddingSource, FeatureSet, design, labels_from_rows
from src_train.tables import interval_table, reliability_figure, to_markdown_table, write_csv
from src_train.zero_shot import fit_temperature, zero_shot_evaluation


def cohort(n=60, seed=0, signal=1.0, missing=0.15, prevalence_shift=0.0):
    """Patients with a latent risk read (noisily) by every exam embedding and by GFR; some exams missing."""
    rng = np.random.default_rng(seed)
    pats = [f"P{i:03d}" for i in range(n)]
    risk = rng.normal(size=n)
    y = (risk + 0.6 * rng.normal(size=n) + prevalence_shift > 0).astype(float)
    emb, clin = {}, {}
    for i, p in enumerate(pats):
        exams = [e for e in EXAMS if rng.random() > missing] or ["M12"]
        emb[p] = {e: np.r_[signal * risk[i] + 0.5 * rng.normal(), rng.normal(size=5)] for e in exams}
        clin[p] = {e: ClinicalValues(donor_age=50 + 5 * rng.normal(), gfr=60 - 10 * risk[i] + 8 * rng.normal())
                   for e in EXAMS}
    table = ClinicalTable(clin, {p: list(v) for p, v in emb.items()})
    return pats, y, EmbeddingSource(emb), table


def feature_sets(source):
    return [FeatureSet("MEDIMP", "image", source), FeatureSet("MEDIMP + clinical", "image+clinical", source),
            FeatureSet("clinical values only", "clinical")]


# ----------------------------------------------------------------------------------------- metrics
def test_auc_by_ranks_matches_hand_computation_and_sklearn():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.4, 0.35, 0.8])
    assert auc(y, p) == pytest.approx(0.75)  # 3 of 4 positive-negative pairs ordered correctly
    assert auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5  # a tie counts half
    assert math.isnan(auc(np.array([1, 1]), np.array([0.2, 0.3])))
    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 2, 200), np.round(rng.random(200), 1)
    assert auc(y, p) == pytest.approx(roc_auc_score(y, p))


def test_f1_and_brier_by_hand():
    y = np.array([1, 1, 0, 0])
    p = np.array([0.9, 0.4, 0.6, 0.1])
    assert f1(y, p) == pytest.approx(2 * 1 / (2 + 2))  # tp 1, predicted 2, actual 2
    assert brier(y, p) == pytest.approx((0.01 + 0.36 + 0.36 + 0.01) / 4)


def test_bootstrap_interval_brackets_the_estimate_and_paired_difference_of_twins_is_zero():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80)
    p = np.clip(y * 0.4 + rng.random(80) * 0.6, 0, 1)
    ci = bootstrap_intervals(y, p, n_boot=300)
    for est, lo, hi in ci.values():
        assert lo <= est <= hi
    same = paired_differences(y, p, p, n_boot=300)
    assert same["difference"] == 0 and same["low"] == 0 and same["high"] == 0
    better = paired_differences(y, y + 0.01 * rng.random(80), p, n_boot=300)
    assert better["difference"] > 0 and better["low"] > 0 and better["p_not_better"] == 0


# ------------------------------------------------------------------------------ readings and folds
def test_exam_subset_augmentation_keeps_the_visit_and_sums_to_one_reading():
    assert subsets_with_visit(["D15", "D30", "M12"], "M3") == [("M3",), ("D15", "M3"), ("D30", "M3"),
                                                               ("D15", "D30", "M3")]
    assert subsets_with_visit(["D30"], "D30") == [("D30",)]
    pats, y, source, table = cohort(n=12)
    fs = FeatureSet("MEDIMP", "image", source)
    x, w, owners = design(fs, pats, "M12", table, augment=True)
    for p in set(owners):
        assert sum(wi for wi, o in zip(w, owners, strict=True) if o == p) == pytest.approx(1.0)
    x_real, _, real_owners = design(fs, pats, "M12", table, augment=False)
    assert sorted(set(owners)) == sorted(real_owners)  # only patients with an M12 image read at M12


def test_no_patient_is_in_training_and_test_of_a_fold(monkeypatch):
    pats, y, source, table = cohort(n=30)
    seen = []
    real_fit = fit_model

    def spy(x, yy, w, kind, C):
        seen.append(len(x))
        return real_fit(x, yy, w, kind, C)

    monkeypatch.setattr(cross_validation, "fit_model", spy)
    splits = []
    real_split = RepeatedStratifiedKFold.split

    def record(self, x, yy):
        for train, test in real_split(self, x, yy):
            splits.append((set(train), set(test)))
            yield train, test

    monkeypatch.setattr(RepeatedStratifiedKFold, "split", record)
    [result] = cross_validate(feature_sets(source)[:1], table, pats, {"2y": y}, n_splits=3, n_repeats=2)
    assert len(splits) == 6 and all(not (tr & te) for tr, te in splits)
    assert seen
    # every reading got an out-of-fold probability from each repeat (one per repeat: averaged)
    readings = {(p, v) for p in pats for v in source.exams(p)}
    assert set(result.oof["MEDIMP"]) == readings


def test_signal_is_found_and_noise_is_not():
    pats, y, source, table = cohort(n=80, signal=1.0)
    result = evaluate(feature_sets(source), table, pats, {"2y": y}, n_splits=4, n_repeats=2, n_boot=200)
    row = result.table.set_index("feature_set").loc["MEDIMP"]
    assert row["auc"] > 0.8 and row["auc_low"] < row["auc"] < row["auc_high"]
    assert row["n_patients"] == 80
    noise_pats, noise_y, noise_source, noise_table = cohort(n=80, signal=0.0, seed=3)
    noise = evaluate(feature_sets(noise_source)[:1], noise_table, noise_pats, {"2y": noise_y}, n_splits=4,
                        n_repeats=2, n_boot=200)
    lo, hi = noise.table.loc[0, ["auc_low", "auc_high"]]
    assert lo < 0.5 + 0.1 and hi > 0.5 - 0.1


def test_mean_predicted_risk_at_every_visit_is_near_the_prevalence():
    pats, y, source, table = cohort(n=120, prevalence_shift=-0.6, seed=4)
    assert 0.2 < y.mean() < 0.45
    result = evaluate(feature_sets(source), table, pats, {"2y": y}, n_splits=5, n_repeats=2, n_boot=50)
    cal = result.calibration
    assert set(cal["visit"]) == set(EXAMS)
    assert (cal["risk_minus_prevalence"].abs() < 0.1).all(), cal


def test_paired_comparisons_and_reports():
    pats, y, source, table = cohort(n=50)
    result = evaluate(feature_sets(source), table, pats, {"2y": y, "3y": y}, n_splits=3, n_repeats=1, n_boot=100)
    comps = set(result.comparisons["comparison"])
    assert comps == {"MEDIMP - clinical values only", "MEDIMP + clinical - clinical values only"}
    text = to_markdown_table(interval_table(result.table))
    assert "AUC [95 % CI]" in text and text.count("\n") == 2 + len(result.table)
    figure = reliability_figure(result.results, ["MEDIMP", "clinical values only"])
    assert len(figure.axes) == 2


def test_too_few_positives_is_reported_not_hidden():
    pats, y, source, table = cohort(n=20)
    y = np.zeros(20)
    y[0] = 1
    result = evaluate(feature_sets(source)[:1], table, pats, {"2y": y}, n_splits=3, n_repeats=1, n_boot=10)
    assert result.table.loc[0, "status"] == NOT_ENOUGH and "1 positive" in result.table.loc[0, "message"]


def test_labels_from_rows():
    rows = [{"outcome_2y": "1"}, {"outcome_2y": ""}, {"outcome_2y": 0}]
    np.testing.assert_array_equal(np.isnan(labels_from_rows(rows, "2y")), [False, True, False])
    with pytest.raises(ValueError, match="must be 0, 1"):
        labels_from_rows([{"outcome_2y": 2}], "2y")


def test_clinical_values_of_a_visit_come_from_the_exams_so_far():
    row = {"patient_id": "P1", "donor_age": "70", "gfr_D15": "30", "gfr_D30": "45", "creatinine_D15": "200",
           "creatinine_D30": "150", "creatinine_M3": "900"}
    values = ClinicalValues.from_record(ClinicalRecord.from_csv_row(row, "D30"))
    assert values.donor_age == 70 and values.gfr == 45 and values.creatinine_latest == 150
    assert values.creatinine_std == pytest.approx(25.0)  # population std of 200 and 150; M3 not yet known
    assert ClinicalValues.from_record(ClinicalRecord.from_csv_row(row, "D15")).missing() == ["creatinine_std"]


# ------------------------------------------------------------------------------------- final heads
def test_fit_heads_share_one_model_over_the_horizons_and_impute_the_mean():
    pats, y, source, table = cohort(n=60)
    sets = feature_sets(source)
    y3 = np.maximum(y, (np.arange(60) % 4 == 0).astype(float))
    heads = fit_heads(sets, table, pats, {"2y": y, "3y": y3})
    assert set(heads) == {f"{k}/{v}/{h}" for k in ("image", "image+clinical", "clinical") for v in EXAMS
                          for h in ("2y", "3y")}
    head, later = heads["image+clinical/M3/2y"], heads["image+clinical/M3/3y"]
    assert head.features == FEATURES_ID and head.kind == "image+clinical" and head.visit == "M3"
    assert head.extra["model"] == HEAD_MODEL and "by year h" in head.extra["outcome"]
    np.testing.assert_array_equal(head.coef, later.coef)
    assert later.intercept >= head.intercept
    x, w, owners = design(sets[1], pats, "M3", table, augment=True)
    label_of = dict(zip(pats, zip(y, y3, strict=True), strict=True))
    model = fit_model(x, np.array([label_of[p] for p in owners]), w, "image+clinical", 1.0)
    np.testing.assert_allclose(head.predict_proba(x[:5]), model.predict_proba(x[:5])[:, 0], atol=1e-10)
    np.testing.assert_allclose(later.predict_proba(x[:5]), model.predict_proba(x[:5])[:, 1], atol=1e-10)
    missing = x[:1].copy()
    missing[0, -2:] = np.nan
    filled = missing.copy()
    filled[0, -2:] = head.mean[-2:]
    np.testing.assert_allclose(head.predict_proba(missing), head.predict_proba(filled), atol=1e-12)
    assert not check_head_constraints([h for k, h in heads.items() if k.startswith("image+clinical/M3/")])


def test_one_horizon_without_constraints_is_scikit_learns_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5)) * [1, 2, 3, 4, 5] + [0, 1, 2, 3, 4]
    y = (x[:, 0] + rng.normal(size=200) > 0).astype(float)
    model = fit_cumulative_logit(x, y[:, None], C=0.5)
    z = (x - x.mean(axis=0)) / x.std(axis=0)
    reference = LogisticRegression(C=0.5, max_iter=5000, tol=1e-10).fit(z, y)
    np.testing.assert_allclose(model.coef, reference.coef_[0], atol=1e-4)
    np.testing.assert_allclose(model.intercepts, reference.intercept_, atol=1e-4)


def test_a_clinical_effect_against_medicine_is_bounded_to_none():
    """A cohort where, by confounding, a higher GFR goes with more dysfunction: the fitted GFR effect
    is held at zero instead of learning that a failing graft lowers the risk."""
    rng = np.random.default_rng(2)
    n = 300
    gfr = rng.normal(50, 15, n)
    age = rng.normal(55, 12, n)
    y = (0.05 * (gfr - 50) + 0.08 * (age - 55) + rng.normal(size=n) > 0).astype(float)
    x = np.column_stack([age, gfr, rng.normal(120, 30, n), rng.gamma(2, 5, n)])
    model = fit_cumulative_logit(x, y[:, None], signs=feature_signs("clinical", 4))
    free = fit_cumulative_logit(x, y[:, None])
    assert free.coef[1] > 0.3  # unconstrained, it would read "higher GFR, more dysfunction"
    assert model.coef[1] == 0.0 and model.coef[0] > 0.3


def test_risks_never_move_against_clinical_sense_over_a_grid_and_horizons_never_cross():
    rng = np.random.default_rng(5)
    pats, y, source, table = cohort(n=80, seed=5)
    y3 = np.maximum(y, rng.integers(0, 2, 80))
    y4 = np.maximum(y3, rng.integers(0, 2, 80))
    labels = {"2y": y, "3y": y3, "4y": rng.permutation(y4)}  # a 4y column that is noise but still later
    heads = fit_heads(feature_sets(source), table, pats, labels)
    grid = {"donor_age": np.linspace(18, 85, 8), "gfr": np.linspace(5, 120, 8),
            "creatinine_latest": np.linspace(40, 900, 8), "creatinine_std": np.linspace(0, 200, 8)}
    names = list(grid)
    for kind in ("clinical", "image+clinical"):
        for visit in EXAMS:
            group = [heads[f"{kind}/{visit}/{h}"] for h in ("2y", "3y", "4y")]
            n_image = group[0].n_features - 4
            for _ in range(20):
                base = np.r_[rng.normal(size=n_image), [rng.choice(grid[n]) for n in names]]
                for j, name in enumerate(names):
                    xs = np.repeat(base[None], 8, axis=0)
                    xs[:, n_image + j] = grid[name]
                    for head in group:
                        risk = head.predict_proba(xs)
                        step = np.diff(risk) if CLINICAL_RISK_SIGNS[name] > 0 else -np.diff(risk)
                        assert np.all(step >= -1e-12), (kind, visit, head.horizon, name, risk)
    for key in {k.rsplit("/", 1)[0] for k in heads}:
        group = [heads[f"{key}/{h}"] for h in ("2y", "3y", "4y")]
        xs = rng.normal(size=(200, group[0].n_features)) * 3
        xs[:, :] += group[0].mean
        risks = np.stack([h.predict_proba(xs) for h in group])
        assert np.all(np.diff(risks, axis=0) >= 0), key


def test_outcomes_by_year_h_are_cumulative():
    nan = np.nan
    out = cumulative_labels({"3y": [0, nan, 0, nan, 1], "2y": [1, 1, 0, 0, 0], "4y": [0, 0, nan, nan, 0]})
    assert list(out) == ["2y", "3y", "4y"]
    np.testing.assert_array_equal(out["3y"], [1, 1, 0, nan, 1])
    np.testing.assert_array_equal(out["4y"], [1, 1, nan, nan, 1])
    again = cumulative_labels(out)
    for h in out:
        np.testing.assert_array_equal(again[h], out[h])
    with pytest.raises(ValueError, match="0, 1 or missing"):
        cumulative_labels({"2y": [2]})


def test_heads_that_could_cross_or_move_against_medicine_are_named():
    from napari_medimp.core.checkpoint import PrognosisHead

    def head(h, coef, intercept):
        return PrognosisHead(horizon=h, kind="clinical", visit="D30", mean=np.zeros(4), scale=np.ones(4),
                             coef=np.array(coef, float), intercept=intercept)

    good = [head("2y", [0.1, -0.5, 0.3, 0.0], -1.0), head("3y", [0.1, -0.5, 0.3, 0.0], -0.5)]
    assert check_head_constraints(good) == []
    wrong_sign = [head("2y", [0.1, 0.5, 0.3, 0.0], -1.0)]
    assert "GFR would move the risk against clinical sense" in check_head_constraints(wrong_sign)[0]
    crossing = [head("2y", [0.1, -0.5, 0.3, 0.0], -1.0), head("3y", [0.1, -0.4, 0.3, 0.0], -0.5)]
    assert "may cross" in check_head_constraints(crossing)[0]
    falling = [head("3y", [0.1, -0.5, 0.3, 0.0], -1.5), head("2y", [0.1, -0.5, 0.3, 0.0], -1.0)]
    assert "3y risk would be lower than the 2y risk" in check_head_constraints(falling)[0]


def test_fit_heads_warns_when_a_visit_lacks_a_class():
    pats, y, source, table = cohort(n=10)
    with pytest.warns(UserWarning, match="not fitted"):
        heads = fit_heads(feature_sets(source)[:1], table, pats, {"2y": np.r_[1.0, np.zeros(9)]})
    assert heads == {}


# ---------------------------------------------------------------------------------------- zero-shot
def test_zero_shot_is_scored_on_patients_whose_scale_it_did_not_see():
    rng = np.random.default_rng(0)
    n, bins = 200, ["a", "b", "c"]
    truth = rng.integers(0, 3, n)
    sims = rng.normal(0, 0.02, (n, 3))
    right = rng.random(n) < 0.7
    sims[np.arange(n), truth] += np.where(right, 0.05, -0.05)
    patients = [f"P{i // 2}" for i in range(n)]
    out = zero_shot_evaluation(sims, truth, patients, bins)
    assert out["n_exams"] == n and out["n_patients"] == 100
    assert np.sum(out["confusion"]) == n
    assert out["accuracy"] == pytest.approx(np.trace(out["confusion"]) / n)
    assert 0.6 < out["accuracy"] < 0.85 and out["majority_accuracy"] < 0.45
    assert 1.0 <= out["temperature"] <= 1000.0


def test_temperature_fit_recovers_a_known_scale():
    rng = np.random.default_rng(1)
    sims = rng.normal(0, 0.1, (3000, 5))
    logits = 20.0 * sims
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    truth = np.array([rng.choice(5, p=p) for p in prob])
    assert fit_temperature(sims, truth) == pytest.approx(20.0, rel=0.15)


def test_markdown_table_and_csv(tmp_path):
    df = pd.DataFrame({"feature_set": ["a|b"], "auc": [0.81234]})
    text = to_markdown_table(df)
    assert "a\\|b" in text and "0.812" in text
    assert write_csv(df, tmp_path / "x" / "t.csv").read_text().startswith("feature_set,auc")


def test_clinical_table_in_other_units_is_refused_with_the_conversion():
    from src_train.cli import clinical_values

    rows = {"P1": {"patient_id": "P1", "donor_age": "50", "gfr_D15": "40", "creatinine_D15": "1.4"}}
    with pytest.raises(ValueError, match="patient P1, D15: creatinine .*look like mg/dL.*88.42"):
        clinical_values(rows, ["P1"])
    rows["P1"]["creatinine_D15"] = "124"
    assert clinical_values(rows, ["P1"])["P1"]["D30"].creatinine_latest == 124.0
