"""The product's shared vocabulary, in one torch-free place: follow-up exams, prognosis horizons, tissue
labels, saliency methods and the creatinine unit factor. Every module, the command line and the widgets
take these from here."""

from __future__ import annotations

#: follow-up exams after transplant, in order: day 15, day 30, month 3, month 12
EXAMS: tuple[str, ...] = ("D15", "D30", "M3", "M12")
#: the exam assumed when neither the user nor the image names one (the paper's main visit)
DEFAULT_EXAM = "D30"
#: prognosis horizons (graft status 2, 3 and 4 years after transplant)
HORIZONS: tuple[str, ...] = ("2y", "3y", "4y")
#: the same horizons in years
HORIZON_YEARS: tuple[int, ...] = tuple(int(h[:-1]) for h in HORIZONS)

#: kinds of prognosis reading, in display order: images alone (MEDIMP), images with the clinical values,
#: the clinical values alone (the reference a reading from images must beat)
KINDS: tuple[str, ...] = ("image", "image+clinical", "clinical")
#: a reading kind in a sentence or a table row
KIND_LABELS: dict[str, str] = {"image": "images (MEDIMP)", "image+clinical": "images + clinical values",
                               "clinical": "clinical values only"}
#: a reading kind where room is short (figure legends, bar groups)
KIND_SHORT_LABELS: dict[str, str] = {"image": "images (MEDIMP)", "image+clinical": "images + clinical",
                                     "clinical": "clinical only"}

#: the fraction of a saliency map's voxels, by value, that its region shares are measured on
TOP_FRACTION = 0.10
#: the same fraction in words ("top 10 %")
TOP_TEXT = f"top {100 * TOP_FRACTION:.0f} %"

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


def horizon_words(horizon) -> str:
    """A horizon as people read it: "2y" -> "2 years"; anything else is returned as text ("?" for none)."""
    text = str(horizon) if horizon is not None else "?"
    return f"{text[:-1]} years" if text.endswith("y") and text[:-1].isdigit() else text


def horizons_words(horizons) -> str:
    """Several horizons in one phrase: ["2y", "3y", "4y"] (or their words) -> "2, 3 and 4 years"."""
    words = [horizon_words(h) for h in horizons]
    if len(words) > 1 and all(w.endswith(" years") for w in words):
        numbers = [w[:-len(" years")] for w in words]
        return f"{', '.join(numbers[:-1])} and {numbers[-1]} years"
    return " and ".join(words)
