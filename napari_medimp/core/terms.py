"""The product's shared vocabulary, in one torch-free place: follow-up exams, prognosis horizons, tissue
labels, saliency methods and the creatinine unit factor. Every module, the command line and the widgets
take these from here."""

from __future__ import annotations

#: follow-up exams after transplant, in order: day 15, day 30, month 3, month 12
EXAMS: tuple[str, ...] = ("D15", "D30", "M3", "M12")
#: prognosis horizons (graft status 2, 3 and 4 years after transplant)
HORIZONS: tuple[str, ...] = ("2y", "3y", "4y")
#: the same horizons in years
HORIZON_YEARS: tuple[int, ...] = tuple(int(h[:-1]) for h in HORIZONS)

#: label values of the project's tissue maps (synthetic generator, sample exam)
BACKGROUND, SURROUNDING_TISSUE, CORTEX, MEDULLA, COLLECTING_SYSTEM, ARTERY = range(6)
#: label value -> region name, for the kidney regions and the feeding artery
KIDNEY_REGION_NAMES: dict[int, str] = {CORTEX: "cortex", MEDULLA: "medulla",
                                       COLLECTING_SYSTEM: "collecting system", ARTERY: "artery"}

#: saliency methods, the default first: the one benchmarks/bench_saliency.py measured best on the demo model
#: (most faithfulness criteria met; see saliency_faithfulness in its card, which also says what it misses)
SALIENCY_METHODS: tuple[str, ...] = ("integrated-gradients", "gradcam", "gradcam++", "occlusion")

#: serum creatinine: 1 mg/dL = 88.42 umol/L
MG_DL_TO_UMOL_L = 88.42

#: a clinical value the data do not hold
NOT_RECORDED = "not recorded"


def percent(p: float) -> str:
    """A probability as people read it, the same in the panel, the figures and the reports: one decimal
    below 10 % (0.2 %), none above (45 %); a probability that rounds to 0.0 % but is not zero reads
    "< 0.1 %" (and one that rounds to 100 % but is not one reads "> 99 %"): a small risk is never zero."""
    value = 100 * float(p)
    if 0 < value < 0.05:
        return "< 0.1 %"
    if 99.5 <= value < 100:
        return "> 99 %"
    return f"{value:.1f} %" if value < 9.95 else f"{value:.0f} %"
