"""Synthetic cohort of transplanted kidneys imaged by DCE-MRI, with clinical follow-up and outcomes.

A deterministic generator (per seed; each patient from its own random streams seeded by
``(seed, patient index, stream)``) made so that contrastive training and prognosis can be measured:
a latent graft course drives both the images and the clinical values. Kinetics and the MR signal come
from ``dcmri`` (Parker AIF, 7-compartment cortico-medullary kidney model, 2CX tissue model, steady-state
spoiled gradient echo, tabulated T1 and relaxivities); nothing of them is re-derived here.

Public API
----------
``simulate_exam(seed, patient_index, exam, *, settings, overrides, **setting_changes) -> SyntheticExam``
``sample_patients(n, seed, settings) -> list[dict]``, ``sample_patient(seed, index, settings)``
``generate_cohort(out_dir, n_patients, seed, *, settings, progress, n_jobs, **setting_changes) -> dict``
``clinical_table(patients)``, ``clinical_csv(patients)``, ``exam_parameters(patient, exam, overrides)``
``SynthSettings`` (grid, spacing, frame times, SNR, motion, bias, missingness, thresholds...)

Labels (uint8): 0 background/air, 1 soft tissue (fat, muscle, pelvic viscera), 2 renal cortex
(with the columns of Bertin), 3 medulla (pyramids), 4 collecting system (renal sinus, pelvis),
5 artery (external iliac artery and the anastomosed renal artery).

Worlds (setting ``world``; ``medimp synth --world``)
---------------------------------------------------
``"transplant"`` (default since generator 2.0) is one grafted kidney, set from transplant figures before
any model saw it; ``"v1"`` is generator 1.x, kept to reproduce earlier cohorts (its values are given in
brackets below where they differ). ``medimp synth --summary`` prints the share of every prompt bin per
visit. Calibration targets and sources:

  * single-graft eGFR about 45-60 mL/min/1.73 m2 at one year with most recipients below 60 (registry
    cohorts: OPTN/SRTR annual data reports; Agence de la biomedecine, rapport medical et scientifique),
    lower at D15 after delayed graft function; generated: median 50 (IQR 39-62) at M12, 41 at D15.
  * one healthy kidney carries about half of the renal plasma flow (~300 mL/min) and filtration
    (~55-60 mL/min); a solitary kidney makes up part of the other's loss by single-nephron hyperfiltration
    and hypertrophy (GFR ~70 % of the two-kidney value after donation: Lenihan et al., J Clin Invest
    2015;125:1311); calcineurin inhibitors constrict the afferent arteriole and lower renal flow by
    roughly a fifth (Naesens et al., Clin J Am Soc Nephrol 2009;4:481).
  * delayed graft function (dialysis in the first week) in 20-35 % of deceased-donor grafts, rising with
    donor age; generated: 25 %, median GFR 11 at day 7 and 22 at D15 in those grafts.
  * donors: about 85 % deceased in France, deceased donors' median age near 60 with about a third aged 65
    or more (Agence de la biomedecine); generated: 35 % of donors aged 65 or more (MEDIMP's "high" bin).
  * creatinine: MEDIMP's variability (std of the series so far, > 50 umol/L "unstable") follows from the
    per-visit values; after delayed function it falls steeply between D15 and M3; generated: 7-10 % of
    exams "unstable" from D30 on.

Null setting (``images="other"``; ``medimp synth --images other``): each patient's exams show another
patient's graft from the same world (index + 1,000,000, same seed: never part of the cohort); the
clinical values, prompts and outcomes are the patient's own, so images carry nothing of them. The
ground truth records ``images_from`` per patient and the shown graft's parameters (``shown``) per exam.

Parameters, ranges and basis
----------------------------
Recipient and donor
  * sex 62 % male; age N(52, 13) y in [18, 78]; height N(175, 7) cm (M) / N(162, 6.5) cm (F);
    BMI log-normal, median 25.5 in [17, 42]; BSA by Mosteller (1987) sqrt(height * weight / 3600),
    about 1.5-2.2 m2 - registry demographics of kidney recipients (ERA, SRTR).
  * haematocrit N(0.36, 0.04) in [0.26, 0.47] - post-transplant anaemia.
  * donor 85 % deceased, age N(59, 15), living N(51, 10), in [18, 85] y (integer) [v1: 82 %, N(56, 15),
    N(50, 10), [18, 80]] - French donor age distribution (Agence de la biomedecine annual reports).
Latent graft course (time t in years)
  * interstitial fibrosis f(t) = f0 + r t (+ rejection), capped at 0.97 - the latent progression.
    f0 = 0.02 + 0.0035 (donor age - 18) + N(0, 0.04) in [0, 0.6] (implantation-biopsy fibrosis rises
    with donor age); r = 0.030 exp(0.02 (donor age - 50)) x lognormal(sd 0.6) per year; 15 % of
    patients have a rejection episode starting at U(0.1, 4) y that adds U(0.08, 0.25) per year
    (chronic antibody-mediated rejection; partly after the last exam, so not all of the outcome is
    visible in the images). ``latent_progression`` = f(3 years).
  * acute ischaemia-reperfusion injury i(t) = i0 exp(-t / tau), tau U(10, 30) days [v1: U(8, 25)]:
    delayed graft function with probability 0.12 + 0.004 (donor age - 18) (deceased, <= 0.5) or 0.05
    (living), i0 U(0.6, 0.95) [v1: U(0.3, 0.7)], else U(0, 0.15) - DGF rates of 20-35 % in
    deceased-donor grafts; a graft with delayed function starts with 0.05 more fibrosis [v1: none].
Kinetics (dcmri.conc_kidney_cm, kinetics='7C'; per mL parenchyma)
  * plasma flow Fp0 = 0.034 x 0.80 (1 - 0.005 (donor age - 40)) x lognormal(0.06) mL/s/mL: one
    kidney's share of renal plasma flow (~360 mL/min for a 175 mL young donor kidney) times
    calcineurin-inhibitor vasoconstriction [v1: 0.051 x 1, a healthy pair's flow in one graft];
    glomerular extraction Eg0 = 0.21 (1 - 0.004 (donor age - 40)) x lognormal(0.06) in [0.10, 0.26]
    (filtration fraction ~0.2) x 1.25 (a solitary kidney's single-nephron hyperfiltration) [v1: x 1]; cortical flow fraction fc U(0.87, 0.93)
    (medullary blood flow ~10 % of renal flow); transit times Tg U(3, 5) s, Tv U(8, 14) s,
    Tpt U(45, 75) s, Tlh U(45, 75) s, Tdt U(20, 40) s, Tcd U(20, 40) s (dcmri defaults 4, 10, 60, 60,
    30, 30 s).
  * at each exam: Fp = Fp0 (1 - 0.65 f)(1 - 0.30 i); Eg = Eg0 (1 - 0.55 f) max(1 - 1.3 i, 0.02)
    [v1: (1 - 0.25 i), (1 - 0.6 i)] (acute injury stops filtration first); tubular transit
    times x (1 + f + 1.5 i) (delayed tubular phase); Tg, Tv x (1 + 0.3 f).
  * compensatory hyperfiltration (setting ``hyperfiltration``, default 0.4; ``medimp synth
    --hyperfiltration``): at the exams (first year) the remaining nephrons raise their filtration so
    that the kinetic GFR recovers a share h of what structural damage took,
    GFR = GFR_structural + h (GFR_undamaged - GFR_structural), through the extraction fraction (capped
    at 0.5); structure (volume, cortical thickness, heterogeneity, transit times) still shows all the
    damage. h is drawn per patient U(0, 2 x setting), capped at 0.95, because functional reserve differs
    between people; by the outcome dates (2-4 years) the compensation is spent (maladaptive
    hyperfiltration, Brenner et al., Kidney Int 1996;49:1774), so current creatinine hides part of the
    future decline. Default 0.4: after living donation the remaining kidney makes up about 40 % of the
    lost filtration (GFR ~70 % of the two-kidney value with 50 % of the nephrons; Lenihan et al., J Clin
    Invest 2015;125:1311); serum creatinine stays normal over a wide range of lost nephron mass
    (Shemesh et al., Kidney Int 1985;28:830). 0 is the null setting: GFR and creatinine show all the
    damage and a perfect image reader adds little to them. ``ground_truth.json`` records h and
    ``gfr_structural_ratio`` per exam.
  * GFR follows from the kinetics: single-kidney GFR [mL/min] = 60 Fp Eg V (the filtered flux of the
    7C model is Eg Fp ca; Fp is plasma flow so no haematocrit factor; dcmri.KidneyCortMed.export_params
    uses Eg / (1 - Eg) instead, i.e. reads Fp as post-glomerular flow - we follow the model equations);
    normalised GFR = GFR x 1.73 / BSA. Cohort at M12: median ~50, IQR 39-62 mL/min/1.73 m2 [v1: ~79].
  * arterial input: Parker et al. (MRM 2006) population AIF (blood), scaled by dose / 0.1 mmol/kg
    (default dose 0.05 mmol/kg, a usual renal DCE dose), bolus arrival = injection (8 s) + U(8, 16) s
    + N(0, 1.5) s per exam; plasma concentration = blood / (1 - Hct).
  * collecting system: tubular outflow (collecting-duct flux) of the whole parenchyma into a
    compartment of mean transit time U(150, 400) s x (1 + 0.5 f) (dcmri.conc_comp), diluted in the
    sinus volume - enhances only in the excretory phase (> ~2 min).
  * soft tissue: dcmri 2CX model; muscle vb 0.02, vi 0.10, Fb 0.0008 mL/s/mL, PS 0.0004 (Ktrans
    ~0.02/min); pelvic viscera vb 0.05, vi 0.20, Fb 0.005, PS 0.002; fat vb 0.01, vi 0.05, Fb 0.0005,
    PS 0.0002.
  * perfusion heterogeneity: a smooth random field (plane waves, wavelengths 25-60 mm, fixed in the
    kidney frame) sets a local damage level d in [0, h], h = min(1, 0.1 + 1.2 f + 0.5 i); kinetic
    curves are computed for 4 damage levels (flow x (1 - 0.6 d), extraction x (1 - 0.4 d), tubular
    transit x (1 + 0.8 d), renormalised so that the parenchymal means equal the exam values) and
    voxels interpolate between the two nearest curves.
Anatomy
  * parenchymal volume at implantation 175 (1 - 0.004 (donor age - 40)) x lognormal(0.08) mL in
    [90, 280]; compensatory hypertrophy U(5, 20) % with a 60-day time constant; shrinkage x (1 - 0.35 f)
    (5-95 %: 140-210 mL, length 110-130 mm). Ellipsoid width / length U(0.47, 0.57),
    thickness / length U(0.38, 0.46); the renal sinus (10.3 % of the ellipsoid) opens at the hilum.
  * cortical thickness U(6.5, 9.5) mm x (1 - 0.5 f) (cortical thinning in chronic allograft
    nephropathy); 8-12 medullary pyramids (cones, apex at the sinus, base at the cortico-medullary
    junction; medulla ~22-30 % of the parenchyma).
  * position: right iliac fossa (80 %) or left, 40-52 % of the body half-width from the midline,
    beneath the subcutaneous fat (8 + 1.6 (BMI - 20) mm, +4 mm in women) and an 8-14 mm muscular
    wall; long axis elevated U(10, 35) deg from the axial plane, azimuth U(10, 60) deg from lateral
    towards anterior, hilum twisted U(-40, 40) deg about the long axis from medial; psoas/iliacus
    posterior; external iliac artery (radius 3.5-4.5 mm) running caudally, laterally and anteriorly,
    renal artery (radius 2.2-3.0 mm) from an end-to-side anastomosis 18-30 mm from the hilum.
MR signal and acquisition
  * dcmri.signal_ss (steady-state spoiled gradient echo), tabulated over R1; 1.5 T (60 %) or 3 T;
    TR 3.6 / 3.2 ms; flip angle 12 or 15 deg; gadoterate plasma relaxivity from dcmri.relaxivity
    (3.6 / 3.5 /mM/s). T1: dcmri.T1 for kidney (cortex), muscle, blood (with Hct) and csf (urine);
    medulla = 1.4 x cortex and fat 343 / 382 ms (de Bazelaire et al., Radiology 2004); fat partly
    suppressed (50 %). Relative proton density 0.72-0.98 per tissue, +-6 % smooth soft-tissue texture.
  * frames: 3 baseline frames every 4 s, 11 first-pass frames every 4 s, then 6 geometrically spaced
    frames to 300 s (20 frames, 0-300 s; all configurable or given explicitly).
  * grid (z, y, x) = (24, 64, 80), spacing (4.0, 2.5, 2.5) mm; axis-aligned RAS affine centred near the
    graft (FOV kept around the kidney), world coordinates in mm from the body axis at graft level;
    per-exam patient repositioning N(0, 4 / 4 / 10) mm, yaw N(0, 2) deg, roll N(0, 1) deg.
  * Rician noise (magnitude of complex Gaussian), sd = cortical baseline / SNR (SNR 30); smooth
    multiplicative receive bias (quadratic log-polynomial, strength 0.15, brighter anteriorly);
    Gaussian PSF (0.3, 0.5, 0.5) voxels; rigid translation per frame: random walk (sd 0.25 / 0.4 /
    0.4 mm per frame, 5 % chance of a N(0, 1.2) mm jump), clipped to +-2.0 / 2.5 / 2.5 mm (z, y, x).
  * stored as int16 (magnitude is integer-valued), labels as uint8.
Clinical values and outcomes
  * ``gfr_<exam>``: the kinetic GFR (mL/min/1.73 m2, as if measured); ``creatinine_<exam>``: CKD-EPI
    2021 (race-free) inverted on its upper branch (creatinine ~ GFR^-0.83) at the recipient's age and
    sex, x creatinine generation 0.90 x lognormal(0.12) per patient (lower muscle mass of recipients),
    x lab noise lognormal(0.05), rounded to 1 umol/L.
  * outcome at 2, 3, 4 years: 1 when the mean of three creatinine values (-60, 0, +60 days around
    the date, each with lab noise) exceeds 110 umol/L (configurable), or when the graft is lost
    (GFR < 15 at or before that date). Prevalence ~75 / 80 / 84 % (a single graft's creatinine is
    usually above 110 umol/L: median ~119 at M12) [v1: ~36 / 43 / 50 %]; graft loss ~2 / 8 / 17 %
    [v1: ~0 / 1 / 4 %];
    point-biserial correlation of ``latent_progression`` with the outcomes ~0.5-0.6.
  * missing data: whole visit 3 %; image only 7 % more (~10 % of exams without images); each lab
    value 4 % more (~7 % missing); donor age and BSA 3 % each.
"""

from .cohort import (
    GFR_FORMULA,
    clinical_csv,
    clinical_rows,
    clinical_table,
    dce_path,
    generate_cohort,
    seg_path,
)
from .physiology import (
    ARTERY,
    BACKGROUND,
    CLINICAL_COLUMNS,
    COLLECTING_SYSTEM,
    CORTEX,
    EXAM_DAYS,
    EXAMS,
    GENERATOR_VERSION,
    KINETIC_KEYS,
    LABEL_NAMES,
    MEDULLA,
    OUTCOME_YEARS,
    OVERRIDABLE,
    SOFT_TISSUE,
    SynthSettings,
    creatinine_from_gfr,
    exam_parameters,
    fibrosis_at,
    normalised_gfr,
    patient_id,
    sample_patient,
    sample_patients,
    single_kidney_gfr,
)
from .render import SyntheticExam, simulate_exam

__all__ = [
    "ARTERY", "BACKGROUND", "CLINICAL_COLUMNS", "COLLECTING_SYSTEM", "CORTEX", "EXAMS", "EXAM_DAYS",
    "GENERATOR_VERSION", "GFR_FORMULA", "KINETIC_KEYS", "LABEL_NAMES", "MEDULLA", "OUTCOME_YEARS",
    "OVERRIDABLE", "SOFT_TISSUE", "SynthSettings", "SyntheticExam", "clinical_csv", "clinical_rows",
    "clinical_table", "creatinine_from_gfr", "dce_path", "exam_parameters", "fibrosis_at",
    "generate_cohort", "normalised_gfr", "patient_id", "sample_patient", "sample_patients", "seg_path",
    "simulate_exam", "single_kidney_gfr",
]
