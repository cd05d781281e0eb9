"""``medimp analyze PATIENT_FOLDER --out DIR``: the patient view without a window.

Every exam of the patient folder is read at its visit from the exams so far (see
:mod:`napari_medimp.core.longitudinal`); the folder gets ``medimp_report.json/.csv`` with a ``visits``
list and the trend figure, and a few lines per visit are printed.
"""

from __future__ import annotations

import sys
from pathlib import Path

#: options of `medimp analyze` that describe one exam and have no meaning for a patient's exams
_ONE_EXAM_OPTIONS = (("gfr", "--gfr"), ("donor_age", "--donor-age"), ("creatinine", "--creatinine"),
                     ("creatinine_std", "--creatinine-std"), ("prompt", "--prompt"), ("labels", "--labels"),
                     ("roi", "--roi"), ("target", "--target"))


def is_patient_folder(path) -> bool:
    """True when ``path`` is a patient folder of a cohort tree (``<patient>/<exam>/<sequence>/``)."""
    from .core.io.cohort import classify_folder
    from .core.volume import DCEReadError

    path = Path(path)
    if not path.is_dir():
        return False
    try:
        return classify_folder(path).kind == "patient"
    except DCEReadError:
        return False


def analyze_patient_command(args, make_predictor) -> int:
    """Analyse every exam of the patient folder ``args.path`` into the folder ``args.out`` with the model
    ``make_predictor(args)`` gives."""
    from .core.longitudinal import PATIENT_FILES, analyze_patient_folder
    from .core.outputs import check_output_folder, replacing_output_folder
    from .core.pipeline import ANALYSIS_FILES

    given = [flag for name, flag in _ONE_EXAM_OPTIONS if getattr(args, name, None) not in (None, [], "")]
    if given:
        raise ValueError(f"{', '.join(given)}: {'these options describe' if len(given) > 1 else 'this option describes'}"
                         f" one exam; for a patient folder the clinical values come from the cohort's clinical.csv "
                         f"and each exam's kidney box is found from its enhancement (analyse one exam folder to "
                         "give them)")
    out = Path(args.out)
    owned = tuple(dict.fromkeys((*PATIENT_FILES, *ANALYSIS_FILES)))  # a folder holds one analysis of either kind
    if not args.overwrite:
        check_output_folder(out, owned, overwrite=False)  # before any work
    predictor = make_predictor(args)

    def progress(stage: str, fraction: float) -> None:
        print(f"\r{stage[:60]:<60} {100 * fraction:3.0f} %", end="", file=sys.stderr, flush=True)

    result = analyze_patient_folder(predictor, Path(args.path), progress=progress)
    print(file=sys.stderr)
    with replacing_output_folder(out, owned, overwrite=args.overwrite):  # the earlier analysis is kept until done
        files = result.write(out)
    print(result.summary())
    if getattr(args, "saliency", "none") != "none":
        print("saliency maps are made for one exam: run `medimp analyze` on an exam folder of this patient")
    print("files: " + ", ".join(str(f) for f in files.values()))
    return 0
