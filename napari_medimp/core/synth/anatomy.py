"""Geometry of one exam: field of view and affine, label map, tissue sub-classes, kidney coordinates."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

from .physiology import (
    ARTERY,
    BACKGROUND,
    COLLECTING_SYSTEM,
    CORTEX,
    MEDULLA,
    S_FIELDS,
    SINUS_CENTRE_V,
    SINUS_SEMI,
    SOFT_TISSUE,
    SynthSettings,
    rng_for,
)

# tissue sub-classes of the signal model (several share a label)
AIR, FAT, MUSCLE, VISCERA, T_CORTEX, T_MEDULLA, T_URINE, T_BLOOD = range(8)
TISSUE_TO_LABEL = np.array([BACKGROUND, SOFT_TISSUE, SOFT_TISSUE, SOFT_TISSUE, CORTEX, MEDULLA,
                            COLLECTING_SYSTEM, ARTERY], dtype=np.uint8)


@dataclass
class ExamGeometry:
    affine: np.ndarray
    fov_centre: np.ndarray
    pose_rotation: np.ndarray
    pose_shift: np.ndarray
    tissue: np.ndarray
    labels: np.ndarray
    damage_u: np.ndarray
    texture: np.ndarray


def _rot_z(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])


def _rot_y(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])


def pose(exam: dict) -> tuple[np.ndarray, np.ndarray]:
    """(rotation, shift) mapping patient coordinates to scanner (world, RAS) coordinates."""
    return _rot_z(exam["pose_yaw_deg"]) @ _rot_y(exam["pose_roll_deg"]), np.asarray(exam["pose_shift_mm"])


def field_of_view(patient: dict, exam: dict, settings: SynthSettings) -> tuple[np.ndarray, np.ndarray]:
    """(affine, centre) of the acquisition: centred near the graft, kept around it when it fits."""
    anat = patient["anatomy"]
    rotation, shift = pose(exam)
    s = 1.0 if anat["side"] == "right" else -1.0
    centre_p = np.asarray(anat["kidney_centre_mm"])
    kidney_w = rotation @ centre_p + shift
    centre = rotation @ (centre_p + np.array([-s * 15.0, -10.0, 0.0])) + shift + np.asarray(exam["fov_jitter_mm"])
    full = rotation @ np.asarray(anat["rotation"]) * np.asarray(exam["semi_axes_mm"])[None, :]
    half_kidney = np.sqrt((full**2).sum(axis=1))
    spacing_xyz = np.asarray(settings.spacing[::-1], float)
    n_xyz = np.asarray(settings.grid[::-1], float)
    half_fov = spacing_xyz * n_xyz / 2 - 1.5 * spacing_xyz
    slack = np.maximum(half_fov - half_kidney, 0.0)
    centre = kidney_w + np.clip(centre - kidney_w, -slack, slack)
    affine = np.eye(4)
    affine[:3, :3] = np.diag(spacing_xyz)
    affine[:3, 3] = centre - spacing_xyz * (n_xyz - 1) / 2
    return affine, centre


def _waves(rng: np.random.Generator, n: int, wavelengths: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    directions = rng.normal(size=(n, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    k = directions * (2 * np.pi / rng.uniform(*wavelengths, size=n))[:, None]
    return k, rng.uniform(0, 2 * np.pi, size=n)


def smooth_field(points: np.ndarray, k: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Unit-variance smooth random field (sum of plane waves) at ``points`` (N, 3) in mm."""
    return np.sqrt(2.0 / len(phase)) * np.cos(points @ k.T + phase).sum(axis=1)


def _polyline_distance(points: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    best = np.full(len(points), np.inf)
    for p0, p1 in zip(vertices[:-1], vertices[1:], strict=True):
        d = p1 - p0
        t = np.clip((points - p0) @ d / max(d @ d, 1e-9), 0, 1)
        best = np.minimum(best, np.linalg.norm(points - p0 - t[:, None] * d, axis=1))
    return best


def _tube(points: np.ndarray, vertices: np.ndarray, radius: float) -> np.ndarray:
    lo, hi = vertices.min(axis=0) - radius, vertices.max(axis=0) + radius
    inside = np.all((points >= lo) & (points <= hi), axis=1)
    hit = np.zeros(len(points), bool)
    if inside.any():
        hit[inside] = _polyline_distance(points[inside], vertices) <= radius
    return hit


def _bezier(p0: np.ndarray, control: np.ndarray, p1: np.ndarray, n: int = 16) -> np.ndarray:
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * control + t**2 * p1


def _ellipsoid_area(a: float, b: float, c: float) -> float:
    p = 1.6075
    return 4 * math.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3) ** (1 / p)


def kidney_tissue(local: np.ndarray, patient: dict, exam: dict) -> np.ndarray:
    """Tissue class (cortex, medulla, urine or air for outside) of points in kidney coordinates (mm)."""
    a, b, c = exam["semi_axes_mm"]
    th = exam["cortical_thickness_mm"]
    semi = np.array([a, b, c])
    out = np.full(len(local), AIR, dtype=np.uint8)
    inside = ((local / semi) ** 2).sum(axis=1) <= 1
    out[inside] = T_CORTEX
    inner_semi = semi - th
    inner = inside & (((local / inner_semi) ** 2).sum(axis=1) <= 1)
    sinus_c = np.array([0.0, SINUS_CENTRE_V * b, 0.0])
    sinus_s = np.asarray(SINUS_SEMI) * semi
    pyramids = patient["anatomy"]["pyramids"]
    if pyramids and inner.any():
        pts = local[inner]
        base_radius = patient["anatomy"]["pyramid_width"] * math.sqrt(
            _ellipsoid_area(*inner_semi) / len(pyramids))
        medulla = np.zeros(len(pts), bool)
        for d in pyramids:
            base = inner_semi * np.asarray(d)
            rel = np.linalg.norm((base - sinus_c) / sinus_s)
            if rel < 1.2:
                continue
            apex = sinus_c + (base - sinus_c) * (0.9 / rel)
            axis = base - apex
            length = float(np.linalg.norm(axis))
            axis /= length
            s = (pts - apex) @ axis
            radial = np.linalg.norm(pts - apex - s[:, None] * axis, axis=1)
            medulla |= (s > 0) & (radial <= s * base_radius / length)
        sub = out[inner]
        sub[medulla] = T_MEDULLA
        out[inner] = sub
    sinus = inside & ((((local - sinus_c) / sinus_s) ** 2).sum(axis=1) <= 1)
    out[sinus] = T_URINE
    return out


def render_geometry(patient: dict, exam: dict, settings: SynthSettings) -> ExamGeometry:
    """Tissue classes, labels, kidney damage field and soft-tissue texture on the exam grid."""
    anat = patient["anatomy"]
    affine, centre = field_of_view(patient, exam, settings)
    rotation, shift = pose(exam)
    nz, ny, nx = settings.grid
    idx = np.stack(np.meshgrid(np.arange(nx), np.arange(ny), np.arange(nz), indexing="ij"), axis=-1)
    world = idx.reshape(-1, 3) @ affine[:3, :3].T + affine[:3, 3]
    body_p = (world - shift) @ rotation

    bx, by = anat["body_semi_axes_mm"]
    fat, wall = anat["fat_mm"], anat["wall_mm"]
    ell = lambda p, ax, ay: (p[:, 0] / ax) ** 2 + (p[:, 1] / ay) ** 2  # noqa: E731
    tissue = np.full(len(world), AIR, dtype=np.uint8)
    tissue[ell(body_p, bx, by) <= 1] = FAT
    tissue[ell(body_p, bx - fat, by - fat) <= 1] = MUSCLE
    tissue[ell(body_p, bx - fat - wall, by - fat - wall) <= 1] = VISCERA
    s = 1.0 if anat["side"] == "right" else -1.0
    psoas = body_p - np.array([s * 0.32 * bx, -0.45 * by, 0.0])
    tissue[(ell(psoas, *anat["psoas_semi_axes_mm"]) <= 1) & (tissue == VISCERA)] = MUSCLE
    in_body = tissue != AIR

    centre_k = np.asarray(anat["kidney_centre_mm"])
    rot_k = np.asarray(anat["rotation"])
    local = (body_p - centre_k) @ rot_k
    semi = np.asarray(exam["semi_axes_mm"])
    near = np.all(np.abs(local) <= semi + 30.0, axis=1)
    kid = kidney_tissue(local[near], patient, exam)
    sub = tissue[near]
    sub[kid != AIR] = kid[kid != AIR]
    tissue[near] = sub

    a, b, c = semi
    to_p = lambda q: centre_k + rot_k @ np.asarray(q, float)  # noqa: E731
    pelvis = np.stack([to_p([0, SINUS_CENTRE_V * b, -0.2 * c]), to_p([0, b + 14.0, -0.35 * c])])
    tissue[_tube(body_p, pelvis, anat["pelvis_radius_mm"]) & in_body] = T_URINE

    hilum_entry = to_p([0.0, b + 2.0, 0.3 * c])
    anastomosis = np.asarray(anat["anastomosis_mm"])
    control = (anastomosis + hilum_entry) / 2 + np.asarray(anat["renal_artery_bend_mm"])
    renal = np.vstack([_bezier(anastomosis, control, hilum_entry), to_p([0, 0.35 * b, 0.15 * c])])
    artery = _tube(body_p, renal, anat["renal_artery_radius_mm"])
    point, direction = np.asarray(anat["iliac_point_mm"]), np.asarray(anat["iliac_direction"])
    rel = body_p - point
    dist = np.linalg.norm(rel - (rel @ direction)[:, None] * direction, axis=1)
    artery |= dist <= anat["iliac_radius_mm"]
    tissue[artery & in_body] = T_BLOOD

    frng = rng_for(patient["seed"], patient["index"], S_FIELDS)
    k_damage, ph_damage = _waves(frng, 10, (25.0, 60.0))
    k_tex, ph_tex = _waves(frng, 16, (8.0, 30.0))
    parenchyma = (tissue == T_CORTEX) | (tissue == T_MEDULLA)
    damage_u = np.zeros(len(world), np.float32)
    if parenchyma.any():
        damage_u[parenchyma] = ndtr(1.5 * smooth_field(local[parenchyma], k_damage, ph_damage))
    texture = np.zeros(len(world), np.float32)
    texture[in_body] = smooth_field(body_p[in_body], k_tex, ph_tex)

    shape_xyz = (nx, ny, nz)
    to_zyx = lambda arr: np.ascontiguousarray(arr.reshape(shape_xyz).transpose(2, 1, 0))  # noqa: E731
    tissue_zyx = to_zyx(tissue)
    return ExamGeometry(
        affine=affine,
        fov_centre=centre,
        pose_rotation=rotation,
        pose_shift=shift,
        tissue=tissue_zyx,
        labels=TISSUE_TO_LABEL[tissue_zyx],
        damage_u=to_zyx(damage_u),
        texture=to_zyx(texture),
    )
