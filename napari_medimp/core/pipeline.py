"""One analysis of one exam, the same for ``medimp analyze``, the napari panel and the demo.

An :class:`AnalysisRequest` holds what the user gave (image, exam, clinical values, prompt, kidney box,
tissue labels, saliency wishes) and is checked by :meth:`AnalysisRequest.check` before any model work.
:func:`run_analysis` turns it into an :class:`AnalysisResult` (prompt similarity, zero-shot GFR bins,
prognosis, time-intensity curves, optionally a saliency map), which knows how to become a report, a
figure, panel images and the files of an export folder.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .curves import check_labels, roi_and_region_curves
from .preprocess import RoiBox
from .prompts import ClinicalRecord, gfr_bin
from .report import build_report, describe_inputs, saliency_info, write_report
from .terms import HORIZONS, SALIENCY_METHODS
from .volume import DCEVolume

Progress = Callable[[str, float], None]
#: file names of an analysis folder
REPORT_STEM = "medimp_report"
FIGURE_FILE = "results.png"
SALIENCY_FILE = "saliency.nii.gz"
SALIENCY_TARGETS = ("similarity", *HORIZONS)
#: every file an analysis may leave in its folder (an export adds the viewer screenshot)
ANALYSIS_FILES = (f"{REPORT_STEM}.json", f"{REPORT_STEM}.csv", FIGURE_FILE, SALIENCY_FILE, "saliency.json",
                  "medimp_screenshot.png")


@dataclass
class AnalysisRequest:
    volume: DCEVolume
    exam: str
    record: ClinicalRecord | None = None
    prompt: str | None = None
    roi: RoiBox | None = None
    roi_source: str = "automatic (enhancing kidney)"
    labels: np.ndarray | None = None
    region_names: Mapping[int, str] | None = None
    #: the clinical values as the user typed them (:func:`report.clinical_inputs`), for the report
    clinical: dict | None = None
    source: str | None = None
    layer_name: str | None = None
    #: saliency method, or None for no map; target None: similarity with a prompt, else the first horizon
    saliency_method: str | None = None
    saliency_target: str | None = None

    def check(self) -> None:
        """Refuse options that cannot work, before any model is loaded (ValueError naming the option)."""
        if self.saliency_method is not None and self.saliency_method not in SALIENCY_METHODS:
            raise ValueError(f"unknown saliency method {self.saliency_method!r}; choose one of "
                             f"{', '.join(SALIENCY_METHODS)}")
        if self.saliency_target is not None and self.saliency_target not in SALIENCY_TARGETS:
            raise ValueError(f"unknown saliency target {self.saliency_target!r}; choose one of "
                             f"{', '.join(SALIENCY_TARGETS)}")
        if self.saliency_method is not None and self.saliency_target == "similarity" and not self.prompt:
            raise ValueError("the similarity target needs a prompt: enter clinical values or type a prompt")
        if self.labels is not None:
            check_labels(self.volume, self.labels)

    @property
    def expected_bin(self) -> str | None:
        """The GFR bin of the entered GFR (what the zero-shot reading should find), if a GFR was entered."""
        return gfr_bin(self.record.gfr) if self.record is not None and self.record.gfr is not None else None


@dataclass
class AnalysisResult:
    """What was computed for one exam; ``analysis`` is :meth:`inference.Analysis.to_dict`."""

    request: AnalysisRequest
    analysis: dict
    roi: RoiBox
    curves: dict
    inputs: dict
    model: dict
    saliency_map: Any = None
    saliency: dict | None = None
    notes: list[str] = field(default_factory=list)
    finished: float = field(default_factory=time.time)
    #: the report as :meth:`write` last wrote it (with the files it lists)
    written_report: dict | None = field(default=None, repr=False)

    @property
    def times(self):
        return self.request.volume.frame_times

    @property
    def prompt(self) -> str | None:
        return self.request.prompt

    @property
    def layer_name(self) -> str | None:
        return self.request.layer_name

    @property
    def expected_bin(self) -> str | None:
        return self.request.expected_bin

    def attach_saliency(self, smap) -> dict:
        """Keep a saliency map computed for this result; returns its report section."""
        self.saliency_map = smap
        self.saliency = {**saliency_info(smap), "prompt": self.prompt if smap.target == "similarity" else None}
        return self.saliency

    def report(self) -> dict:
        return build_report(analysis=self.analysis, inputs=self.inputs, prompt=self.prompt, model=self.model,
                            saliency=self.saliency, curves=self.curves, times=self.times)

    def figure(self):
        from .plots import results_figure

        return results_figure(self.analysis, self.curves, self.times, self.expected_bin)

    def panel_images(self) -> tuple[bytes, bytes]:
        from .plots import panel_images

        return panel_images(self.analysis, self.curves, self.times, self.expected_bin)

    def write(self, folder, extra: Mapping[str, Path] | None = None) -> dict[str, Path]:
        """The saliency map (NIfTI in the kidney box's geometry), the figure and the report (JSON + CSV) into
        ``folder``, each written atomically; ``extra``: other files of the export, listed in the report."""
        from .atomic import atomic_write
        from .io import save_nifti

        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"{folder} exists and is a file; give a folder for the report")
        folder.mkdir(parents=True, exist_ok=True)
        files: dict[str, Path] = dict(extra or {})
        saliency = dict(self.saliency) if self.saliency else None
        if self.saliency_map is not None:
            smap = self.saliency_map
            files["saliency"] = save_nifti(
                folder / SALIENCY_FILE, smap.data, smap.roi_affine, dtype=np.float32,
                sidecar={"method": smap.method, "target": smap.target, "prompt": saliency.get("prompt"),
                         "score": smap.score, "roi_zyx": smap.roi.to_list(),
                         "model_sha256": self.model.get("weights_sha256")})
            saliency["file"] = str(files["saliency"])
        figure = self.figure()
        files["figure"] = atomic_write(folder / FIGURE_FILE, lambda tmp: figure.savefig(tmp, format="png", dpi=110))
        report = build_report(analysis=self.analysis, inputs=self.inputs, prompt=self.prompt, model=self.model,
                              saliency=saliency, curves=self.curves, times=self.times)
        report.setdefault("files", {}).update({k: str(v) for k, v in files.items()})
        files.update(write_report(report, folder, stem=REPORT_STEM))
        self.written_report = report
        return files


def default_saliency_target(request: AnalysisRequest, predictor) -> str | None:
    """The target a saliency map explains when none is chosen: the prompt similarity when there is a
    prompt, else the first prognosis horizon of the model (None when it has neither)."""
    if request.saliency_target:
        return request.saliency_target
    if request.prompt:
        return "similarity"
    return next(iter(predictor.prognosis_horizons), None)


def run_analysis(predictor, request: AnalysisRequest, progress: Progress | None = None) -> AnalysisResult:
    """Analyse one exam (see the module docstring); ``progress(stage, fraction)`` as it goes."""
    from .inference import analyze

    request.check()
    say = progress or (lambda stage, fraction: None)
    with_map = request.saliency_method is not None
    share = 0.6 if with_map else 0.9
    analysis = analyze(predictor, request.volume, exam=request.exam, prompt=request.prompt, roi=request.roi,
                       record=request.record, progress=lambda stage, f: say(stage, share * f))
    say("time-intensity curves", share)
    names = request.region_names  # None: 'label N' per value (see curves.default_region_names)
    curves = roi_and_region_curves(request.volume, analysis.roi, request.labels, names)
    inputs = describe_inputs(request.volume, exam=request.exam, roi=analysis.roi, clinical=request.clinical,
                             source=request.source, roi_source=request.roi_source, layer_name=request.layer_name)
    inputs["device"] = analysis.model.get("device")
    result = AnalysisResult(request=request, analysis=analysis.to_dict(), roi=analysis.roi, curves=curves,
                            inputs=inputs, model=analysis.model)
    if with_map:
        target = default_saliency_target(request, predictor)
        if target is None:
            result.notes.append("no saliency map: no prompt and no prognosis heads to explain")
        else:
            result.attach_saliency(explain(predictor, request, request.saliency_method, target,
                                           progress=lambda stage, f: say(stage, share + (0.95 - share) * f),
                                           roi=analysis.roi))
    say("done", 1.0)
    return result


def explain(predictor, request: AnalysisRequest, method: str, target: str, progress: Progress | None = None,
            roi: RoiBox | None = None):
    """A saliency map of ``target`` for the request's image (the panel's Saliency button)."""
    from .saliency import compute_saliency

    return compute_saliency(predictor, request.volume, roi if roi is not None else request.roi, method=method,
                            target=target, prompt=request.prompt, exam=request.exam, progress=progress)
