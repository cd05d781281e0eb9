"""Prognosis evaluation: cross-validation without leakage, feature sets, heads, tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from napari_medimp.core.prognosis import FEATURES_ID
from src_train import evaluate as ev


def _signal(n=200, d=5, seed=0, noise=0.5):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = (x[:, 0] + noise * rng.normal(size=n) > 0).astype(float)
    return x, y


def test_signal_gives_high_auc():
    x, y = _signal()
    res = ev.cross_validate(x, y, n_splits=5, n_repeats=3, seed=0)
    assert res["status"] == "ok"
    assert res["n_patients"] == 200 and res["n_positive"] == int(y.sum())
    assert res["n_folds"] == 15 and len(res["fold_auc"]) == 15 and len(res["fold_f1"]) == 15
    print("signal AUC", res["auc_mean"], "+-", res["auc_std"], "F1", res["f1_mean"])
    assert res["auc_mean"] > 0.8
    assert res["f1_mean"] > 0.7
    assert res["auc_std"] >= 0


def test_noise_gives_chance_auc():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 5))
    y = rng.integers(0, 2, 200).astype(float)
    res = ev.cross_validate(x, y, n_splits=5, n_repeats=5, seed=0)
    print("noise AUC", res["auc_mean"], "+-", res["auc_std"])
    assert abs(res["auc_mean"] - 0.5) < 0.15


def test_unknown_labels_dropped_and_nan_features_imputed():
    x, y = _signal(n=120, seed=2)
    y[:20] = np.nan
    x[30:60, 1] = np.nan
    x[:, 4] = np.nan  # a column never observed must not change the feature count or crash
    res = ev.cross_validate(x, y, n_splits=4, n_repeats=2, seed=0)
    assert res["n_patients"] == 100
    seen = {i for f in res["folds"] for i in f["test_index"]}
    assert seen == set(range(20, 120))
    assert res["auc_mean"] > 0.8


def test_scaler_only_sees_training_rows(monkeypatch):
    """The reference code fitted its scalers before the split; here StandardScaler.fit must only ever
    receive training rows of the current fold (column 0 carries each patient's row number)."""
    x, y = _signal(n=60, d=3, seed=3)
    y[::7] = np.nan
    x[:, 0] = np.arange(60)  # patient id as a feature (still a valid, if useless, feature)
    calls = []
    original = StandardScaler.fit

    def spy(self, X, y=None, **kw):
        calls.append(set(np.asarray(X)[:, 0].astype(int).tolist()))
        return original(self, X, y, **kw)

    monkeypatch.setattr(StandardScaler, "fit", spy)
    res = ev.cross_validate(x, y, n_splits=3, n_repeats=2, seed=0)
    labelled = set(np.flatnonzero(~np.isnan(y)).tolist())
    assert len(calls) == res["n_folds"] == 6
    for seen, fold in zip(calls, res["folds"], strict=True):
        test = set(fold["test_index"])
        assert not seen & test
        assert seen == labelled - test


def test_test_prediction_independent_of_other_test_rows():
    """Perturbing the other test patients of a fold leaves a test patient's prediction unchanged;
    a scaler fitted before the split (the reference's defect) would not."""
    x, y = _signal(n=80, d=4, seed=4)
    base = ev.cross_validate(x, y, n_splits=4, n_repeats=1, seed=0)
    fold = base["folds"][0]
    test = np.asarray(fold["test_index"])
    target, others = test[0], test[1:]
    x2 = x.copy()
    x2[others] += 50.0 * np.random.default_rng(5).normal(size=(len(others), x.shape[1]))
    pert = ev.cross_validate(x2, y, n_splits=4, n_repeats=1, seed=0)
    assert pert["folds"][0]["test_index"] == fold["test_index"]
    assert pert["folds"][0]["proba"][0] == pytest.approx(fold["proba"][0], abs=1e-12)
    assert pert["folds"][0]["proba"][1:] != pytest.approx(fold["proba"][1:], abs=1e-6)

    # the reference's defect: a scaler fitted on all rows before the split -> the target changes
    def leaky(xx):
        xs = StandardScaler().fit_transform(xx)
        train = np.setdiff1d(np.arange(len(y)), test)
        m = LogisticRegression(class_weight="balanced").fit(xs[train], y[train].astype(int))
        return m.predict_proba(xs[[target]])[0, 1]

    assert abs(leaky(x) - leaky(x2)) > 1e-3


def test_too_few_positives():
    x, y = _signal(n=50, seed=6)
    y[:] = 0.0
    y[[3, 17, 40]] = 1.0
    res = ev.cross_validate(x, y, n_splits=5, n_repeats=2, seed=0)
    assert res["status"] == "ok" and res["n_splits"] == 3 and res["n_folds"] == 6
    assert "reduced" in res["message"]
    assert all(f["n_test_positive"] == 1 for f in res["folds"])
    assert not math.isnan(res["auc_mean"])

    y[[17, 40]] = 0.0  # one positive left
    res = ev.cross_validate(x, y, n_splits=5, n_repeats=2, seed=0)
    assert res["status"] == ev.NOT_ENOUGH and res["n_folds"] == 0
    assert math.isnan(res["auc_mean"]) and res["n_positive"] == 1

    res = ev.cross_validate(x, np.full(50, np.nan))
    assert res["status"] == ev.NOT_ENOUGH and res["n_patients"] == 0


def test_fold_without_a_class_skips_auc(monkeypatch):
    x, y = _signal(n=40, seed=7)

    class OneClassTest:
        def __init__(self, **kw):
            pass

        def split(self, xx, yy):
            neg, pos = np.flatnonzero(yy == 0), np.flatnonzero(yy == 1)
            test = neg[:5]  # only negatives in the test part
            yield np.setdiff1d(np.arange(len(yy)), test), test
            test = np.concatenate([neg[5:10], pos[:5]])
            yield np.setdiff1d(np.arange(len(yy)), test), test

    monkeypatch.setattr(ev, "RepeatedStratifiedKFold", OneClassTest)
    res = ev.cross_validate(x, y, n_splits=2, n_repeats=1)
    assert res["n_folds"] == 2 and res["n_auc_skipped"] == 1
    assert math.isnan(res["fold_auc"][0]) and not math.isnan(res["fold_auc"][1])
    assert res["auc_mean"] == res["fold_auc"][1]
    assert not math.isnan(res["fold_f1"][0])
    assert "skipped" in res["message"]


def test_bad_inputs():
    x, y = _signal(n=20)
    with pytest.raises(ValueError, match="labels"):
        ev.cross_validate(x, y[:10])
    with pytest.raises(ValueError, match="0, 1"):
        ev.cross_validate(x, y * 2)
    with pytest.raises(ValueError, match="classifier"):
        ev.cross_validate(x, y, classifier="svm")


def test_labels_and_clinical_features():
    rows = [
        {"outcome_2y": 1, "donor_age": 70, "gfr_D15": 40, "creatinine_D15": 100, "creatinine_M12": 200},
        {"outcome_2y": None, "donor_age": "", "creatinine_M3": "150"},
        {"outcome_2y": "0"},
    ]
    lab = ev.labels_from_rows(rows, "2y")
    np.testing.assert_array_equal(np.isnan(lab), [False, True, False])
    assert lab[0] == 1 and lab[2] == 0
    np.testing.assert_array_equal(ev.labels_from_rows(pd.DataFrame(rows), "outcome_2y")[[0, 2]], [1, 0])
    with pytest.raises(ValueError, match="outcome"):
        ev.labels_from_rows([{"outcome_3y": 2}], "3y")

    f = ev.clinical_features(rows)
    names = list(ev.CLINICAL_FEATURE_NAMES)
    assert f.shape == (3, len(names)) == (3, 10)
    assert f[0, names.index("donor_age")] == 70 and f[0, names.index("gfr_D15")] == 40
    assert f[0, names.index("creatinine_std")] == pytest.approx(50.0)  # population std of 100, 200
    assert math.isnan(f[0, names.index("gfr_M3")])
    assert f[1, names.index("creatinine_M3")] == 150 and math.isnan(f[1, names.index("creatinine_std")])
    assert np.isnan(f[2]).all()


def test_clinical_features_on_synthetic_cohort():
    from napari_medimp.core.synth import sample_patients

    rows = sample_patients(120, seed=0)
    x = ev.clinical_features(rows)
    labels = {h: ev.labels_from_rows(rows, h) for h in ("2y", "3y", "4y")}
    df = ev.evaluate_feature_sets({"clinical values only": x}, labels, n_splits=5, n_repeats=5, seed=0)
    print(ev.to_markdown_table(df[["feature_set", "horizon", "n_patients", "n_positive", "auc_mean",
                                   "auc_std", "f1_mean", "f1_std"]]))
    auc = df.set_index("horizon")["auc_mean"]
    assert auc["2y"] > 0.6
    assert auc["mean"] == pytest.approx(auc[["2y", "3y", "4y"]].mean())


def test_evaluate_feature_sets_table():
    x, y = _signal(n=100, seed=8)
    rng = np.random.default_rng(9)
    sets = {"MEDIMP": x, "untrained encoder": rng.normal(size=(100, 5))}
    labels = {"2y": y, "3y": np.where(rng.random(100) < 0.97, 0.0, np.nan)}  # 3y: one class only
    df, details = ev.evaluate_feature_sets(sets, labels, n_splits=3, n_repeats=2, return_details=True)
    assert list(df.columns) == list(ev.COLUMNS)
    assert len(df) == 2 * (2 + 1)
    assert list(df["horizon"]) == ["2y", "3y", "mean"] * 2
    assert set(details) == {(s, h) for s in sets for h in labels}
    row = df[(df.feature_set == "MEDIMP") & (df.horizon == "3y")].iloc[0]
    assert row["status"] == ev.NOT_ENOUGH
    mean = df[(df.feature_set == "MEDIMP") & (df.horizon == "mean")].iloc[0]
    assert mean["auc_mean"] == pytest.approx(df.loc[0, "auc_mean"])  # NaN horizon ignored
    with pytest.raises(ValueError, match="number of patients"):
        ev.evaluate_feature_sets({"a": x[:50]}, labels)


def test_markdown_table_and_csv(tmp_path):
    df = pd.DataFrame({"feature_set": ["MEDIMP", "a|b"], "horizon": ["2y", "mean"],
                       "n_patients": pd.array([10, None], dtype="Int64"), "auc_mean": [0.81234, np.nan]})
    md = ev.to_markdown_table(df)
    assert md == (
        "| feature_set | horizon | n_patients | auc_mean |\n"
        "|---|---|---:|---:|\n"
        "| MEDIMP | 2y | 10 | 0.812 |\n"
        "| a\\|b | mean |  |  |\n"
    )
    assert ev.to_markdown_table(df, digits=2, columns=["auc_mean"]).splitlines()[2] == "| 0.81 |"
    path = ev.write_csv(df, tmp_path / "sub" / "results.csv")
    back = pd.read_csv(path)
    assert list(back.columns) == list(df.columns) and back.loc[0, "auc_mean"] == pytest.approx(0.81234)


def test_fit_heads_match_pipeline():
    x, y = _signal(n=90, d=6, seed=10)
    x[:, 5] = 3.0  # constant column: scaler scale 1
    y3 = y.copy()
    y3[:15] = np.nan
    x_nan = x.copy()
    x_nan[5:20, 2] = np.nan
    with pytest.warns(UserWarning, match="4y not fitted"):
        heads = ev.fit_heads(x_nan, {"2y": y, "3y": y3, "4y": np.zeros(90)}, C=0.5)
    assert set(heads) == {"2y", "3y"}  # 4y has one class: skipped (with a warning)
    xt = np.random.default_rng(11).normal(size=(30, 6))
    for h, labels in (("2y", y), ("3y", y3)):
        keep = ~np.isnan(labels)
        pipe = ev.build_pipeline(C=0.5).fit(x_nan[keep], labels[keep].astype(int))
        head = heads[h]
        np.testing.assert_allclose(head.predict_proba(xt), pipe.predict_proba(xt)[:, 1], atol=1e-8, rtol=0)
        # a missing value imputed with head.mean gives the pipeline's answer on the NaN row
        xq = xt[:3].copy()
        xq[:, 2] = np.nan
        filled = np.where(np.isnan(xq), head.mean, xq)
        np.testing.assert_allclose(head.predict_proba(filled), pipe.predict_proba(xq)[:, 1], atol=1e-8, rtol=0)
        assert head.features == FEATURES_ID and head.horizon == h
        assert head.extra["n_patients"] == int(keep.sum()) and head.extra["n_positive"] == int(labels[keep].sum())
        assert head.extra["C"] == 0.5 and head.extra["classifier"] == "logistic"
    assert heads["2y"].scale[5] == 1.0


def test_fit_heads_warns_on_one_class():
    x, _ = _signal(n=20)
    with pytest.warns(UserWarning, match="not fitted"):
        assert ev.fit_heads(x, {"2y": np.zeros(20)}) == {}
