"""Synthetic renal-graft cohort: geometry, kinetics, clinical statistics and reproducibility."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import stats

from napari_medimp.core import synth
from napari_medimp.core.io.nifti import load_nifti, read_sidecar

SMALL = {"grid": (12, 32, 40), "spacing": (8.0, 5.0, 5.0)}
HEALTHY = {"Fp": 0.045, "Eg": 0.22, "Tpt": 50, "Tlh": 50, "Tdt": 25, "Tcd": 25, "heterogeneity": 0.1}
IMPAIRED = {"Fp": 0.025, "Eg": 0.11, "Tpt": 90, "Tlh": 90, "Tdt": 45, "Tcd": 45, "heterogeneity": 0.1}


@pytest.fixture(scope="module")
def exam():
    return synth.simulate_exam(seed=0, patient_index=0, exam="D30")  # its speed: benchmarks/bench_synth.py


@pytest.fixture(scope="module")
def cohort_stats():
    return synth.sample_patients(200, seed=11)


def enhancement(made, label: int) -> np.ndarray:
    curve = made.volume.data[:, made.labels == label].mean(axis=1)
    return curve - curve[:3].mean()


def half_peak_time(times: np.ndarray, curve: np.ndarray) -> float:
    half = curve.max() / 2
    i = int(np.argmax(curve >= half))
    return float(times[i - 1] + (half - curve[i - 1]) / (curve[i] - curve[i - 1]) * (times[i] - times[i - 1]))


def test_exam_shapes_geometry_and_labels(exam):
    vol, labels = exam.volume, exam.labels
    assert vol.shape == (20, 24, 64, 80) and vol.data.dtype == np.float32
    assert np.array_equal(vol.data, np.rint(vol.data)) and vol.data.min() >= 0
    assert labels.shape == (24, 64, 80) and labels.dtype == np.uint8
    assert set(np.unique(labels)) == {0, 1, 2, 3, 4, 5}
    assert vol.spacing == pytest.approx((4.0, 2.5, 2.5))
    assert np.all(np.diag(vol.affine)[:3] > 0)
    times = vol.frame_times
    assert times[0] == 0 and times[-1] == pytest.approx(300.0) and np.all(np.diff(times) > 0)
    assert np.diff(times)[-1] > 5 * np.diff(times)[3]
    kidney = np.isin(labels, (synth.CORTEX, synth.MEDULLA, synth.COLLECTING_SYSTEM))
    for axis in range(3):
        profile = kidney.any(axis=tuple(a for a in range(3) if a != axis))
        assert not profile[0] and not profile[-1]
    voxel_ml = np.prod(vol.spacing) / 1000
    parenchyma = np.isin(labels, (synth.CORTEX, synth.MEDULLA)).sum() * voxel_ml
    assert parenchyma == pytest.approx(exam.params["kidney_volume_ml"], rel=0.1)
    medulla = (labels == synth.MEDULLA).sum() / np.isin(labels, (synth.CORTEX, synth.MEDULLA)).sum()
    assert 0.15 < medulla < 0.4
    # graft in the iliac fossa: off the midline on its own side, with air outside the body
    zz, yy, xx = np.nonzero(labels == synth.CORTEX)
    centre = vol.affine[:3, :3] @ np.array([xx.mean(), yy.mean(), zz.mean()]) + vol.affine[:3, 3]
    side = 1 if exam.params["patient"]["anatomy"]["side"] == "right" else -1
    assert side * centre[0] > 40
    assert (labels == synth.BACKGROUND).any()
    assert vol.metadata["sidecar"]["ContrastAgent"] == "gadoterate"


def test_cortex_enhances_before_medulla(exam):
    times = exam.volume.frame_times
    cortex = half_peak_time(times, enhancement(exam, synth.CORTEX))
    medulla = half_peak_time(times, enhancement(exam, synth.MEDULLA))
    artery = half_peak_time(times, enhancement(exam, synth.ARTERY))
    assert artery < cortex < medulla
    urine = enhancement(exam, synth.COLLECTING_SYSTEM)
    assert np.argmax(urine) > np.argmax(enhancement(exam, synth.CORTEX))
    assert urine[times < 60].max() < 0.2 * urine.max()


def test_lower_gfr_slows_medullary_uptake():
    times = None
    out = {}
    for name, overrides in (("healthy", HEALTHY), ("impaired", IMPAIRED)):
        made = synth.simulate_exam(seed=1, patient_index=2, exam="M3", overrides=overrides)
        times = made.volume.frame_times
        med = enhancement(made, synth.MEDULLA)
        i0, i1 = np.searchsorted(times, 52), np.searchsorted(times, 167)
        out[name] = {"gfr": made.params["gfr"], "slope": (med[i1] - med[i0]) / (times[i1] - times[i0]),
                     "ttp": times[np.argmax(med)]}
    assert out["impaired"]["gfr"] < 0.5 * out["healthy"]["gfr"]
    assert out["impaired"]["slope"] < 0.6 * out["healthy"]["slope"]
    assert out["impaired"]["ttp"] > out["healthy"]["ttp"]


def test_progression_leaves_image_traces():
    quiet = {"noise": False, "motion_scale": 0.0, "bias_strength": 0.0}
    cv, cortex_fraction = {}, {}
    for level, thickness in ((0.05, 9.0), (0.95, 5.0)):
        made = synth.simulate_exam(seed=2, patient_index=1, exam="M12", **quiet,
                                   overrides={"heterogeneity": level, "cortical_thickness_mm": thickness})
        peak = int(np.argmax(enhancement(made, synth.CORTEX)))
        cortex = made.labels == synth.CORTEX
        core = cortex & (np.abs(np.gradient(made.labels.astype(float), axis=(1, 2))).sum(axis=0) == 0)
        values = made.volume.data[peak][core] - made.volume.data[:3].mean(axis=0)[core]
        cv[level] = values.std() / values.mean()
        cortex_fraction[level] = cortex.sum() / np.isin(made.labels, (synth.CORTEX, synth.MEDULLA)).sum()
    assert cv[0.95] > 2 * cv[0.05]
    assert cortex_fraction[0.95] < cortex_fraction[0.05]
    # (a graft still recovering from delayed function at M3 gains filtration by M12 whatever its fibrosis)
    rising = [q for q in synth.sample_patients(30, seed=2)
              if q["exams"]["M12"]["fibrosis"] > q["exams"]["M3"]["fibrosis"] + 0.05
              and q["exams"]["M3"]["injury"] < 0.01]
    assert rising
    for q in rising:
        early, late = q["exams"]["M3"], q["exams"]["M12"]
        assert late["cortical_thickness_mm"] < early["cortical_thickness_mm"]
        assert late["heterogeneity"] > early["heterogeneity"]
        assert late["Tpt"] > early["Tpt"] and late["Tcd"] > early["Tcd"]
        assert late["Fp"] * late["Eg"] < early["Fp"] * early["Eg"]


def test_outcomes_follow_latent_progression(cohort_stats):
    progression = np.array([p["latent_progression"] for p in cohort_stats])
    for years in synth.OUTCOME_YEARS:
        outcome = np.array([p[f"outcome_{years}y"] for p in cohort_stats])
        assert 0.15 <= outcome.mean() <= 0.90  # creatinine > 110 umol/L: most single grafts (median ~120)
        assert stats.pointbiserialr(outcome, progression)[0] > 0.3
    assert np.mean([p["outcome_4y"] for p in cohort_stats]) >= np.mean([p["outcome_2y"] for p in cohort_stats])
    donor = np.array([p["donor_age"] for p in cohort_stats])
    assert donor.min() >= 18 and donor.max() <= 85 and 45 < np.median(donor) < 65


def test_creatinine_falls_with_gfr(cohort_stats):
    gfr = [p["exams"][e]["gfr"] for p in cohort_stats for e in synth.EXAMS]
    creatinine = [p["exams"][e]["creatinine"] for p in cohort_stats for e in synth.EXAMS]
    assert stats.spearmanr(gfr, creatinine)[0] < -0.6
    assert 60 < np.median(creatinine) < 160


def test_gfr_follows_kinetic_parameters(cohort_stats):
    for p in cohort_stats:
        for e in synth.EXAMS:
            ex = p["exams"][e]
            expected = 60 * ex["Fp"] * ex["Eg"] * ex["kidney_volume_ml"] * 1.73 / p["bsa"]
            assert ex["gfr"] == pytest.approx(expected, rel=1e-9)
            if p[f"gfr_{e}"] is not None:
                assert p[f"gfr_{e}"] == pytest.approx(expected, abs=0.051)
    p = cohort_stats[0]
    halved = synth.exam_parameters(p, "M3", {"Fp": p["exams"]["M3"]["Fp"] / 2})
    assert halved["gfr"] == pytest.approx(p["exams"]["M3"]["gfr"] / 2)
    with pytest.raises(KeyError):
        synth.exam_parameters(p, "M3", {"gfr": 10})


def test_clinical_table_columns_and_missing_values():
    patients = synth.sample_patients(300, seed=5)
    table = synth.clinical_table(patients)
    assert tuple(table.columns) == synth.CLINICAL_COLUMNS
    assert table["patient_id"].iloc[0] == "P0001" and table["patient_id"].is_unique
    for col in synth.CLINICAL_COLUMNS[3:11]:
        assert 0.02 <= table[col].isna().mean() <= 0.15
    outcomes = [f"outcome_{y}y" for y in synth.OUTCOME_YEARS]
    assert not table[outcomes].isna().any().any()
    assert table["donor_age"].isna().any() and table["bsa"].dropna().between(1.2, 2.8).all()
    image_missing = np.mean([p["exams"][e]["image_missing"] for p in patients for e in synth.EXAMS])
    assert 0.04 <= image_missing <= 0.18
    text = synth.clinical_csv(patients[:3])
    assert text.splitlines()[0] == ",".join(synth.CLINICAL_COLUMNS)


def test_patients_do_not_depend_on_cohort_size():
    five = synth.sample_patients(5, seed=9)
    assert synth.sample_patient(9, 3) == five[3]
    assert synth.sample_patients(2, seed=9, start=3) == five[3:]
    assert synth.sample_patient(10, 3) != five[3]


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_cohort_files_are_reproducible(tmp_path):
    calls = []
    summary = synth.generate_cohort(tmp_path / "a", n_patients=2, seed=3, progress=lambda d, t: calls.append((d, t)),
                                    **SMALL)
    synth.generate_cohort(tmp_path / "b", n_patients=2, seed=3, **SMALL)
    synth.generate_cohort(tmp_path / "c", n_patients=2, seed=4, **SMALL)
    a, b, c = (_files(tmp_path / k) for k in "abc")
    assert calls == [(1, 2), (2, 2)]
    assert a == b
    assert a["clinical.csv"] != c["clinical.csv"]
    shared = set(a) & set(c) - {"clinical.csv", "ground_truth.json"}
    assert shared and all(a[k] != c[k] for k in shared if k.endswith(".nii.gz"))

    truth = json.loads(a["ground_truth.json"])
    assert truth["seed"] == 3 and truth["generator_version"] == synth.GENERATOR_VERSION
    assert truth["settings"]["grid"] == [12, 32, 40]
    written = 0
    for p in truth["patients"]:
        for e in synth.EXAMS:
            dce = tmp_path / "a" / synth.dce_path("", p["patient_id"], e)
            if p["exams"][e]["image_missing"]:
                assert not dce.exists()
                continue
            written += 1
            vol = load_nifti(dce, lazy=False)
            seg = nib.load(tmp_path / "a" / synth.seg_path("", p["patient_id"], e))
            assert vol.metadata["source_dtype"] == "int16" and seg.get_data_dtype() == np.uint8
            assert vol.shape == (20, 12, 32, 40) and np.allclose(vol.affine, seg.affine)
            assert set(np.unique(np.asarray(seg.dataobj))) <= set(synth.LABEL_NAMES)
            assert np.allclose(vol.frame_times, synth.SynthSettings().times())
            side = read_sidecar(dce)
            assert {"MagneticFieldStrength", "FlipAngle", "RepetitionTime", "ContrastAgent"} <= set(side)
            assert {"Fp", "Eg", "Tpt", "gfr", "kidney_volume_ml", "motion_mm", "render"} <= set(p["exams"][e])
    assert written == summary["exams_written"] > 0


def test_hyperfiltration_hides_structural_loss_from_gfr_at_the_exams_only():
    from napari_medimp.core.synth.physiology import kinetics_at

    null = synth.sample_patients(40, seed=12, settings=synth.SynthSettings(hyperfiltration=0.0))
    hidden = synth.sample_patients(40, seed=12, settings=synth.SynthSettings(hyperfiltration=0.4))
    shares = []
    for a, b in zip(null, hidden, strict=True):
        # same people: structure, fibrosis and outcomes do not depend on the setting
        assert a["outcome_4y"] == b["outcome_4y"] and a["outcomes"] == b["outcomes"]
        assert a["hyperfiltration"] == 0.0 and 0.0 <= b["hyperfiltration"] <= 0.8
        for exam in synth.EXAMS:
            ea, eb = a["exams"][exam], b["exams"][exam]
            assert ea["cortical_thickness_mm"] == eb["cortical_thickness_mm"]
            assert ea["kidney_volume_ml"] == eb["kidney_volume_ml"] and ea["fibrosis"] == eb["fibrosis"]
            assert eb["gfr"] >= ea["gfr"] - 1e-9
            # GFR = structural + h (undamaged - structural), by hand from the uncompensated kinetics
            undamaged = ea["gfr"] / ea["gfr_structural_ratio"]
            expected = ea["gfr"] + b["hyperfiltration"] * (undamaged - ea["gfr"])
            if eb["Eg"] < 0.5:  # below the extraction cap
                assert eb["gfr"] == pytest.approx(expected, rel=1e-9)
        shares.append(b["hyperfiltration"])
        # outcome dates are never compensated
        day = 3 * 365.25
        assert kinetics_at(b, day, compensated=False)["Eg"] == kinetics_at(a, day)["Eg"]
    assert 0.25 < np.mean(shares) < 0.55  # U(0, 0.8): mean 0.4
    with pytest.raises(ValueError, match="hyperfiltration"):
        synth.SynthSettings(hyperfiltration=0.7)


# --------------------------------------------------------------------------------------------------
# the calibrated world, the earlier one, and the null setting
# --------------------------------------------------------------------------------------------------
def test_transplant_world_is_one_graft_as_registries_report_it(cohort_stats):
    """Single-graft eGFR about 45-60 mL/min/1.73 m2 at one year with most recipients below 60, lower at
    D15 (delayed graft function: dialysis-level filtration in the first week), about a third of donors
    aged 65 or more, and creatinine series that are sometimes unstable early."""
    gfr = {e: np.array([p["exams"][e]["gfr"] for p in cohort_stats]) for e in synth.EXAMS}
    assert 45 <= np.median(gfr["M12"]) <= 60 and np.mean(gfr["M12"] < 60) > 0.5
    assert np.median(gfr["D15"]) < np.median(gfr["M12"]) - 5
    dgf = [p for p in cohort_stats if p["latent"]["delayed_graft_function"]]
    assert 0.15 <= len(dgf) / len(cohort_stats) <= 0.35
    first_week = [synth.physiology.derive(p, synth.physiology.kinetics_at(p, 7))["gfr"] for p in dgf]
    assert np.median(first_week) < 15
    donors = np.array([p["donor_age"] for p in cohort_stats])
    assert 0.25 <= np.mean(donors >= 65) <= 0.45
    from napari_medimp.core.synth.summary import bin_shares

    shares = bin_shares(cohort_stats)["visits"]
    assert shares["D30"]["creatinine"]["unstable"] + shares["M3"]["creatinine"]["unstable"] > 0.06
    for visit in shares.values():  # every GFR bin share is a share
        assert sum(visit["gfr"][b] for b in synth_bins()) == pytest.approx(1.0)
    assert shares["M12"]["gfr"]["high"] < 0.5  # no longer "high" for most exams


def synth_bins():
    from napari_medimp.core.prompts import GFR_BINS

    return GFR_BINS


def test_earlier_world_is_kept_as_a_setting():
    old = synth.sample_patients(100, seed=11, settings=synth.SynthSettings(world="v1"))
    assert np.median([p["exams"]["M12"]["gfr"] for p in old]) > 65  # a pair of kidneys' flow in one graft
    assert all(p["world"] == "v1" for p in old)
    with pytest.raises(ValueError, match="world"):
        synth.SynthSettings(world="mars")
    with pytest.raises(ValueError, match="images"):
        synth.SynthSettings(images="mine")


def test_null_setting_shows_another_patients_graft(tmp_path):
    synth.generate_cohort(tmp_path / "own", n_patients=1, seed=3, **SMALL)
    synth.generate_cohort(tmp_path / "null", n_patients=1, seed=3, images="other", **SMALL)
    own, null = (json.loads((tmp_path / k / "ground_truth.json").read_text()) for k in ("own", "null"))
    assert (tmp_path / "own" / "clinical.csv").read_text() == (tmp_path / "null" / "clinical.csv").read_text()
    p = null["patients"][0]
    assert p["images_from"]["index"] == synth.physiology.OTHER_PATIENT_OFFSET
    other = synth.sample_patient(3, synth.physiology.OTHER_PATIENT_OFFSET)
    for e in synth.EXAMS:
        if p["exams"][e]["image_missing"]:
            continue
        a = load_nifti(tmp_path / "own" / synth.dce_path("", "P0001", e), lazy=False)
        b = load_nifti(tmp_path / "null" / synth.dce_path("", "P0001", e), lazy=False)
        assert not np.array_equal(a.data, b.data)
        assert p["exams"][e]["shown"]["gfr"] == pytest.approx(other["exams"][e]["gfr"], rel=1e-6)
        side = read_sidecar(tmp_path / "null" / synth.dce_path("", "P0001", e))
        assert side["PatientID"] == "P0001" and side["Exam"] == e  # the file still belongs to its patient
        assert side["DaysAfterTransplantation"] == synth.EXAM_DAYS[e]
    assert "shown" not in own["patients"][0]["exams"]["D15"]


def test_synth_summary_prints_the_bins_without_writing(tmp_path, capsys):
    from napari_medimp.cli import main

    assert main(["synth", "--summary", "--patients", "30", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert "| GFR | medium |" in out and "distinct prompt contents" in out
    assert main(["synth", "--patients", "1"]) == 2  # a command-line problem
    assert "--out" in capsys.readouterr().err
    assert main(["synth", "--summary", "--patients", "0"]) != 0
    assert "at least 1" in capsys.readouterr().err
