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

from .clinical import ClinicalRecord
from .curves import check_labels, roi_and_region_curves

# the file names of an analysis folder are owned by .outputs; re-exported here for the callers of this module
from .outputs import (  # noqa: F401
    ANALYSIS_FILES,
    FIGURE_FILE,
    PDF_FILE,
    REPORT_STEM,
    SALIENCY_FILES,
    SALIENCY_TARGETS,
    TREND_FIGURE_FILE,
    saliency_file_name,
)
from .preprocess import RoiBox
from .prompts import gfr_bin
from .report import build_report, describe_inputs, percent, saliency_info, write_report
from .terms import SALIENCY_METHODS, TOP_TEXT
from .volume import DCEVolume

Progress = Callable[[str, float], None]
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
    #: embeddings of the patient's earlier exams (exam -> vector), read together with this one at its visit
    earlier: Mapping[str, np.ndarray] | None = None
    #: show the readings of an exam outside what the model was trained on (a deliberate choice, reported)
    show_anyway: bool = False
    #: where ``exam`` came from (typed, or read from the image: ``sidecar 'Exam'``, ``folder name``); None:
    #: the image's own when they agree, else typed
    exam_source: str | None = None
    #: the tissue labels' origin for the report: ``file``, ``layer``, and the exam they belong to
    #: (``identity``, :meth:`~napari_medimp.core.identity.ExamIdentity.to_dict`)
    labels_origin: Mapping[str, Any] | None = None

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
    """What was computed for one exam; ``analysis`` is the typed :class:`inference.Analysis` (it becomes a dict
    only when the report is built, :meth:`report`)."""

    request: AnalysisRequest
    analysis: Any  # inference.Analysis
    roi: RoiBox
    curves: dict
    inputs: dict
    model: dict
    #: the exam's unit-norm image embedding (for the readings at later visits)
    embedding: np.ndarray | None = None
    #: the latest saliency map and its report section
    saliency_map: Any = None
    saliency: dict | None = None
    #: every map computed for this result, by (method, target), with its report section
    saliency_maps: dict = field(default_factory=dict)
    saliency_sections: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    finished: float = field(default_factory=time.time)
    #: the report as :meth:`write` last wrote it (with the files it lists)
    written_report: dict | None = field(default=None, repr=False)

    @property
    def withheld(self) -> str | None:
        """Why the readings are withheld (the exam failed its checks), None when they are shown."""
        return self.analysis.readings_withheld

    def show_anyway(self) -> None:
        """Show the withheld readings of an exam outside what the model was trained on; the report records
        the choice (``shown_anyway``)."""
        self.analysis.shown_anyway = True
        self.request.show_anyway = True

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
        """Keep a saliency map computed for this result (beside the maps of other methods and targets; a
        map of the same method and target replaces the earlier one); returns its report section
        (:func:`saliency_section`)."""
        section = saliency_section(smap, self.request.labels, self.request.region_names,
                                   prompt=self.prompt if smap.target == "similarity" else None)
        key = (smap.method, smap.target)
        self.saliency_maps[key], self.saliency_sections[key] = smap, section
        self.saliency_map, self.saliency = smap, section
        return section

    def report(self) -> dict:
        return self._report(self.saliency, list(self.saliency_sections.values()))

    def _report(self, saliency: dict | None, sections: list[dict]) -> dict:
        report = build_report(analysis=self.analysis, inputs=self.inputs, prompt=self.prompt, model=self.model,
                              saliency=saliency, curves=self.curves, times=self.times)
        report["saliency_maps"] = sections
        return report

    def figure(self):
        from .identity import ExamIdentity
        from .plots import results_figure

        return results_figure(self.analysis, self.curves, self.times, self.expected_bin,
                              patient=ExamIdentity.from_volume(self.request.volume).patient)

    def panel_images(self) -> tuple[bytes, bytes]:
        from .plots import panel_images

        return panel_images(self.analysis, self.curves, self.times, self.expected_bin)

    def write(self, folder, extra: Mapping[str, Path] | None = None) -> dict[str, Path]:
        """Each saliency map (NIfTI in the kidney box's geometry, :func:`saliency_file_name`), the figure and the
        report (JSON + CSV) into ``folder``, each written atomically; ``extra``: other files of the export,
        listed in the report."""
        from .atomic import atomic_write
        from .io import save_nifti

        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"{folder} exists and is a file; give a folder for the report")
        folder.mkdir(parents=True, exist_ok=True)
        files: dict[str, Path] = dict(extra or {})
        sections = []
        latest = None
        for key, smap in self.saliency_maps.items():
            section = dict(self.saliency_sections[key])
            name = saliency_file_name(smap.method, smap.target, smap.exam or self.request.exam)
            path = save_nifti(folder / name, smap.data, smap.roi_affine, dtype=np.float32,
                              sidecar={"method": smap.method, "target": smap.target, "exam": section.get("exam"),
                                       "prompt": section.get("prompt"), "score": smap.score,
                                       "score_meaning": section.get("score_meaning"),
                                       "roi_zyx": smap.roi.to_list(), "regions": section.get("regions"),
                                       "model_sha256": self.model.get("weights_sha256")})
            # the latest map keeps the key "saliency"; the others are named by method and target
            files["saliency" if smap is self.saliency_map else f"saliency {smap.method} {smap.target}"] = path
            section["file"] = str(path)
            sections.append(section)
            if smap is self.saliency_map:
                latest = section
        figure = self.figure()
        files["figure"] = atomic_write(folder / FIGURE_FILE, lambda tmp: figure.savefig(tmp, format="png", dpi=110))
        report = self._report(latest, sections)
        report.setdefault("files", {}).update({k: str(v) for k, v in files.items()})
        report["files"]["pdf"] = str(folder / PDF_FILE)
        files.update(write_report(report, folder, stem=REPORT_STEM))
        self.written_report = report
        from .pdf import write_pdf

        files["pdf"] = write_pdf(self, folder / PDF_FILE, report=report)
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
                       record=request.record, earlier=request.earlier,
                       progress=lambda stage, f: say(stage, share * f), show_anyway=request.show_anyway)
    say("time-intensity curves", share)
    names = request.region_names  # None: 'label N' per value (see curves.default_region_names)
    curves = roi_and_region_curves(request.volume, analysis.roi, request.labels, names)
    inputs = describe_inputs(request.volume, exam=request.exam, roi=analysis.roi, clinical=request.clinical,
                             source=request.source, roi_source=request.roi_source, layer_name=request.layer_name,
                             exam_source=request.exam_source,
                             labels=request.labels_origin if request.labels is not None else None)
    inputs["device"] = analysis.model.get("device")
    result = AnalysisResult(request=request, analysis=analysis, roi=analysis.roi, curves=curves,
                            inputs=inputs, model=analysis.model, embedding=analysis.embedding)
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


def saliency_section(smap, labels=None, region_names=None, prompt: str | None = None) -> dict:
    """The report section of one saliency map: :func:`report.saliency_info`, the exam, what the score is,
    the map's share per tissue region when labels name the kidney regions (``regions``: per region its
    share of the map's top voxels (:data:`~napari_medimp.core.terms.TOP_TEXT`), of its energy and of the box; ``groups``: the graft, the graft and
    its artery), the method's faithfulness figures from the model card, and all of it in words
    (``explanation``)."""
    from .faithfulness import kidney_regions, region_shares

    section = {**saliency_info(smap), "exam": smap.exam, "prompt": prompt,
               "score_meaning": score_meaning(smap.target), "regions": None, "groups": None}
    if labels is None:
        section["regions_note"] = "no tissue labels: the map's share per region is not known"
    elif not kidney_regions(region_names):
        section["regions_note"] = ("the tissue labels name no kidney region (cortex, medulla, collecting system, "
                                   "artery): the map's share per region is not known")
    else:
        try:
            shares = region_shares(smap.data, np.asarray(labels)[smap.roi.slices], names=region_names)
        except ValueError as exc:
            section["regions_note"] = str(exc)
        else:
            section["regions"], section["groups"] = shares["regions"], shares["groups"]
            section["regions_note"] = (f"per region: 'top', its share of the map's {TOP_TEXT} voxels; 'energy', "
                                       "its share of the map's sum; 'box', its share of the kidney box, what a "
                                       "map without preference would give")
    section["method_faithfulness"] = smap.method_faithfulness
    section["explanation"] = saliency_explanation(section)
    return section


def score_meaning(target: str) -> str:
    """What the number a map explains is, in words."""
    if target == "similarity":
        return ("the cosine similarity between the image's embedding and the prompt's (-1 to 1; higher: the "
                "image matches the sentence better)")
    return (f"the image-only prognosis logit of graft dysfunction at {target} for a reading from this exam "
            "alone (higher: more risk; the probability is its logistic)")


def saliency_explanation(section: dict) -> str:
    """A saliency section in words: what the map shows, where it lies, and how far the method can be
    trusted on this model."""
    text = [f"{section['method']} map of {section['score_meaning'].split(' (')[0]} (score "
            f"{section['score']:.3f}); bright = where the image moved that score most."]
    groups = section.get("groups") or {}
    regions = section.get("regions") or {}
    if "graft and artery" in groups:
        g = groups["graft and artery"]
        text.append(f"On this exam {percent(g['top'])} of its {TOP_TEXT} voxels lie on the graft and its artery, "
                    f"which fill {percent(g['box'])} of the kidney box (a map without preference would put "
                    f"{percent(g['box'])} there).")
    if regions:
        text.append(f"Its {TOP_TEXT} voxels per region (the region's share of the box): " + ", ".join(
            f"{name} {percent(r['top'])} (box {percent(r['box'])})" for name, r in regions.items()) + ".")
    else:
        text.append(section.get("regions_note", "") + ".")
    measured = section.get("method_faithfulness")
    if measured:
        check = "passed" if measured.get("randomisation_check") else "failed"
        text.append(
            f"On unseen synthetic exams this method put {percent(measured['top_graft_artery'])} of its {TOP_TEXT} "
            f"voxels on the graft and artery (box {percent(measured['box_graft_artery'])}); deletion area "
            f"{measured['deletion_auc']:.2f} against {measured['random_deletion_auc']:.2f} for a random order "
            f"(lower is better), insertion {measured['insertion_auc']:.2f} against "
            f"{measured['random_insertion_auc']:.2f} (higher is better); its maps of the trained model and of the "
            f"same model with randomised weights have a rank correlation of {measured['rank_correlation']:+.2f}, "
            f"so the sanity check {check} (below 0.5 passes; a map that survives randomisation shows the image, "
            "not what the model learned).")
    else:
        text.append("This model's card records no faithfulness figures for this method.")
    return " ".join(text)


def faithfulness_line(method: str, measured: dict | None) -> str:
    """One line on how faithful ``method`` measured on the model (its card's figures), or that it was not."""
    if not measured:
        return f"{method}: this model's card records no faithfulness figures for it"
    check = "passed" if measured.get("randomisation_check") else "failed"
    return (f"{method} on unseen synthetic exams: {percent(measured['top_graft_artery'])} of its {TOP_TEXT} voxels "
            f"on the graft and artery (they fill {percent(measured['box_graft_artery'])} of the box); weight-"
            f"randomisation sanity check {check} (rank correlation {measured['rank_correlation']:+.2f}, passes "
            "below 0.5)")
