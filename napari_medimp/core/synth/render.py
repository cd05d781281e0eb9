"""Rendering of one exam: dcmri kinetics per tissue, spoiled gradient-echo signal, acquisition effects."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
from scipy import ndimage

from ..terms import DEFAULT_EXAM
from ..volume import DCEVolume
from .anatomy import (
    AIR,
    FAT,
    MUSCLE,
    T_BLOOD,
    T_CORTEX,
    T_MEDULLA,
    T_URINE,
    VISCERA,
    ExamGeometry,
    render_geometry,
)
from .physiology import (
    EXAMS,
    GENERATOR_VERSION,
    KINETIC_KEYS,
    LABEL_NAMES,
    S_RENDER,
    SynthSettings,
    exam_parameters,
    rng_for,
    sample_patient,
    sinus_fraction,
)

#: T1 of subcutaneous fat (s), not tabulated by dcmri: de Bazelaire et al., Radiology 2004
FAT_T1 = {1.5: 0.343, 3.0: 0.382}
#: medullary / cortical T1 ratio (de Bazelaire 2004: 1412/966 ms at 1.5 T, 1545/1142 ms at 3 T)
MEDULLA_T1_RATIO = 1.4
#: relative proton density per tissue class
PROTON_DENSITY = {FAT: 0.90, MUSCLE: 0.72, VISCERA: 0.76, T_CORTEX: 0.80, T_MEDULLA: 0.82,
                  T_URINE: 0.98, T_BLOOD: 0.82}
#: dcmri 2CX parameters of the extra-renal tissues (H set per patient): blood volume, interstitial
#: volume, blood flow (mL/s/mL), permeability-surface product (mL/s/mL)
SOFT_TISSUE_KINETICS = {
    FAT: {"vb": 0.01, "vi": 0.05, "Fb": 0.0005, "PS": 0.0002},
    MUSCLE: {"vb": 0.02, "vi": 0.10, "Fb": 0.0008, "PS": 0.0004},
    VISCERA: {"vb": 0.05, "vi": 0.20, "Fb": 0.005, "PS": 0.002},
}
#: relative effect of the local damage level d in [0, 1] on flow, extraction and tubular transit
DAMAGE_FLOW, DAMAGE_EXTRACTION, DAMAGE_TRANSIT = 0.6, 0.4, 0.8
#: dose (mmol/kg) of the population AIF of Parker et al. 2006
PARKER_DOSE = 0.1
#: baseline cortical signal (a.u.) that fixes the intensity scale
CORTEX_BASELINE = 400.0


@dataclass
class SyntheticExam:
    """One rendered exam: the DCE volume, its label map (z, y, x) and every parameter behind it."""

    volume: DCEVolume
    labels: np.ndarray
    params: dict


def _t1(field: float, tissue: int, hct: float) -> float:
    import dcmri

    field = 1.5 if field < 2.25 else 3.0
    if tissue == FAT:
        return FAT_T1[field]
    if tissue in (MUSCLE, VISCERA):
        return dcmri.T1(field, "muscle")
    if tissue == T_CORTEX:
        return dcmri.T1(field, "kidney")
    if tissue == T_MEDULLA:
        return dcmri.T1(field, "kidney") * MEDULLA_T1_RATIO
    if tissue == T_URINE:
        return dcmri.T1(field, "csf")
    if tissue == T_BLOOD:
        return dcmri.T1(field, "blood", hct)
    raise ValueError(tissue)


@lru_cache(maxsize=16)
def _signal_table(tr: float, fa: float) -> tuple[np.ndarray, np.ndarray]:
    """dcmri's steady-state SPGR signal tabulated on log R1 (dcmri evaluates R1 arrays in a loop)."""
    import dcmri

    log_r1 = np.linspace(math.log(0.05), math.log(2000.0), 3000)
    return log_r1, np.asarray(dcmri.signal_ss(1.0, np.exp(log_r1), tr, fa), dtype=float)


def spgr_signal(r1: np.ndarray, tr: float, fa: float) -> np.ndarray:
    """Spoiled gradient-echo steady-state signal for S0 = 1 (dcmri.signal_ss), for any array of R1."""
    log_r1, table = _signal_table(float(tr), float(fa))
    return np.interp(np.log(np.maximum(r1, 1e-6)), log_r1, table).astype(np.float32)


def level_weights(damage: np.ndarray, n_levels: int) -> tuple[np.ndarray, np.ndarray]:
    """(lower level index, weight of the upper level) interpolating ``damage`` in [0, 1] between levels."""
    pos = np.clip(damage, 0, 1) * (n_levels - 1)
    lower = np.minimum(np.floor(pos).astype(int), n_levels - 2)
    return lower, (pos - lower).astype(np.float32)


def level_kinetics(params: dict, mean_weights: np.ndarray) -> list[dict]:
    """Kinetic parameters of each damage level, scaled so that the parenchymal means of plasma flow,
    filtered flow (Fp * Eg) and tubular transit times equal the exam's values."""
    n = len(mean_weights)
    d = np.linspace(0, 1, n)
    flow, extraction, transit = 1 - DAMAGE_FLOW * d, 1 - DAMAGE_EXTRACTION * d, 1 + DAMAGE_TRANSIT * d
    c_flow = float(mean_weights @ flow)
    c_extraction = float(mean_weights @ (flow * extraction)) / c_flow
    c_transit = float(mean_weights @ transit)
    levels = []
    for k in range(n):
        lvl = {key: params[key] for key in ("fc", "Tg", "Tv")}
        lvl["Fp"] = params["Fp"] * flow[k] / c_flow
        lvl["Eg"] = min(params["Eg"] * extraction[k] / c_extraction, 0.95)
        for key in ("Tpt", "Tlh", "Tdt", "Tcd"):
            lvl[key] = params[key] * transit[k] / c_transit
        levels.append(lvl)
    return levels


def tissue_curves(patient: dict, params: dict, settings: SynthSettings, mean_weights: np.ndarray) -> dict:
    """Concentrations (M) on the fine kinetic grid: artery (blood), each soft tissue, collecting system,
    and cortex and medulla at each damage level."""
    import dcmri

    dt = settings.kinetic_dt_s
    t = np.arange(0.0, settings.times()[-1] + 2 * dt, dt)
    hct = patient["hct"]
    cb = dcmri.aif_parker(t, params["BAT"]) * (settings.dose_mmol_per_kg / PARKER_DOSE)
    ca = cb / (1 - hct)
    curves = {"t": t, T_BLOOD: cb}
    for tissue, kin in SOFT_TISSUE_KINETICS.items():
        curves[tissue] = dcmri.conc_tissue(ca, t=t, kinetics="2CX", H=hct, **kin)
    cortex, medulla, outflow = [], [], np.zeros_like(t)
    levels = level_kinetics(params, mean_weights)
    for w, lvl in zip(mean_weights, levels, strict=True):
        cc, cm = dcmri.conc_kidney_cm(ca, *(lvl[k] for k in KINETIC_KEYS), t=t, sum=False, kinetics="7C")
        cortex.append(cc.sum(axis=0))
        medulla.append(cm.sum(axis=0))
        outflow += w * cm[2] / lvl["Tcd"]
    phi = sinus_fraction()
    amount = dcmri.conc_comp(outflow, params["collecting_transit_s"], t=t)
    curves[T_URINE] = amount * (1 - phi) / phi
    curves[T_CORTEX] = np.stack(cortex)
    curves[T_MEDULLA] = np.stack(medulla)
    curves["levels"] = levels
    return curves


def _sample(curve: np.ndarray, t_fine: np.ndarray, times: np.ndarray) -> np.ndarray:
    return np.interp(times, t_fine, curve)


def _concentration(geo: ExamGeometry, curves: dict, times: np.ndarray, body: np.ndarray,
                   heterogeneity: float, n_levels: int) -> np.ndarray:
    """Concentration (T, N) at the body voxels, painted from the tissue curves."""
    t_fine = curves["t"]
    table = [np.zeros(len(times))]
    slot = {}
    for tissue in (FAT, MUSCLE, VISCERA, T_URINE, T_BLOOD):
        slot[tissue] = len(table)
        table.append(_sample(curves[tissue], t_fine, times))
    for tissue in (T_CORTEX, T_MEDULLA):
        slot[tissue] = len(table)
        table.extend(_sample(c, t_fine, times) for c in curves[tissue])
    table = np.stack(table).astype(np.float32)

    tissue = geo.tissue.ravel()[body]
    lower = np.zeros(len(tissue), int)
    upper_w = np.zeros(len(tissue), np.float32)
    for t_class, s in slot.items():
        lower[tissue == t_class] = s
    kidney = (tissue == T_CORTEX) | (tissue == T_MEDULLA)
    lo, w = level_weights(geo.damage_u.ravel()[body][kidney] * heterogeneity, n_levels)
    lower[kidney] += lo
    upper_w[kidney] = w
    upper = np.where(kidney, lower + 1, lower)
    return table[lower].T * (1 - upper_w) + table[upper].T * upper_w


def _bias_field(rng: np.random.Generator, geo: ExamGeometry, shape: tuple[int, int, int],
                strength: float) -> tuple[np.ndarray, list[float]]:
    nz, ny, nx = shape
    z, y, x = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    idx = np.stack([x, y, z], axis=-1).reshape(-1, 3)
    rel = (idx @ geo.affine[:3, :3].T + geo.affine[:3, 3] - geo.fov_centre) / 150.0
    terms = np.column_stack([rel, rel**2, rel[:, 0] * rel[:, 1], rel[:, 1] * rel[:, 2], rel[:, 0] * rel[:, 2]])
    coef = rng.normal(0, strength / 2, size=terms.shape[1])
    coef[1] += strength
    log_b = terms @ coef
    return np.exp(log_b - log_b.mean()).reshape(shape).astype(np.float32), coef.round(6).tolist()


def _acquisition_effects(image: np.ndarray, params: dict, settings: SynthSettings, geo: ExamGeometry,
                         rng: np.random.Generator) -> tuple[np.ndarray, list[float]]:
    """Point-spread blur, rigid motion per frame, receive bias, Rician noise, integer magnitudes."""
    motion_vox = np.asarray(params["motion_mm"], float) / np.asarray(settings.spacing, float)
    sigma = settings.psf_sigma_voxels
    for i in range(len(image)):
        frame = ndimage.gaussian_filter(image[i], sigma) if max(sigma) > 0 else image[i]
        if np.any(np.abs(motion_vox[i]) > 1e-6):
            frame = ndimage.shift(frame, motion_vox[i], order=1, mode="nearest")
        image[i] = frame
    bias_coef: list[float] = []
    if settings.bias_strength > 0:
        bias, bias_coef = _bias_field(rng, geo, settings.grid, settings.bias_strength)
        image *= bias[None]
    if settings.noise:
        sd = CORTEX_BASELINE / settings.snr
        real = image + rng.normal(0, sd, image.shape).astype(np.float32)
        imag = rng.normal(0, sd, image.shape).astype(np.float32)
        image = np.sqrt(real**2 + imag**2)
    return np.clip(np.rint(image), 0, np.iinfo(np.int16).max).astype(np.float32), bias_coef


def render(patient: dict, params: dict, settings: SynthSettings, exam_index: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """(signal (t, z, y, x) float32, labels (z, y, x) uint8, render details) of one exam."""
    import dcmri

    acq = patient["acquisition"]
    times = settings.times()
    geo = render_geometry(patient, params, settings)
    rng = rng_for(patient["seed"], patient["index"], S_RENDER + exam_index)
    n_levels = settings.heterogeneity_levels

    tissue_flat = geo.tissue.ravel()
    body = np.flatnonzero(tissue_flat != AIR)
    kidney = (tissue_flat == T_CORTEX) | (tissue_flat == T_MEDULLA)
    mean_weights = np.zeros(n_levels)
    mean_weights[0] = 1.0
    if kidney.any():
        lo, w = level_weights(geo.damage_u.ravel()[kidney] * params["heterogeneity"], n_levels)
        mean_weights = (np.bincount(lo, weights=1 - w, minlength=n_levels)
                        + np.bincount(lo + 1, weights=w, minlength=n_levels)) / kidney.sum()
    curves = tissue_curves(patient, params, settings, mean_weights)
    conc = _concentration(geo, curves, times, body, params["heterogeneity"], n_levels)

    field = acq["field_strength"]
    r1 = dcmri.relaxivity(1.5 if field < 2.25 else 3.0, "plasma", acq["agent"])
    tissue_b = tissue_flat[body]
    r10 = np.zeros(len(body), np.float32)
    pd = np.zeros(len(body), np.float32)
    for t_class, density in PROTON_DENSITY.items():
        sel = tissue_b == t_class
        r10[sel] = 1.0 / _t1(field, t_class, patient["hct"])
        pd[sel] = density * ((1 - settings.fat_suppression) if t_class == FAT else 1.0)
    texture = geo.texture.ravel()[body]
    soft = np.isin(tissue_b, (FAT, MUSCLE, VISCERA))
    pd *= np.where(soft, 1 + 0.06 * texture, 1 + 0.015 * texture).astype(np.float32)

    tr, fa = acq["tr_s"], acq["flip_angle"]
    cortex_ref = PROTON_DENSITY[T_CORTEX] * float(spgr_signal(np.array([1 / _t1(field, T_CORTEX, 0.4)]), tr, fa)[0])
    scale = CORTEX_BASELINE / cortex_ref
    signal = spgr_signal(r10[None, :] + r1 * conc, tr, fa) * (pd * scale)[None, :]

    image = np.zeros((len(times), int(np.prod(settings.grid))), np.float32)
    image[:, body] = signal
    image, bias_coef = _acquisition_effects(image.reshape(len(times), *settings.grid), params, settings, geo, rng)

    voxel_ml = float(np.prod(settings.spacing)) / 1000.0
    counts = np.bincount(geo.labels.ravel(), minlength=len(LABEL_NAMES))
    details = {
        "affine": geo.affine.round(6).tolist(),
        "fov_centre_mm": geo.fov_centre.round(4).tolist(),
        "label_volumes_ml": {LABEL_NAMES[k]: float(counts[k] * voxel_ml) for k in LABEL_NAMES},
        "damage_level_weights": mean_weights.round(6).tolist(),
        "level_kinetics": curves["levels"],
        "relaxivity_per_M_s": r1,
        "noise_sd": CORTEX_BASELINE / settings.snr if settings.noise else 0.0,
        "signal_scale": scale,
        "bias_coefficients": bias_coef,
    }
    return image, geo.labels, details


def sidecar_for(patient: dict, params: dict) -> dict:
    """Acquisition keys of the DCE sidecar (frame times are added by the writer)."""
    acq = patient["acquisition"]
    return {
        "MagneticFieldStrength": acq["field_strength"],
        "FlipAngle": acq["flip_angle"],
        "RepetitionTime": acq["tr_s"],
        "ContrastAgent": acq["agent"],
        "ContrastInjectionTime": acq["injection_time_s"],
        "PulseSequenceType": "3D spoiled gradient echo",
        "PatientID": patient["patient_id"],
        "Exam": params["exam"],
        "DaysAfterTransplantation": params["day"],
        "Synthetic": True,
        "GeneratorVersion": GENERATOR_VERSION,
    }


def simulate_exam(seed: int = 0, patient_index: int = 0, exam: str = DEFAULT_EXAM, *,
                  settings: SynthSettings | None = None, overrides: dict | None = None,
                  patient: dict | None = None, **setting_changes) -> SyntheticExam:
    """Render one exam of one synthetic patient in memory.

    ``overrides`` replaces exam parameters (keys in ``OVERRIDABLE``: kinetics Fp, Eg, fc, Tg, Tv, Tpt,
    Tlh, Tdt, Tcd, BAT, collecting_transit_s, kidney_volume_ml, cortical_thickness_mm,
    heterogeneity); GFR and geometry are recomputed from them. Keyword arguments such as
    ``grid=(12, 32, 40)`` or ``noise=False`` change the settings.
    """
    settings = settings or SynthSettings()
    if setting_changes:
        settings = replace(settings, **setting_changes)
    if exam not in EXAMS:
        raise ValueError(f"unknown exam {exam!r}; expected one of {EXAMS}")
    patient = patient or sample_patient(seed, patient_index, settings)
    params = exam_parameters(patient, exam, overrides)
    params["exam"] = exam
    image, labels, details = render(patient, params, settings, EXAMS.index(exam))
    params["render"] = details
    params["acquisition"] = dict(patient["acquisition"])
    params["patient"] = {k: v for k, v in patient.items() if k not in ("exams", "clinical")}
    sidecar = sidecar_for(patient, params)
    volume = DCEVolume(
        image,
        np.asarray(details["affine"]),
        settings.times(),
        metadata={"format": "synthetic", "sidecar": sidecar, "patient": patient["patient_id"], "exam": exam,
                  "synthetic": True, "seed": patient["seed"]},
        source=f"synthetic:{patient['seed']}:{patient['patient_id']}:{exam}",
    )
    return SyntheticExam(volume=volume, labels=labels, params=params)
