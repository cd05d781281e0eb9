"""What a synthetic cohort's prompts say: the share of every MEDIMP bin per visit, and how many distinct
prompt contents there are (``medimp synth --summary``). Computed from the clinical values, no image."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from ..clinical import ClinicalRecord
from ..prompts import CREATININE_BINS, DONOR_AGE_BINS, GFR_BINS, slot_values
from .physiology import EXAMS


def bin_shares(patients: Iterable[dict]) -> dict:
    """Per visit: the share of each GFR, donor-age and creatinine-variability bin among the exams with a
    value (images or not), the number of exams with a value, and over exams with images the number of
    distinct prompt contents (bins of GFR, creatinine and donor age; the visit itself is left out) and
    the share of the commonest one."""
    patients = list(patients)
    out: dict = {"visits": {}, "n_patients": len(patients)}
    contents: Counter = Counter()
    for exam in EXAMS:
        counts = {"gfr": Counter(), "donor_age": Counter(), "creatinine": Counter()}
        for p in patients:
            record = ClinicalRecord.from_csv_row(p["clinical"], exam)
            slots = slot_values(record)
            for name in counts:
                if slots[name] is not None:
                    counts[name][slots[name]] += 1
            if not p["exams"][exam]["image_missing"]:
                contents[(slots["gfr"], slots["creatinine"], slots["donor_age"])] += 1
        visit = {}
        for name, bins in (("gfr", GFR_BINS), ("donor_age", DONOR_AGE_BINS), ("creatinine", CREATININE_BINS)):
            n = sum(counts[name].values())
            visit[name] = {"n": n, **{b: (counts[name][b] / n if n else 0.0) for b in bins}}
        out["visits"][exam] = visit
    total = sum(contents.values())
    out["exams_with_images"] = total
    out["distinct_contents"] = len(contents)
    out["commonest_content_share"] = contents.most_common(1)[0][1] / total if total else 0.0
    return out


def summary_table(summary: dict) -> str:
    """:func:`bin_shares` as a Markdown table (percent of the exams with a value, per visit)."""
    visits = list(summary["visits"])
    rows = ["| value | bin | " + " | ".join(visits) + " |", "|---|---|" + "---|" * len(visits)]
    for name, key, bins in (("GFR", "gfr", GFR_BINS), ("donor age", "donor_age", DONOR_AGE_BINS),
                            ("creatinine", "creatinine", CREATININE_BINS)):
        for b in bins:
            cells = [f"{100 * summary['visits'][v][key][b]:.0f} %" for v in visits]
            rows.append(f"| {name} | {b} | " + " | ".join(cells) + " |")
        rows.append(f"| {name} | exams with a value | "
                    + " | ".join(str(summary['visits'][v][key]['n']) for v in visits) + " |")
    rows.append("")
    rows.append(f"{summary['exams_with_images']} exams with images, {summary['distinct_contents']} distinct prompt "
                f"contents without the visit (GFR, creatinine, donor age bins); the commonest covers "
                f"{100 * summary['commonest_content_share']:.0f} %.")
    return "\n".join(rows)
