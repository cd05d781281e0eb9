"""Patients of the synthetic cohort: demographics, latent graft course, kinetics, GFR, creatinine, outcomes.

Everything here is cheap (no image is rendered): :func:`sample_patient` draws one patient from its own
random streams, seeded by ``(seed, patient index, stream)``, so a patient never depends on how many
others are drawn. Parameter ranges and their basis are listed in the package docstring.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from ..terms import (
    ARTERY,
    BACKGROUND,
    COLLECTING_SYSTEM,
    CORTEX,
    EXAMS,
    HORIZON_YEARS,
    MEDULLA,
    MG_DL_TO_UMOL_L,
    SURROUNDING_TISSUE,
)

GENERATOR_VERSION = "2.0.0"

#: The worlds the generator can draw patients from (setting ``world``). Every number is a physiological
#: or registry figure, set before any model was trained on the result (sources in the package docstring).
#:
#: ``"transplant"`` (default since 2.0): one grafted kidney. Plasma flow per mL of parenchyma is one
#: kidney's share of renal plasma flow (about 300 mL/min per healthy kidney of ~175 mL) lowered by
#: calcineurin-inhibitor vasoconstriction, which makes a single graft's eGFR about 45-60 mL/min/1.73 m2 at
#: one year; delayed graft function is a strong, decaying loss of filtration (eGFR at D15 about half its
#: later level) with more fibrosis afterwards; donor ages follow French deceased-donor figures (about a
#: third aged 65 or more; 15 % living donors).
#: ``"v1"``: generator 1.x (renal plasma flow of a healthy pair of kidneys in one graft, mild injury,
#: 82 % deceased donors aged N(56, 15)): most exams read GFR "high"; kept to reproduce earlier cohorts.
WORLDS: dict[str, dict[str, float]] = {
    "transplant": {
        "fp0": 0.034,  # mL/s per mL parenchyma: ~360 mL/min of plasma for a 175 mL young donor kidney ...
        "cni_flow": 0.80,  # ... times calcineurin-inhibitor afferent vasoconstriction (-20 % flow)
        "solitary_extraction": 1.25,  # a solitary kidney's single-nephron hyperfiltration (with hypertrophy: +40 %)
        "deceased_share": 0.85, "deceased_age_mean": 59.0, "deceased_age_sd": 15.0,
        "living_age_mean": 51.0, "living_age_sd": 10.0, "max_donor_age": 85.0,
        "dgf_injury_low": 0.6, "dgf_injury_high": 0.95, "injury_tau_low": 10.0, "injury_tau_high": 30.0,
        "injury_flow": 0.30, "injury_extraction": 1.3, "dgf_fibrosis": 0.05,
    },
    "v1": {
        "fp0": 0.051, "cni_flow": 1.0, "solitary_extraction": 1.0,
        "deceased_share": 0.82, "deceased_age_mean": 56.0, "deceased_age_sd": 15.0,
        "living_age_mean": 50.0, "living_age_sd": 10.0, "max_donor_age": 80.0,
        "dgf_injury_low": 0.3, "dgf_injury_high": 0.7, "injury_tau_low": 8.0, "injury_tau_high": 25.0,
        "injury_flow": 0.25, "injury_extraction": 0.6, "dgf_fibrosis": 0.0,
    },
}
#: what the images of an exam show (setting ``images``): ``"own"`` the patient's own graft; ``"other"``
#: (the null setting) the graft of another patient of the same world, never part of the cohort
#: (patient index + :data:`OTHER_PATIENT_OFFSET`, same seed), so the images carry nothing of the
#: clinical values and prompts beyond what every graft shares
IMAGE_SOURCES = ("own", "other")
OTHER_PATIENT_OFFSET = 1_000_000


def world_of(patient: dict) -> dict[str, float]:
    """The world parameters a sampled patient was drawn from (generator 1.x patients carry none: "v1")."""
    return WORLDS[patient.get("world", "v1")]

EXAM_DAYS = {"D15": 15, "D30": 30, "M3": 90, "M12": 365}
OUTCOME_YEARS = HORIZON_YEARS

SOFT_TISSUE = SURROUNDING_TISSUE
#: label keys written into the generated files
LABEL_NAMES = {
    BACKGROUND: "background",
    SOFT_TISSUE: "soft_tissue",
    CORTEX: "cortex",
    MEDULLA: "medulla",
    COLLECTING_SYSTEM: "collecting_system",
    ARTERY: "artery",
}

KINETIC_KEYS = ("Fp", "Eg", "fc", "Tg", "Tv", "Tpt", "Tlh", "Tdt", "Tcd")
#: exam parameters that :func:`exam_parameters` accepts as overrides (derived values follow them)
OVERRIDABLE = (*KINETIC_KEYS, "BAT", "collecting_transit_s", "kidney_volume_ml", "cortical_thickness_mm",
               "heterogeneity")

CLINICAL_COLUMNS = (
    "patient_id", "donor_age", "bsa",
    *(f"gfr_{e}" for e in EXAMS),
    *(f"creatinine_{e}" for e in EXAMS),
    *(f"outcome_{y}y" for y in OUTCOME_YEARS),
)

UMOL_PER_MG_DL = MG_DL_TO_UMOL_L
DAYS_PER_YEAR = 365.25

# streams of the per-patient random generators
_S_CLINICAL, _S_ANATOMY, _S_LAB, _S_MISSING, _S_RESERVE = 0, 1, 2, 3, 4
_S_EXAM = 10
S_FIELDS = 5
S_RENDER = 20


@dataclass(frozen=True)
class SynthSettings:
    """Acquisition and cohort settings; every field is recorded in ``ground_truth.json``."""

    grid: tuple[int, int, int] = (24, 64, 80)
    spacing: tuple[float, float, float] = (4.0, 2.5, 2.5)
    n_frames: int = 20
    duration_s: float = 300.0
    n_baseline: int = 3
    baseline_interval_s: float = 4.0
    n_first_pass: int = 11
    first_pass_interval_s: float = 4.0
    frame_times: tuple[float, ...] | None = None
    injection_time_s: float = 8.0
    dose_mmol_per_kg: float = 0.05
    field_strengths: tuple[float, ...] = (1.5, 3.0)
    field_weights: tuple[float, ...] = (0.6, 0.4)
    agent: str = "gadoterate"
    snr: float = 30.0
    noise: bool = True
    motion_scale: float = 1.0
    bias_strength: float = 0.15
    psf_sigma_voxels: tuple[float, float, float] = (0.3, 0.5, 0.5)
    fat_suppression: float = 0.5
    heterogeneity_levels: int = 4
    kinetic_dt_s: float = 0.5
    creatinine_threshold_umol: float = 110.0
    graft_loss_gfr: float = 15.0
    p_missing_visit: float = 0.03
    p_missing_image: float = 0.07
    p_missing_lab: float = 0.04
    p_missing_demographic: float = 0.03
    #: mean share of the filtration lost to structural damage that the remaining nephrons make up by
    #: hyperfiltration at the first-year exams; each patient draws U(0, 2 x this), capped at 0.95
    #: (renal functional reserve differs between people). 0 = none: GFR and creatinine show all the
    #: damage, the null setting. Spent by the outcome dates.
    hyperfiltration: float = 0.4
    #: the world patients are drawn from, one of :data:`WORLDS`
    world: str = "transplant"
    #: whose graft the images show, one of :data:`IMAGE_SOURCES` ("other" is the null setting)
    images: str = "own"

    def __post_init__(self):
        if self.world not in WORLDS:
            raise ValueError(f"world must be one of {', '.join(WORLDS)}, got {self.world!r}")
        if self.images not in IMAGE_SOURCES:
            raise ValueError(f"images must be one of {', '.join(IMAGE_SOURCES)}, got {self.images!r}")
        if not 0.0 <= self.hyperfiltration <= 0.5:
            raise ValueError(f"hyperfiltration must be in [0, 0.5] (a mean share), got {self.hyperfiltration}")
        if len(self.grid) != 3 or min(self.grid) < 4:
            raise ValueError(f"grid must be 3 sizes >= 4 (z, y, x), got {self.grid}")
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise ValueError(f"spacing must be 3 positive sizes in mm (z, y, x), got {self.spacing}")
        if len(self.field_strengths) != len(self.field_weights) or not self.field_strengths:
            raise ValueError("field_strengths and field_weights must have the same (non-zero) length")
        if self.frame_times is None and self.n_frames < self.n_baseline + 2:
            raise ValueError("n_frames must exceed n_baseline + 1")
        times = self.times()
        if times[0] < 0 or np.any(np.diff(times) <= 0):
            raise ValueError("frame times must be non-negative and strictly increasing")

    def times(self) -> np.ndarray:
        """Frame times in seconds: baseline, dense first pass, then geometrically sparser."""
        if self.frame_times is not None:
            return np.asarray(self.frame_times, dtype=float)
        base = np.arange(self.n_baseline) * self.baseline_interval_s
        start = self.n_baseline * self.baseline_interval_s
        n_dense = max(1, min(self.n_first_pass, self.n_frames - self.n_baseline - 1))
        dense = start + np.arange(n_dense) * self.first_pass_interval_s
        n_late = self.n_frames - self.n_baseline - n_dense
        last = dense[-1]
        if n_late > 0:
            ratio = (self.duration_s / last) ** (1.0 / n_late)
            late = last * ratio ** np.arange(1, n_late + 1)
        else:
            late = np.zeros(0)
        return np.round(np.concatenate([base, dense, late]), 3)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["times"] = self.times().tolist()
        return out


def rng_for(seed: int, index: int, stream: int) -> np.random.Generator:
    """The random generator of one stream of one patient."""
    if seed < 0 or index < 0:
        raise ValueError("seed and patient index must be non-negative")
    return np.random.default_rng([int(seed), int(index), int(stream)])


def patient_id(index: int) -> str:
    return f"P{index + 1:04d}"


# --------------------------------------------------------------------------------------------------
# physiology
# --------------------------------------------------------------------------------------------------
def single_kidney_gfr(Fp: float, Eg: float, volume_ml: float) -> float:
    """Absolute single-kidney GFR in mL/min: the filtered plasma flow ``Eg * Fp`` (mL/s per mL) of
    the 7-compartment model times the parenchymal volume, times 60."""
    return 60.0 * Fp * Eg * volume_ml


def normalised_gfr(gfr_ml_min: float, bsa: float) -> float:
    """GFR in mL/min/1.73 m2."""
    return gfr_ml_min * 1.73 / bsa


def creatinine_from_gfr(gfr: float, age: float, sex: str, generation: float = 1.0) -> float:
    """Serum creatinine (umol/L) from GFR (mL/min/1.73 m2): the CKD-EPI 2021 equation inverted on its
    upper branch (creatinine above kappa, exponent -1.2) over the whole range, so that creatinine stays
    close to inversely proportional to GFR; times a creatinine-generation factor (muscle mass)."""
    gfr = max(float(gfr), 1.0)
    kappa = 0.9 if sex == "M" else 0.7
    top = 142.0 * 0.9938**age * (1.0 if sex == "M" else 1.012)
    return kappa * (gfr / top) ** (-1 / 1.2) * UMOL_PER_MG_DL * generation


def fibrosis_at(latent: dict, day: float) -> float:
    """Interstitial fibrosis fraction (latent progression) at ``day`` after transplantation."""
    years = day / DAYS_PER_YEAR
    f = latent["fibrosis_0"] + latent["fibrosis_rate_per_year"] * years
    onset = latent.get("rejection_onset_years")
    if onset is not None and years > onset:
        f += latent["rejection_rate_per_year"] * (years - onset)
    return float(min(f, 0.97))


def injury_at(latent: dict, day: float) -> float:
    """Acute (ischaemia-reperfusion) injury, decaying after transplantation."""
    return float(latent["injury_0"] * math.exp(-day / latent["injury_tau_days"]))


def volume_at(patient: dict, day: float, fibrosis: float) -> float:
    """Parenchymal volume (mL): compensatory hypertrophy over the first months, shrinkage with fibrosis."""
    anat = patient["anatomy"]
    growth = 1.0 + anat["hypertrophy"] * (1.0 - math.exp(-day / 60.0))
    return float(anat["volume_0_ml"] * growth * (1.0 - 0.35 * fibrosis))


#: single-nephron hyperfiltration cannot raise the glomerular extraction fraction above this
MAX_EXTRACTION = 0.5


def kinetics_at(patient: dict, day: float, compensated: bool = True) -> dict:
    """Primary exam parameters at ``day``: kinetics, volume, thickness, heterogeneity.

    ``compensated`` applies the patient's ``hyperfiltration`` share H (:class:`SynthSettings`): the
    remaining nephrons raise their filtration so that the kinetic GFR recovers H of what structural
    damage took (``GFR = GFR_structural + H (GFR_undamaged - GFR_structural)``, through the extraction
    fraction, capped at :data:`MAX_EXTRACTION`). Structure (volume, cortical thickness, heterogeneity,
    transit times) keeps showing all the damage. Exams use it; outcome dates do not (the compensation
    is spent by then). ``gfr_structural_ratio`` is the uncompensated GFR over the undamaged one."""
    latent, k0, world = patient["latent"], patient["kinetics_0"], world_of(patient)
    f, inj = fibrosis_at(latent, day), injury_at(latent, day)
    flow_injury, extraction_injury = 1 - world["injury_flow"] * inj, max(1 - world["injury_extraction"] * inj, 0.02)
    tubular = 1.0 + 1.0 * f + 1.5 * inj
    vascular = 1.0 + 0.3 * f
    volume = volume_at(patient, day, f)
    fp, eg = k0["Fp"] * (1 - 0.65 * f) * flow_injury, k0["Eg"] * (1 - 0.55 * f) * extraction_injury
    undamaged = k0["Fp"] * flow_injury * k0["Eg"] * extraction_injury * volume_at(patient, day, 0.0)
    ratio = fp * eg * volume / undamaged
    h = float(patient.get("hyperfiltration", 0.0)) if compensated else 0.0
    if h > 0 and ratio < 1.0:
        eg = min(eg * (ratio + h * (1.0 - ratio)) / ratio, MAX_EXTRACTION)
    return {
        "day": day,
        "fibrosis": f,
        "injury": inj,
        "gfr_structural_ratio": float(ratio),
        "hyperfiltration": h,
        "Fp": fp,
        "Eg": eg,
        "fc": k0["fc"],
        "Tg": k0["Tg"] * vascular,
        "Tv": k0["Tv"] * vascular,
        "Tpt": k0["Tpt"] * tubular,
        "Tlh": k0["Tlh"] * tubular,
        "Tdt": k0["Tdt"] * tubular,
        "Tcd": k0["Tcd"] * tubular,
        "collecting_transit_s": k0["collecting_transit_s"] * (1 + 0.5 * f),
        "kidney_volume_ml": volume,
        "cortical_thickness_mm": patient["anatomy"]["cortical_thickness_0_mm"] * (1 - 0.5 * f),
        "heterogeneity": float(min(1.0, 0.1 + 1.2 * f + 0.5 * inj)),
    }


@lru_cache(maxsize=1)
def sinus_fraction() -> float:
    """Fraction of the kidney ellipsoid taken by the renal sinus (scale-free, computed once)."""
    n = 161
    g = np.linspace(-1, 1, n)
    x, y, z = np.meshgrid(g, g, g, indexing="ij", sparse=True)
    ball = x**2 + y**2 + z**2 <= 1
    cu, cv = SINUS_CENTRE_V, SINUS_SEMI
    sinus = (x / cv[0]) ** 2 + ((y - cu) / cv[1]) ** 2 + (z / cv[2]) ** 2 <= 1
    return float((ball & sinus).sum() / ball.sum())


#: renal sinus in kidney coordinates normalised by the semi-axes: centre along the hilum axis, semi-axes
SINUS_CENTRE_V = 0.5
SINUS_SEMI = (0.45, 0.55, 0.42)


def derive(patient: dict, params: dict) -> dict:
    """Add the quantities that follow from the primary exam parameters (GFR, kidney geometry)."""
    out = dict(params)
    gfr_abs = single_kidney_gfr(out["Fp"], out["Eg"], out["kidney_volume_ml"])
    out["gfr_ml_min"] = gfr_abs
    out["gfr"] = normalised_gfr(gfr_abs, patient["bsa"])
    anat = patient["anatomy"]
    outer = out["kidney_volume_ml"] * 1000.0 / (1.0 - sinus_fraction())
    a = (3 * outer / (4 * math.pi * anat["shape_b"] * anat["shape_c"])) ** (1 / 3)
    out["semi_axes_mm"] = [a, a * anat["shape_b"], a * anat["shape_c"]]
    out["kidney_length_mm"] = 2 * a
    out["cortical_thickness_mm"] = float(min(out["cortical_thickness_mm"], 0.35 * out["semi_axes_mm"][2]))
    return out


def exam_parameters(patient: dict, exam: str, overrides: dict | None = None) -> dict:
    """Exam parameters of a sampled patient, with ``overrides`` (keys in :data:`OVERRIDABLE`) applied
    before the derived values (GFR, geometry) are recomputed."""
    if exam not in EXAM_DAYS:
        raise ValueError(f"unknown exam {exam!r}; expected one of {EXAMS}")
    params = dict(patient["exams"][exam])
    if overrides:
        unknown = set(overrides) - set(OVERRIDABLE)
        if unknown:
            raise KeyError(f"cannot override {sorted(unknown)}; allowed: {OVERRIDABLE}")
        params.update({k: float(v) for k, v in overrides.items()})
        params["overridden"] = sorted(overrides)
    return derive(patient, params)


# --------------------------------------------------------------------------------------------------
# sampling
# --------------------------------------------------------------------------------------------------
def _clip(v: float, lo: float, hi: float) -> float:
    return float(min(max(v, lo), hi))


def _lognormal(rng: np.random.Generator, sd: float) -> float:
    """Multiplicative factor exp(N(0, sd)) truncated at two standard deviations."""
    return math.exp(_clip(rng.normal(0, sd), -2 * sd, 2 * sd))


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    return v / np.linalg.norm(v)


def _rotate_about(v: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    axis = _unit(axis)
    return (v * math.cos(angle) + np.cross(axis, v) * math.sin(angle)
            + axis * np.dot(axis, v) * (1 - math.cos(angle)))


def _demographics(rng: np.random.Generator, world: dict) -> dict:
    sex = "M" if rng.random() < 0.62 else "F"
    age = _clip(rng.normal(52, 13), 18, 78)
    height = _clip(rng.normal(175, 7) if sex == "M" else rng.normal(162, 6.5), 145, 200)
    bmi = _clip(math.exp(rng.normal(math.log(25.5), 0.16)), 17, 42)
    weight = bmi * (height / 100) ** 2
    deceased = rng.random() < world["deceased_share"]
    donor_age = round(_clip(rng.normal(world["deceased_age_mean"], world["deceased_age_sd"]) if deceased
                            else rng.normal(world["living_age_mean"], world["living_age_sd"]),
                            18, world["max_donor_age"]))
    return {
        "sex": sex,
        "recipient_age": age,
        "height_cm": height,
        "weight_kg": weight,
        "bmi": bmi,
        "bsa": math.sqrt(height * weight / 3600.0),
        "hct": _clip(rng.normal(0.36, 0.04), 0.26, 0.47),
        "donor_type": "deceased" if deceased else "living",
        "donor_age": int(donor_age),
    }


def _latent(rng: np.random.Generator, donor_age: float, deceased: bool, world: dict) -> dict:
    f0 = _clip(0.02 + 0.0035 * (donor_age - 18) + rng.normal(0, 0.04), 0.0, 0.6)
    rate = 0.030 * math.exp(0.02 * (donor_age - 50)) * _lognormal(rng, 0.6)
    rejection = bool(rng.random() < 0.15)
    onset = float(rng.uniform(0.1, 4.0)) if rejection else None
    rej_rate = float(rng.uniform(0.08, 0.25)) if rejection else 0.0
    p_dgf = _clip(0.12 + 0.004 * (donor_age - 18), 0, 0.5) if deceased else 0.05
    dgf = bool(rng.random() < p_dgf)
    injury0 = rng.uniform(world["dgf_injury_low"], world["dgf_injury_high"]) if dgf else rng.uniform(0.0, 0.15)
    tau = rng.uniform(world["injury_tau_low"], world["injury_tau_high"])
    latent = {
        "fibrosis_0": min(f0 + world["dgf_fibrosis"] * dgf, 0.6),
        "fibrosis_rate_per_year": rate,
        "rejection": rejection,
        "rejection_onset_years": onset,
        "rejection_rate_per_year": rej_rate,
        "delayed_graft_function": dgf,
        "injury_0": float(injury0),
        "injury_tau_days": float(tau),
    }
    latent["progression"] = fibrosis_at(latent, 3 * DAYS_PER_YEAR)
    return latent


def _kinetics0(rng: np.random.Generator, donor_age: float, world: dict) -> dict:
    return {
        "Fp": world["fp0"] * world["cni_flow"] * (1 - 0.005 * (donor_age - 40)) * _lognormal(rng, 0.06),
        "Eg": _clip(0.21 * (1 - 0.004 * (donor_age - 40)) * _lognormal(rng, 0.06), 0.10, 0.26)
              * world["solitary_extraction"],
        "fc": float(rng.uniform(0.87, 0.93)),
        "Tg": float(rng.uniform(3, 5)),
        "Tv": float(rng.uniform(8, 14)),
        "Tpt": float(rng.uniform(45, 75)),
        "Tlh": float(rng.uniform(45, 75)),
        "Tdt": float(rng.uniform(20, 40)),
        "Tcd": float(rng.uniform(20, 40)),
        "collecting_transit_s": float(rng.uniform(150, 400)),
        "arrival_delay_s": float(rng.uniform(8, 16)),
    }


def _pyramids(rng: np.random.Generator) -> list[list[float]]:
    n = int(rng.integers(8, 13))
    dirs: list[np.ndarray] = []
    for _ in range(400):
        if len(dirs) == n:
            break
        d = _unit(rng.normal(size=3))
        if d[1] > 0.3:
            continue
        if all(np.dot(d, e) < math.cos(0.55) for e in dirs):
            dirs.append(d)
    return [d.round(6).tolist() for d in dirs]


def _ellipsoid_half_extent(rotation: np.ndarray, semi: np.ndarray) -> np.ndarray:
    return np.sqrt(((rotation * semi[None, :]) ** 2).sum(axis=1))


def _line_clear_of_kidney(point, direction, centre, rotation, semi, margin) -> bool:
    s = np.linspace(-150, 150, 301)
    pts = point[None, :] + s[:, None] * direction[None, :]
    local = (pts - centre) @ rotation
    rho = np.sqrt(((local / (semi + margin)) ** 2).sum(axis=1))
    return bool(rho.min() > 1.0)


def _anatomy(rng: np.random.Generator, demo: dict, donor_age: float) -> dict:
    bmi, male = demo["bmi"], demo["sex"] == "M"
    side = "right" if rng.random() < 0.8 else "left"
    s = 1.0 if side == "right" else -1.0
    anat: dict[str, Any] = {
        "side": side,
        "volume_0_ml": _clip(175 * (1 - 0.004 * (donor_age - 40)) * _lognormal(rng, 0.08), 90, 280),
        "hypertrophy": float(rng.uniform(0.05, 0.20)),
        "shape_b": float(rng.uniform(0.47, 0.57)),
        "shape_c": float(rng.uniform(0.38, 0.46)),
        "cortical_thickness_0_mm": float(rng.uniform(6.5, 9.5)),
        "pyramid_width": float(rng.uniform(0.50, 0.60)),
    }
    anat["pyramids"] = _pyramids(rng)
    body = (
        _clip(140 + 3.0 * (bmi - 25) + 10 * male + rng.normal(0, 6), 120, 210),
        _clip(95 + 3.0 * (bmi - 25) + rng.normal(0, 5), 80, 160),
    )
    anat["body_semi_axes_mm"] = list(body)
    anat["fat_mm"] = _clip(8 + 1.6 * (bmi - 20) + 4 * (not male) + rng.normal(0, 3), 4, 50)
    anat["wall_mm"] = float(rng.uniform(8, 14))

    elevation = math.radians(rng.uniform(10, 35))
    azimuth = math.radians(rng.uniform(10, 60))
    twist = math.radians(rng.uniform(-40, 40))
    u = np.array([s * math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth),
                  math.sin(elevation)])
    p = np.array([-s * math.sin(azimuth), math.cos(azimuth), 0.0])
    if np.dot(p[:2], [-s, -0.2]) < 0:
        p = -p
    v = _unit(_rotate_about(p, u, twist))
    w = np.cross(u, v)
    rotation = np.stack([u, v, w], axis=1)
    anat["orientation_deg"] = {"elevation": math.degrees(elevation), "azimuth": math.degrees(azimuth),
                               "twist": math.degrees(twist)}
    anat["rotation"] = rotation.round(9).tolist()
    anat["lateral_fraction"] = float(rng.uniform(0.40, 0.52))
    anat["depth_margin_mm"] = float(rng.uniform(2, 8))
    anat["iliac_radius_mm"] = float(rng.uniform(3.5, 4.5))
    anat["iliac_direction"] = _unit([s * rng.uniform(0.15, 0.4), rng.uniform(0.05, 0.3), -1.0]).tolist()
    anat["anastomosis_gap_mm"] = float(rng.uniform(18, 30))
    anat["anastomosis_shift_mm"] = float(rng.uniform(-20, 20))
    anat["renal_artery_radius_mm"] = float(rng.uniform(2.2, 3.0))
    anat["renal_artery_bend_mm"] = (rng.normal(0, 6, size=3)).tolist()
    anat["pelvis_radius_mm"] = float(rng.uniform(3.5, 5.0))
    anat["psoas_semi_axes_mm"] = [float(rng.uniform(22, 32)), float(rng.uniform(18, 26))]
    return anat


def _place(patient: dict) -> None:
    """Kidney centre and vessels in patient coordinates (mm; origin on the body axis at graft level)."""
    anat = patient["anatomy"]
    s = 1.0 if anat["side"] == "right" else -1.0
    days = [EXAM_DAYS[e] for e in EXAMS]
    biggest = max(derive(patient, kinetics_at(patient, d, compensated=False))["semi_axes_mm"][0] for d in days)
    semi = np.array([biggest, biggest * anat["shape_b"], biggest * anat["shape_c"]])
    rotation = np.asarray(anat["rotation"])
    half = _ellipsoid_half_extent(rotation, semi)
    bx, by = anat["body_semi_axes_mm"]
    x = s * anat["lateral_fraction"] * bx
    x = s * min(abs(x), bx - half[0] - anat["fat_mm"] - 10)
    skin_y = by * math.sqrt(max(1 - (x / bx) ** 2, 0.05))
    y = skin_y - anat["fat_mm"] - anat["wall_mm"] - half[1] - anat["depth_margin_mm"]
    centre = np.array([x, y, 0.0])
    anat["kidney_centre_mm"] = centre.tolist()

    hilum_dir = rotation[:, 1]
    hilum = centre + rotation @ np.array([0.0, semi[1], 0.0])
    direction = np.asarray(anat["iliac_direction"])
    gap = anat["anastomosis_gap_mm"]
    for _ in range(20):
        anastomosis = hilum + gap * hilum_dir
        inner_y = by * math.sqrt(max(1 - (anastomosis[0] / bx) ** 2, 0.05)) - anat["fat_mm"] - anat["wall_mm"]
        anastomosis[1] = min(anastomosis[1], inner_y - 2 * anat["iliac_radius_mm"])
        if _line_clear_of_kidney(anastomosis, direction, centre, rotation, semi, anat["iliac_radius_mm"] + 3):
            break
        gap += 6.0
    anat["anastomosis_mm"] = anastomosis.tolist()
    anat["iliac_point_mm"] = (anastomosis + anat["anastomosis_shift_mm"] * direction).tolist()


def _exam_acquisition(rng: np.random.Generator, settings: SynthSettings, patient: dict) -> dict:
    n = len(settings.times())
    steps = rng.normal(0, [0.25, 0.4, 0.4], size=(n, 3))
    jumps = (rng.random(n) < 0.05)[:, None] * rng.normal(0, 1.2, size=(n, 3))
    walk = np.cumsum(steps + jumps, axis=0)
    walk -= walk[0]
    limit = np.array([2.0, 2.5, 2.5])
    motion = np.clip(walk * settings.motion_scale, -limit, limit)
    bat = settings.injection_time_s + patient["kinetics_0"]["arrival_delay_s"] + rng.normal(0, 1.5)
    return {
        "BAT": float(max(bat, settings.injection_time_s + 4.0)),
        "pose_shift_mm": rng.normal(0, [4.0, 4.0, 10.0]).tolist(),
        "pose_yaw_deg": float(rng.normal(0, 2.0)),
        "pose_roll_deg": float(rng.normal(0, 1.0)),
        "fov_jitter_mm": rng.normal(0, 6.0, size=3).tolist(),
        "motion_mm": motion.round(4).tolist(),
    }


def _lab_and_outcomes(rng: np.random.Generator, settings: SynthSettings, patient: dict) -> None:
    sex, age0 = patient["sex"], patient["recipient_age"]
    generation = 0.90 * _lognormal(rng, 0.12)
    patient["creatinine_generation"] = generation

    def creat(gfr: float, day: float) -> float:
        return creatinine_from_gfr(gfr, age0 + day / DAYS_PER_YEAR, sex, generation)

    for exam in EXAMS:
        ex = patient["exams"][exam]
        ex["creatinine_true"] = creat(ex["gfr"], ex["day"])
        ex["creatinine"] = float(round(ex["creatinine_true"] * _lognormal(rng, 0.05)))
    lost = False
    for years in OUTCOME_YEARS:
        target = years * DAYS_PER_YEAR
        values, gfrs = [], []
        for offset in (-60.0, 0.0, 60.0):
            day = target + offset
            gfr = derive(patient, kinetics_at(patient, day, compensated=False))["gfr"]
            gfrs.append(gfr)
            values.append(creat(gfr, day) * _lognormal(rng, 0.05))
        lost = lost or gfrs[1] < settings.graft_loss_gfr
        mean_creat = float(np.mean(values))
        dysfunction = lost or mean_creat > settings.creatinine_threshold_umol
        patient["outcomes"][f"{years}y"] = {
            "gfr": gfrs[1],
            "fibrosis": fibrosis_at(patient["latent"], target),
            "mean_creatinine": mean_creat,
            "graft_loss": bool(lost),
            "dysfunction": int(dysfunction),
        }
        patient[f"outcome_{years}y"] = int(dysfunction)


def _missingness(rng: np.random.Generator, settings: SynthSettings, patient: dict) -> None:
    for exam in EXAMS:
        ex = patient["exams"][exam]
        visit = bool(rng.random() < settings.p_missing_visit)
        image = visit or bool(rng.random() < settings.p_missing_image)
        gfr_missing = visit or bool(rng.random() < settings.p_missing_lab)
        creat_missing = visit or bool(rng.random() < settings.p_missing_lab)
        ex.update(visit_missing=visit, image_missing=image, gfr_missing=gfr_missing,
                  creatinine_missing=creat_missing)
        patient[f"gfr_{exam}"] = None if gfr_missing else round(ex["gfr"], 1)
        patient[f"creatinine_{exam}"] = None if creat_missing else int(ex["creatinine"])
    donor_missing = bool(rng.random() < settings.p_missing_demographic)
    bsa_missing = bool(rng.random() < settings.p_missing_demographic)
    patient["donor_age_missing"], patient["bsa_missing"] = donor_missing, bsa_missing
    patient["clinical"] = {
        "patient_id": patient["patient_id"],
        "donor_age": None if donor_missing else patient["donor_age"],
        "bsa": None if bsa_missing else round(patient["bsa"], 2),
        **{f"gfr_{e}": patient[f"gfr_{e}"] for e in EXAMS},
        **{f"creatinine_{e}": patient[f"creatinine_{e}"] for e in EXAMS},
        **{f"outcome_{y}y": patient[f"outcome_{y}y"] for y in OUTCOME_YEARS},
    }


def sample_patient(seed: int, index: int, settings: SynthSettings | None = None) -> dict:
    """One patient: demographics, latent course, kinetics and clinical values per exam, outcomes.

    The ``clinical`` entry is the patient's row of ``clinical.csv`` (``None`` where missing);
    ``exams[exam]`` holds every exam parameter (true values, acquisition, missing flags).
    """
    settings = settings or SynthSettings()
    rng = rng_for(seed, index, _S_CLINICAL)
    world = WORLDS[settings.world]
    demo = _demographics(rng, world)
    reserve = rng_for(seed, index, _S_RESERVE).uniform(0.0, 2.0)
    patient: dict[str, Any] = {"patient_id": patient_id(index), "index": int(index), "seed": int(seed),
                               "world": settings.world, **demo,
                               "hyperfiltration": float(min(settings.hyperfiltration * reserve, 0.95))}
    patient["latent"] = _latent(rng, demo["donor_age"], demo["donor_type"] == "deceased", world)
    patient["latent_progression"] = patient["latent"]["progression"]
    patient["kinetics_0"] = _kinetics0(rng, demo["donor_age"], world)
    field = rng.choice(np.asarray(settings.field_strengths, float),
                       p=np.asarray(settings.field_weights, float) / np.sum(settings.field_weights))
    patient["acquisition"] = {
        "field_strength": float(field),
        "agent": settings.agent,
        "flip_angle": float(rng.choice([12.0, 15.0])),
        "tr_s": 0.0036 if field < 2 else 0.0032,
        "injection_time_s": settings.injection_time_s,
    }
    patient["anatomy"] = _anatomy(rng_for(seed, index, _S_ANATOMY), demo, demo["donor_age"])
    patient["exams"] = {e: derive(patient, kinetics_at(patient, EXAM_DAYS[e])) for e in EXAMS}
    _place(patient)
    for i, exam in enumerate(EXAMS):
        patient["exams"][exam].update(_exam_acquisition(rng_for(seed, index, _S_EXAM + i), settings, patient))
    patient["outcomes"] = {}
    _lab_and_outcomes(rng_for(seed, index, _S_LAB), settings, patient)
    _missingness(rng_for(seed, index, _S_MISSING), settings, patient)
    return patient


def sample_patients(n: int, seed: int = 0, settings: SynthSettings | None = None,
                    start: int = 0) -> list[dict]:
    """``n`` patients (indices ``start`` .. ``start + n - 1``) without rendering any image."""
    settings = settings or SynthSettings()
    return [sample_patient(seed, i, settings) for i in range(start, start + n)]
