"""Inference: embed images and prompts, compare them, read GFR bins zero-shot, predict prognosis.

The :class:`Predictor` owns a loaded model file, picks a device (cuda, then mps, then cpu unless told
otherwise), runs under ``torch.inference_mode`` with mixed precision where it pays (CUDA), batches, and
caches embeddings. Cache keys combine everything that changes an embedding: the image content, the ROI,
the preprocessing config, the weights hash, the text model revision and the prompt template version.
No Qt here: progress is reported through a plain callback ``progress(stage, fraction)``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.special import softmax

from .atomic import atomic_write
from .card import is_synthetic, reading_standing
from .checkpoint import LoadedModel, load_model
from .checks import Check, embedding_check, failed_messages, image_checks, outside_training
from .clinical import ClinicalRecord
from .preprocess import PreparedInput, PreprocessConfig, RoiBox, find_kidney_roi, prepare
from .prognosis import (
    CLINICAL_LABELS,
    FEATURES_ID,
    HEAD_MODEL,
    HORIZONS,
    KIND_LABELS,
    KINDS,
    RESULT_KEYS,
    ClinicalValues,
    check_head_constraints,
    exams_so_far,
    features,
    head_key,
    image_features,
    latest_visit,
    outside_clinical_range,
)
from .prompts import ATTRIBUTE_BINS, N_VARIANTS, TEMPLATE_VERSION, bin_prompts
from .terms import EXAMS
from .volume import DCEVolume

Progress = Callable[[str, float], None]


# --------------------------------------------------------------------------------------------------
# devices
# --------------------------------------------------------------------------------------------------
def available_devices() -> list[str]:
    """Devices usable here, best first, always ending with "cpu"."""
    devices = []
    if torch.cuda.is_available():
        devices.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    devices.append("cpu")
    return devices


def pick_device(preference: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``: cuda, then mps, then cpu. An explicit device that is not available is an error."""
    if preference in (None, "auto"):
        return torch.device(available_devices()[0])
    device = torch.device(preference)
    if device.type not in available_devices():
        raise ValueError(f"device {device.type!r} is not available here; available: {', '.join(available_devices())}")
    return device


def prepare_for_device(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Move a model to ``device`` in the memory format its 3D convolutions run fastest in.

    channels-last 3D is ~5 % faster than the default layout on the development CPU for the paper
    encoder, and is cuDNN's preferred layout for mixed precision on GPUs. (bf16 autocast on a CPU
    without bf16 matrix units was many times slower, so CPU inference stays fp32.)
    """
    return module.to(device=device, memory_format=torch.channels_last_3d)


def to_model_input(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    return batch.to(device=device, memory_format=torch.channels_last_3d)


# --------------------------------------------------------------------------------------------------
# cache
# --------------------------------------------------------------------------------------------------
def volume_fingerprint(volume: DCEVolume) -> str:
    """Content hash of a volume: its voxels when in memory; for a lazy volume, the file identity
    (path, size, modification time) plus shape, so that a large file is not read just to hash it."""
    digest = hashlib.sha256()
    digest.update(repr(volume.shape).encode())
    digest.update(np.asarray(volume.affine, np.float64).tobytes())
    if volume.is_lazy:
        path = Path(volume.source)
        stat = path.stat() if path.exists() else None
        digest.update(f"{path.resolve() if stat else volume.source}|{stat and stat.st_size}|"
                      f"{stat and stat.st_mtime_ns}".encode())
    else:
        digest.update(np.ascontiguousarray(volume.data, dtype=np.float32).tobytes())
    return digest.hexdigest()


class EmbeddingCache:
    """In-memory LRU of embeddings, optionally backed by a folder of ``.npy`` files."""

    def __init__(self, max_items: int = 512, folder: str | os.PathLike | None = None):
        self.max_items = max_items
        self.folder = Path(folder) if folder else None
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(**parts) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()

    def get(self, key: str) -> np.ndarray | None:
        if key in self._items:
            self._items.move_to_end(key)
            self.hits += 1
            return self._items[key]
        if self.folder is not None and (self.folder / f"{key}.npy").exists():
            try:
                value = np.load(self.folder / f"{key}.npy", allow_pickle=False)
            except (OSError, ValueError):
                value = None
            if value is not None:
                self._remember(key, value)
                self.hits += 1
                return value
        self.misses += 1
        return None

    def put(self, key: str, value: np.ndarray) -> None:
        value = np.asarray(value, np.float32)
        self._remember(key, value)
        if self.folder is not None:
            def write(tmp: str) -> None:
                with open(tmp, "wb") as fh:
                    np.save(fh, value, allow_pickle=False)

            atomic_write(self.folder / f"{key}.npy", write)

    def _remember(self, key: str, value: np.ndarray) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()


# --------------------------------------------------------------------------------------------------
# predictor
# --------------------------------------------------------------------------------------------------
@dataclass
class ImageEmbedding:
    vector: np.ndarray
    prepared: PreparedInput | None
    roi: RoiBox
    cached: bool


class Predictor:
    """Everything the viewer and the CLI ask of a model file."""

    def __init__(self, loaded: LoadedModel, device: str | torch.device | None = "auto", amp: str | bool = "auto",
                 cache: EmbeddingCache | None = None, batch_size: int = 4):
        self.loaded = loaded
        self.model = loaded.model
        self.card = loaded.card
        self.device = pick_device(device)
        prepare_for_device(self.model, self.device).eval()
        self.preprocess_config = PreprocessConfig.from_dict(loaded.card["preprocessing"])
        if amp == "auto":
            amp = self.device.type == "cuda"
        self.amp = bool(amp)
        self.cache = cache if cache is not None else EmbeddingCache()
        self.batch_size = max(1, int(batch_size))
        self._auto_rois: dict[str, RoiBox] = {}
        self._identity = {
            "weights": loaded.weights_sha256,
            "text_revision": loaded.card.get("text_model", {}).get("revision"),
            "templates": loaded.card.get("prompt_template_version", TEMPLATE_VERSION),
            "amp": self.amp,
        }

    @classmethod
    def from_file(cls, path, device="auto", text_model_path=None, **kwargs) -> Predictor:
        return cls(load_model(path, device="cpu", text_model_path=text_model_path), device=device, **kwargs)

    # -- helpers ------------------------------------------------------------------------------------
    def _autocast(self):
        if self.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return torch.autocast(self.device.type, enabled=False)

    @property
    def embed_dim(self) -> int:
        return int(self.model.embed_dim)

    @property
    def prognosis_horizons(self) -> list[str]:
        """Horizons the model's heads predict, in order."""
        found = {head.horizon for head in self.loaded.prognosis.values()}
        return [h for h in HORIZONS if h in found] + sorted(found - set(HORIZONS))

    def prognosis_head(self, kind: str, visit: str, horizon: str):
        """The head of one kind for a reading at ``visit``; ValueError naming what the model has."""
        self._check_heads()
        return self._head(kind, visit, horizon)

    def _head(self, kind: str, visit: str, horizon: str):
        key = head_key(kind, visit, horizon)
        if key not in self.loaded.prognosis:
            visits = sorted({h.visit for h in self.loaded.prognosis.values() if h.kind == kind and h.visit},
                            key=EXAMS.index)
            if not visits:
                raise ValueError(f"this model file has no {KIND_LABELS[kind]} prognosis heads")
            raise ValueError(f"this model file has no {KIND_LABELS[kind]} prognosis head for a reading at {visit} "
                             f"({horizon}); it has heads for readings at {', '.join(visits)}")
        return self.loaded.prognosis[key]

    def _check_heads(self) -> None:
        if not self.loaded.prognosis:
            raise ValueError("this model file has no prognosis heads (fit them with `medimp evaluate --write-heads` "
                             "on patients the model never saw)")
        old = sorted({h.features for h in self.loaded.prognosis.values() if h.features != FEATURES_ID})
        if old:
            raise ValueError(f"this model file's prognosis heads were fitted on another feature layout ({old[0]!r}; "
                             f"this version builds {FEATURES_ID!r}); fit them again with `medimp evaluate "
                             "--write-heads`")

    def image_key(self, fingerprint: str, roi: RoiBox) -> str:
        return self.cache.key(kind="image", volume=fingerprint, roi=roi.to_list(),
                              preprocessing=self.preprocess_config.to_dict(), **self._identity)

    def roi_for(self, volume: DCEVolume, roi=None, fingerprint: str | None = None) -> RoiBox:
        """The given box (validated), or the automatically found kidney (remembered per volume)."""
        if roi is not None:
            return RoiBox.from_sequence(roi).validate(volume.shape[1:])
        fingerprint = fingerprint or volume_fingerprint(volume)
        if fingerprint not in self._auto_rois:
            config = self.preprocess_config
            self._auto_rois[fingerprint] = find_kidney_roi(volume, margin_mm=config.roi_margin_mm,
                                                           baseline_frames=config.baseline_frames)
        return self._auto_rois[fingerprint]

    def prepare(self, volume: DCEVolume, roi=None) -> PreparedInput:
        return prepare(volume, self.preprocess_config, roi)

    # -- images -------------------------------------------------------------------------------------
    def embed_images(self, volumes: Sequence[DCEVolume], rois: Sequence | None = None,
                     progress: Progress | None = None) -> list[ImageEmbedding]:
        """Unit-norm embeddings of several exams, batched; cached ones are not recomputed."""
        volumes = list(volumes)
        rois = [None] * len(volumes) if rois is None else list(rois)
        if len(rois) != len(volumes):
            raise ValueError(f"{len(volumes)} volumes but {len(rois)} ROI boxes")
        results: list[ImageEmbedding | None] = [None] * len(volumes)
        pending: list[tuple[int, PreparedInput, str]] = []
        for i, (volume, roi) in enumerate(zip(volumes, rois, strict=True)):
            if progress:
                progress("preprocessing", i / max(1, len(volumes)))
            fingerprint = volume_fingerprint(volume)
            roi = self.roi_for(volume, roi, fingerprint)
            key = self.image_key(fingerprint, roi)
            hit = self.cache.get(key)
            if hit is not None:
                results[i] = ImageEmbedding(hit, None, roi, cached=True)
            else:
                pending.append((i, self.prepare(volume, roi), key))
        for start in range(0, len(pending), self.batch_size):
            chunk = pending[start:start + self.batch_size]
            if progress:
                progress("encoding images", start / max(1, len(pending)))
            batch = to_model_input(torch.stack([p.tensor for _, p, _ in chunk]), self.device)
            with torch.inference_mode(), self._autocast():
                vectors = self.model.encode_image(batch).float().cpu().numpy()
            for (i, prepared, key), vector in zip(chunk, vectors, strict=True):
                self.cache.put(key, vector)
                results[i] = ImageEmbedding(vector, prepared, prepared.roi, cached=False)
        if progress:
            progress("done", 1.0)
        return results  # type: ignore[return-value]

    def embed_image(self, volume: DCEVolume, roi=None, progress: Progress | None = None) -> ImageEmbedding:
        return self.embed_images([volume], [roi], progress=progress)[0]

    # -- text ---------------------------------------------------------------------------------------
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm embeddings ``(N, D)`` of prompts; each distinct text is encoded once."""
        texts = [str(t) for t in texts]
        if not texts or any(not t.strip() for t in texts):
            raise ValueError("prompts must be non-empty text")
        keys = [self.cache.key(kind="text", text=t, **self._identity) for t in texts]
        missing = sorted({t for t, k in zip(texts, keys, strict=True) if self.cache.get(k) is None})
        for start in range(0, len(missing), 64):
            chunk = missing[start:start + 64]
            with torch.inference_mode(), self._autocast():
                vectors = self.model.encode_text(chunk).float().cpu().numpy()
            for text, vector in zip(chunk, vectors, strict=True):
                self.cache.put(self.cache.key(kind="text", text=text, **self._identity), vector)
        return np.stack([self.cache.get(k) for k in keys])

    # -- readings -----------------------------------------------------------------------------------
    def logit_scale(self) -> float:
        with torch.no_grad():
            return float(self.model.clamped_logit_scale().exp())

    def similarity(self, image_vector: np.ndarray, prompts: Sequence[str] | str) -> np.ndarray:
        """Cosine similarity of one image embedding with each prompt."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        text = self.embed_texts(prompts)
        return text @ np.asarray(image_vector, np.float32)

    def bin_similarities(self, image_vector: np.ndarray, attribute: str = "gfr",
                         variants: Sequence[int] | None = None) -> np.ndarray:
        """Cosine similarity of the image with each bin's prompt of ``attribute``, averaged over the
        paraphrase variants (what a zero-shot scale fitted by ``medimp evaluate`` multiplies)."""
        variants = list(range(N_VARIANTS)) if variants is None else list(variants)
        return np.mean([self.similarity(image_vector, bin_prompts(attribute, variant=k)) for k in variants], axis=0)

    def zero_shot(self, image_vector: np.ndarray, attribute: str = "gfr",
                  variants: Sequence[int] | None = None) -> dict[str, float]:
        """Probability over the bins of ``attribute`` (e.g. the five GFR bins): softmax of the scaled
        similarity between the image and one prompt per bin.

        For GFR, a model evaluated by ``medimp evaluate --write-heads`` carries a scale fitted on patients
        it never saw (``metrics.zero_shot_gfr.temperature``): the softmax of that scale times the
        similarity averaged over the paraphrases. Otherwise the contrastive logit scale, averaged over
        the paraphrase variants' softmaxes (uncalibrated)."""
        bins = ATTRIBUTE_BINS[attribute]
        variants = list(range(N_VARIANTS)) if variants is None else list(variants)
        calibration = self.zero_shot_calibration() if attribute == "gfr" else None
        if calibration is not None:
            probabilities = softmax(float(calibration["temperature"])
                                    * self.bin_similarities(image_vector, attribute, variants))
            return {name: float(p) for name, p in zip(bins, probabilities, strict=True)}
        probabilities = np.mean([softmax(self.logit_scale() * self.similarity(image_vector, bin_prompts(attribute, k)))
                                 for k in variants], axis=0)
        return {name: float(p) for name, p in zip(bins, probabilities, strict=True)}

    def zero_shot_calibration(self) -> dict | None:
        """The card's zero-shot GFR evaluation on unseen patients (scale, accuracy...), if any."""
        entry = (self.card.get("metrics") or {}).get("zero_shot_gfr")
        if isinstance(entry, Mapping) and np.isfinite(float(entry.get("temperature", np.nan))):
            return dict(entry)
        return None

    def prognosis(self, exam_vectors: Mapping[str, np.ndarray], clinical: ClinicalValues | ClinicalRecord | None = None,
                  visit: str | None = None) -> PrognosisReading:
        """Probability of graft dysfunction per horizon for a reading at ``visit`` (default: the latest
        of ``exam_vectors``) from the exams so far, by every kind of head the model has: images only
        (MEDIMP), images + clinical values, clinical values only. ``clinical``: the values at that
        visit; missing ones are replaced by the heads' training means, and the reading says which."""
        self._check_heads()
        vectors = {str(k).upper(): v for k, v in exam_vectors.items() if v is not None}
        visit = (visit or latest_visit(vectors)).upper()
        if isinstance(clinical, ClinicalRecord):
            clinical = ClinicalValues.from_record(clinical)
        clinical = clinical or ClinicalValues()
        image = image_features(vectors, visit, dim=self.embed_dim)
        used = [e for e in exams_so_far(visit) if e in vectors]
        risks: dict[str, dict[str, float]] = {}
        notes = []
        not_shown: dict[str, str] = {}
        for kind in KINDS:
            if not any(h.kind == kind for h in self.loaded.prognosis.values()):
                notes.append(f"this model has no {KIND_LABELS[kind]} heads")
                continue
            heads = [self._head(kind, visit, h) for h in self.prognosis_horizons]
            problem = self.head_problem(heads)
            if problem:
                not_shown[kind] = problem
                continue
            x = features(kind, image, clinical)
            risks[kind] = {head.horizon: float(head.predict_proba(x[None])[0]) for head in heads}
        ignored = [e for e in vectors if e not in used]
        if ignored:
            notes.append(f"exams after {visit} ({', '.join(ignored)}) are not part of a reading at {visit}")
        reference = ((self.card.get("training") or {}).get("clinical_reference") or {}).get(visit)
        outside = outside_clinical_range(clinical, reference, visit) if any(
            k in risks for k in ("image+clinical", "clinical")) else []
        return PrognosisReading(visit, used, risks, clinical.given(), clinical.missing(), notes, not_shown, outside)

    @staticmethod
    def head_problem(heads) -> str | None:
        """Why the heads of one kind and visit give readings that need not make clinical sense (fitted
        before the cumulative, monotone model, or edited so that horizons cross or a clinical value
        moves a risk the wrong way); None when they are sound."""
        if any(h.extra.get("model") != HEAD_MODEL for h in heads):
            return ("its heads were fitted without the constraints that keep risks in clinical sense (cumulative "
                    "horizons, lower GFR never lowering a risk); fit them again with `medimp evaluate "
                    "--write-heads`")
        problems = check_head_constraints(heads)
        return "; ".join(problems) if problems else None


    @property
    def embedding_reference(self) -> dict | None:
        """The card's reference of the training exams' embeddings (see :mod:`.checks`), if it has one."""
        return (self.card.get("training") or {}).get("embedding_reference")

    def checks(self, volume: DCEVolume, roi: RoiBox, vector) -> list[Check]:
        """Whether this exam is something the model can read (:mod:`.checks`), for a result's label."""
        config = self.preprocess_config
        return [*image_checks(volume, roi, config.target_spacing, config.baseline_frames),
                embedding_check(vector, self.embedding_reference)]

    def model_facts(self) -> dict:
        """Key facts from the model card, for display next to any result."""
        card = self.card
        return {
            "name": card.get("name"),
            "architecture": card["architecture"].get("image_encoder"),
            "training_data": card.get("training", {}).get("data", "unknown"),
            "synthetic": is_synthetic(card),
            "metrics": card.get("metrics", {}),
            "licence": card.get("licence"),
            "weights_sha256": card["weights"]["sha256"],
            "device": self.device.type,
        }


# --------------------------------------------------------------------------------------------------
# one exam, everything at once (the viewer's "Analyze" and `medimp analyze`)
# --------------------------------------------------------------------------------------------------
@dataclass
class PrognosisReading:
    """Risks of one reading, by kind of head, with the inputs each used."""

    visit: str
    exams_used: list[str]
    risks: dict[str, dict[str, float]]  # kind -> horizon -> probability
    clinical_given: list[str]
    clinical_missing: list[str]
    notes: list[str]
    #: kind -> why its readings are not shown (heads that need not make clinical sense)
    not_shown: dict[str, str] = field(default_factory=dict)
    #: clinical values, or their combination, outside what the heads were fitted on (by value)
    outside_range: list[str] = field(default_factory=list)

    def inputs(self) -> dict[str, str]:
        """Per kind, in words: what the reading used."""
        images = f"images of {', '.join(self.exams_used)}"
        given = ", ".join(CLINICAL_LABELS[n] for n in self.clinical_given) or "none given"
        missing = ", ".join(CLINICAL_LABELS[n] for n in self.clinical_missing)
        clinical = f"clinical values: {given}" + (f" (missing, replaced by the training cohort's mean: {missing})"
                                                   if missing else "")
        return {"image": images, "image+clinical": f"{images}; {clinical}", "clinical": clinical}

    def to_dict(self) -> dict:
        return {"visit": self.visit, "exams_used": self.exams_used, "risks": self.risks,
                "inputs": {k: v for k, v in self.inputs().items() if k in self.risks},
                "clinical_given": self.clinical_given, "clinical_missing": self.clinical_missing,
                "notes": self.notes, "not_shown": self.not_shown, "outside_range": self.outside_range}


@dataclass
class Analysis:
    exam: str
    roi: RoiBox
    prompt: str | None
    similarity: float | None
    gfr_reading: dict[str, float]
    reading: PrognosisReading | None
    embedding: np.ndarray
    model: dict
    gfr_reading_accuracy: dict | None = None
    checks: list[Check] = field(default_factory=list)
    #: per reading, None when the model card shows it beats a trivial answer, else why not (:func:`card.reading_standing`)
    standing: dict[str, str | None] = field(default_factory=dict)
    #: range of the similarity on the exams the heads were fitted on (card ``training.similarity_reference``)
    similarity_reference: dict | None = None
    #: the user chose to see the readings of an exam outside what the model was trained on
    shown_anyway: bool = False

    @property
    def outside_training(self) -> bool:
        return outside_training(self.checks)

    @property
    def withheld(self) -> str | None:
        """Why the readings are withheld (an exam outside what the model was trained on), or None."""
        if not self.outside_training:
            return None
        return "; ".join(failed_messages(self.checks)) or "the exam failed its checks"

    @property
    def prognosis(self) -> dict[str, float]:
        """Image-only (MEDIMP) risk per horizon."""
        return dict(self.reading.risks.get("image", {})) if self.reading else {}

    # what a person is shown: an exam outside what the model was trained on has its readings withheld
    # unless the user chose to see them (:attr:`shown_anyway`)
    @property
    def hidden(self) -> bool:
        """True while the readings are withheld from view."""
        return self.withheld is not None and not self.shown_anyway

    @property
    def readings_withheld(self) -> str | None:
        """Why the readings are withheld from view, None when they are shown."""
        return self.withheld if self.hidden else None

    @property
    def shown_by_choice(self) -> bool:
        """True when the readings of an exam that failed its checks are shown by the user's choice."""
        return bool(self.shown_anyway and self.withheld is not None)

    @property
    def shown_similarity(self) -> float | None:
        return None if self.hidden else self.similarity

    @property
    def shown_gfr_reading(self) -> dict[str, float]:
        """The zero-shot GFR bins (bin -> probability) as shown; empty while withheld."""
        return {} if self.hidden else dict(self.gfr_reading)

    @property
    def shown_reading(self) -> PrognosisReading | None:
        """The prognosis reading as shown; None while withheld (or without prognosis heads)."""
        return None if self.hidden else self.reading

    def shown_risks(self, kind: str) -> dict[str, float]:
        """Horizon -> probability of one kind of reading (``image``, ``image+clinical``, ``clinical``) as
        shown; empty while withheld or when the model has no such heads."""
        reading = self.shown_reading
        return dict(reading.risks.get(kind, {})) if reading is not None else {}

    @property
    def prognosis_note(self) -> str | None:
        reading = self.shown_reading
        return "; ".join(reading.notes) if reading is not None and reading.notes else None

    def to_dict(self) -> dict:
        """The analysis as JSON-native values (for a report or a predictions file; the one serialiser)."""
        reading = self.shown_reading
        return {
            "exam": self.exam,
            "roi_zyx": self.roi.to_list(),
            "prompt": self.prompt,
            "similarity": self.shown_similarity,
            "similarity_reference": self.similarity_reference,
            "zero_shot_gfr": self.shown_gfr_reading,
            "zero_shot_gfr_accuracy": self.gfr_reading_accuracy,
            **{key: self.shown_risks(kind) for kind, key in RESULT_KEYS.items()},
            "prognosis_reading": reading.to_dict() if reading is not None else None,
            "prognosis_note": self.prognosis_note,
            "reading_standing": self.standing,
            "readings_withheld": self.readings_withheld,
            "shown_anyway": self.shown_by_choice,
            "model": self.model,
            "checks": [c.to_dict() for c in self.checks],
            "outside_training": self.outside_training,
        }


def analyze(predictor: Predictor, volume: DCEVolume, *, exam: str, prompt: str | None = None, roi=None,
            record: ClinicalRecord | None = None, earlier: Mapping[str, np.ndarray] | None = None,
            progress: Progress | None = None, show_anyway: bool = False) -> Analysis:
    """Embedding, similarity with ``prompt`` (if any), zero-shot GFR bins and the prognosis reading of
    one exam at its visit: from this image plus ``earlier`` exams' embeddings (if given), and the
    clinical values of ``record``. For an exam outside what the model was trained on (a failed check) the
    readings are withheld from :meth:`Analysis.to_dict` unless ``show_anyway``."""
    exam = exam.upper()
    embedding = predictor.embed_image(volume, roi, progress=progress)
    similarity = float(predictor.similarity(embedding.vector, prompt)[0]) if prompt else None
    reading = None
    if predictor.loaded.prognosis:
        vectors = {k.upper(): v for k, v in (earlier or {}).items() if k.upper() in exams_so_far(exam)}
        vectors[exam] = embedding.vector
        reading = predictor.prognosis(vectors, ClinicalValues.from_record(record), visit=exam)
    calibration = predictor.zero_shot_calibration()
    accuracy = None if calibration is None else {k: calibration.get(k) for k in
                                                 ("accuracy", "balanced_accuracy", "majority_accuracy", "n_exams")}
    return Analysis(exam, embedding.roi, prompt, similarity, predictor.zero_shot(embedding.vector, "gfr"),
                    reading, embedding.vector, predictor.model_facts(), accuracy,
                    predictor.checks(volume, embedding.roi, embedding.vector), reading_standing(predictor.card),
                    (predictor.card.get("training") or {}).get("similarity_reference") or None, show_anyway)
