"""Preprocessing chain: geometry with numbers, phase selection, normalisation, ROI detection, errors."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from napari_medimp.core.io import load_dce, save_nifti
from napari_medimp.core.preprocess import (
    PREPROCESS_VERSION,
    PreprocessConfig,
    PreprocessWarning,
    RoiBox,
    find_kidney_roi,
    parse_phase,
    prepare,
    prepare_batch,
    select_frames,
)
from napari_medimp.core.volume import DCEVolume

# --------------------------------------------------------------------------------------------------
# synthetic volumes built here (independent of napari_medimp.core.synth)
# --------------------------------------------------------------------------------------------------
SOURCE_SPACING_ZYX = (5.0, 1.5, 1.3)  # anisotropic, none a multiple of the target spacing


def _affine(kind: str) -> np.ndarray:
    sz, sy, sx = SOURCE_SPACING_ZYX
    if kind == "permuted":  # index x -> Superior, index y -> Left, index z -> Anterior
        linear = np.array([[0.0, -sy, 0.0], [0.0, 0.0, sz], [sx, 0.0, 0.0]])
    elif kind == "las":
        linear = np.diag([-sx, sy, sz])
    else:
        linear = np.diag([sx, sy, sz])
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = (37.0, -121.5, 18.25)
    return affine


def _world(affine: np.ndarray, index_zyx) -> np.ndarray:
    return (affine @ np.array([*np.asarray(index_zyx, float)[::-1], 1.0]))[:3]


def _index(affine: np.ndarray, world) -> np.ndarray:
    return (np.linalg.inv(affine) @ np.array([*world, 1.0]))[:3][::-1]


def _blob(shape_zyx, affine, center_world, sigma_mm) -> np.ndarray:
    """Gaussian in world mm sampled on a voxel grid (z, y, x)."""
    zz, yy, xx = np.meshgrid(*[np.arange(s, dtype=float) for s in shape_zyx], indexing="ij")
    xyz1 = np.stack([xx, yy, zz, np.ones_like(xx)], axis=-1)
    world = xyz1 @ affine.T
    d2 = ((world[..., :3] - center_world) ** 2).sum(-1)
    return np.exp(-d2 / (2 * sigma_mm**2))


def _marker_volume(kind: str, tmp_path):
    """3-frame volume with a Gaussian marker (sigma 2.5 mm) at a known source index; returns volume, index."""
    shape = (20, 40, 44)
    affine = _affine(kind)
    marker = (9, 23, 17)
    frame = 10.0 + 100.0 * _blob(shape, affine, _world(affine, marker), 2.5)
    data = np.stack([frame] * 3).astype(np.float32)
    if kind != "las":
        return DCEVolume(data, affine, frame_times=np.array([0.0, 5.0, 10.0])), np.array(marker)
    path = save_nifti(tmp_path / "las.nii.gz", data, affine, frame_times=[0.0, 5.0, 10.0])
    volume = load_dce(path)
    assert not np.allclose(volume.affine, affine)  # the reader did reorient to RAS
    loaded_marker = np.rint(_index(volume.affine, _world(affine, marker))).astype(int)
    assert volume.frame(0)[tuple(loaded_marker)] == pytest.approx(110.0)
    return volume, loaded_marker


def _roi_around(index_zyx, shape_zyx) -> RoiBox:
    lo = [max(0, int(i) - d) for i, d in zip(index_zyx, (5, 12, 9), strict=True)]
    hi = [min(s, int(i) + d) for i, d, s in zip(index_zyx, (8, 9, 15), shape_zyx, strict=True)]
    return RoiBox(lo[0], hi[0], lo[1], hi[1], lo[2], hi[2])


def _kidney_series(n_frames=16, shape=(20, 40, 48), noise=5.0, seed=0, gain=1.0):
    """Noisy DCE series: slowly enhancing background, kidney ellipsoid enhancing strongly mid-series,
    and a small vessel blob (brighter but much smaller) elsewhere. Returns volume and kidney mask."""
    rng = np.random.default_rng(seed)
    spacing = (4.0, 2.0, 2.0)
    affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
    affine[:3, 3] = (-40.0, 10.0, -30.0)
    zz, yy, xx = np.meshgrid(*[np.arange(s, dtype=float) for s in shape], indexing="ij")
    kidney = ((zz - 11) * 4 / 22) ** 2 + ((yy - 17) * 2 / 14) ** 2 + ((xx - 31) * 2 / 11) ** 2 <= 1
    vessel = (zz - 6) ** 2 + (yy - 32) ** 2 + (xx - 8) ** 2 <= 2.5**2
    times = np.arange(n_frames) * 7.0
    background = 100.0 + 0.3 * times
    bolus = np.where(times > 14, ((times - 14) / 35) ** 2 * np.exp(2 * (1 - (times - 14) / 35)), 0.0)
    kidney_curve = 100.0 + 300.0 * bolus
    vessel_curve = 100.0 + 600.0 * np.where(times > 7, np.exp(-(((times - 35) / 15) ** 2)), 0.0)
    data = np.empty((n_frames, *shape), dtype=np.float32)
    for t in range(n_frames):
        frame = np.full(shape, background[t])
        frame[kidney] = kidney_curve[t]
        frame[vessel] = vessel_curve[t]
        data[t] = gain * (frame + rng.normal(0.0, noise, shape))
    return DCEVolume(data, affine, frame_times=times), kidney


KIDNEY_ROI = RoiBox(4, 19, 8, 27, 22, 41)


# --------------------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("resize_mode", ["pad_crop", "resize"])
@pytest.mark.parametrize("kind", ["ras", "permuted", "las"])
def test_marker_lands_at_its_world_position_and_maps_back(kind, resize_mode, tmp_path):
    volume, marker = _marker_volume(kind, tmp_path)
    roi = _roi_around(marker, volume.shape[1:])
    config = PreprocessConfig(
        input_size=(24, 32, 32), phases=("late",), normalization="none", resize_mode=resize_mode
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", PreprocessWarning)  # the ROI fits: nothing may be cropped
        prepared = prepare(volume, config, roi)

    assert prepared.tensor.shape == (1, 24, 32, 32)
    assert prepared.roi == roi and prepared.source_shape == volume.shape[1:]
    assert prepared.frame_indices == ((2,),)
    linear = prepared.input_affine[:3, :3]
    assert np.allclose(linear, np.diag(np.diag(linear))) and np.all(np.diag(linear) > 0)  # RAS grid
    if resize_mode == "pad_crop":
        assert np.allclose(np.diag(linear), config.target_spacing[::-1])
    else:  # the ROI's physical extent fills the model grid
        corners = [_world(volume.affine, np.array(c) - 0.5) for c in (roi.start, roi.stop)]
        extent_ras = np.abs(corners[1] - corners[0])
        assert np.allclose(np.diag(linear) * np.array(config.input_size[::-1]), extent_ras)

    # (1) argmax of the model tensor is within half a model voxel of the marker, per world axis
    peak = np.unravel_index(int(prepared.tensor[0].argmax()), prepared.tensor.shape[1:])
    marker_world = _world(volume.affine, marker)
    peak_world = _world(prepared.input_affine, peak)
    half_voxel = 0.5 * np.diag(linear)
    assert np.all(np.abs(peak_world - marker_world) <= half_voxel + 1e-6), (peak_world, marker_world)

    # (2) a bump at that model voxel comes back to the marker's source index (within one voxel)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in prepared.tensor.shape[1:]], indexing="ij"))
    bump = np.exp(-((grid - np.array(peak)[:, None, None, None]) ** 2).sum(0) / 2.0)
    back, back_roi = prepared.to_source(bump)
    assert back_roi == roi and back.shape == roi.shape
    source_peak = np.array(np.unravel_index(int(back.argmax()), back.shape)) + np.array(roi.start)
    assert np.abs(source_peak - marker).max() <= 1, (source_peak, marker)
    full = prepared.to_source_volume(bump)
    assert full.shape == volume.shape[1:] and np.array_equal(full[roi.slices], back)
    assert prepared.roi_translate_offset() == roi.start


def test_to_source_round_trip_reproduces_a_smooth_image():
    affine = _affine("ras")
    shape = (20, 40, 44)
    center = _world(affine, (10, 18, 25))
    frame = _blob(shape, affine, center, 12.0).astype(np.float32)
    volume = DCEVolume(np.stack([frame, frame]), affine)
    roi = RoiBox(2, 18, 4, 34, 6, 40)
    config = PreprocessConfig(input_size=(24, 32, 32), phases=(1,), normalization="none", clip_range=None)
    prepared = prepare(volume, config, roi)
    back, _ = prepared.to_source(prepared.tensor[0])
    source = frame[roi.slices]
    assert np.corrcoef(back.ravel(), source.ravel())[0, 1] > 0.99
    assert np.abs(back - source).max() < 0.1
    with pytest.raises(ValueError, match="model grid"):
        prepared.to_source(np.zeros((3, 3, 3)))


# --------------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------------
def test_config_round_trip_through_json():
    config = PreprocessConfig(
        target_spacing=(3.0, 2.0, 1.5), input_size=(16, 24, 32), phases=("baseline", "PEAK", 4, "60 s"),
        normalization="zscore", clip_range=None, roi_margin_mm=5, resize_mode="resize",
    )
    assert config.phases == ("baseline", "peak", 4, "60s")
    data = json.loads(json.dumps(config.to_dict()))
    assert data["version"] == PREPROCESS_VERSION
    restored = PreprocessConfig.from_dict(data)
    assert restored == config and hash(restored) == hash(config)
    assert PreprocessConfig.from_dict(PreprocessConfig().to_dict()) == PreprocessConfig()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"phases": ()}, "at least one phase"),
        ({"phases": ("first",)}, "not understood"),
        ({"target_spacing": (4.0, 0.0, 2.5)}, "target_spacing"),
        ({"input_size": (32, 64)}, "input_size"),
        ({"normalization": "minmax"}, "normalization"),
        ({"resize_mode": "stretch"}, "resize_mode"),
        ({"version": PREPROCESS_VERSION + 1}, "newer"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PreprocessConfig(**kwargs)


def test_config_from_dict_refuses_unknown_options():
    with pytest.raises(ValueError, match="unknown preprocessing option"):
        PreprocessConfig.from_dict({**PreprocessConfig().to_dict(), "histogram_matching": True})


def test_parse_phase():
    assert parse_phase(3) == ("index", 3)
    assert parse_phase("-1") == ("index", -1)
    assert parse_phase("Late") == ("late", None)
    assert parse_phase("62.5s") == ("time", 62.5)
    with pytest.raises(ValueError):
        parse_phase(True)


# --------------------------------------------------------------------------------------------------
# phases and normalisation
# --------------------------------------------------------------------------------------------------
def test_baseline_and_peak_channels():
    volume, kidney = _kidney_series()
    config = PreprocessConfig(phases=("baseline", "peak"), input_size=(16, 24, 24))
    prepared = prepare(volume, config, KIDNEY_ROI)
    assert prepared.tensor.shape == (2, 16, 24, 24)
    assert prepared.channel_names == ("baseline", "peak")
    roi_means = [volume.load().data[t][KIDNEY_ROI.slices].mean() for t in range(volume.n_frames)]
    assert prepared.frame_indices == ((0, 1), (int(np.argmax(roi_means)),))
    assert 5 <= prepared.frame_indices[1][0] <= 10  # mid-series bolus
    baseline, peak = prepared.tensor.mean(dim=(1, 2, 3)).tolist()
    assert peak > baseline + 0.05
    in_kidney = [float(prepared.to_source_volume(channel)[kidney].mean()) for channel in prepared.tensor]
    assert abs(in_kidney[0]) < 0.1 and 0.6 < in_kidney[1] < 1.1  # baseline ~0, peak ~1 (99.5th pct)
    assert np.isfinite(prepared.tensor.numpy()).all()
    low, high = config.clip_range
    assert float(prepared.tensor.min()) >= low and float(prepared.tensor.max()) <= high


def test_time_late_and_index_selectors():
    volume, _ = _kidney_series()  # frames every 7 s: 60 s is nearest to frame 9 (63 s)
    config = PreprocessConfig(phases=("60s", "late", 2, -2, "0s"))
    assert select_frames(volume, config, KIDNEY_ROI) == ((9,), (15,), (2,), (14,), (0,))


def test_robust_normalisation_is_invariant_to_gain_and_offset():
    volume, _ = _kidney_series(seed=3)
    config = PreprocessConfig(phases=("baseline", "peak", "late"), input_size=(16, 24, 24))
    reference = prepare(volume, config, KIDNEY_ROI).tensor
    for gain, shift in ((10.0, 0.0), (0.01, 0.0), (3.0, 250.0)):
        changed = DCEVolume(volume.data * np.float32(gain) + np.float32(shift), volume.affine, volume.frame_times)
        tensor = prepare(changed, config, KIDNEY_ROI).tensor
        assert np.allclose(tensor.numpy(), reference.numpy(), atol=1e-4), (gain, shift)


def test_only_needed_frames_are_read_and_lazy_volumes_work():
    import dask.array as da

    volume, _ = _kidney_series()

    class CountingArray:
        def __init__(self, data):
            self.data, self.shape, self.dtype, self.reads = data, data.shape, data.dtype, []

        def __getitem__(self, key):
            self.reads.append(key)
            return self.data[key]

    counting = CountingArray(volume.data)
    lazy = DCEVolume(counting, volume.affine, volume.frame_times)
    config = PreprocessConfig(phases=("late", 3), input_size=(16, 24, 24))
    tensor = prepare(lazy, config, KIDNEY_ROI).tensor
    assert sorted(counting.reads) == [0, 1, 3, 15]  # baseline frames for the offset + the two phases
    dask_volume = DCEVolume(da.from_array(volume.data, chunks=(1, -1, -1, -1)), volume.affine, volume.frame_times)
    assert np.array_equal(prepare(dask_volume, config, KIDNEY_ROI).tensor.numpy(), tensor.numpy())


def test_nan_and_inf_are_neutralised():
    volume, _ = _kidney_series()
    data = volume.data.copy()
    data[:, 10, 15, 30] = np.nan
    data[5, 8, 12, 25] = np.inf
    tensor = prepare(DCEVolume(data, volume.affine), PreprocessConfig(phases=(5,)), KIDNEY_ROI).tensor
    assert np.isfinite(tensor.numpy()).all()


def test_prepare_batch_and_crop_warning():
    volume, _ = _kidney_series()
    config = PreprocessConfig(input_size=(8, 16, 16), phases=("baseline", "late"))
    with pytest.warns(PreprocessWarning, match="cropped"):
        batch = prepare_batch([volume, volume], config, rois=[None, RoiBox.full(volume.shape[1:])])
    assert tuple(batch.shape) == (2, 2, 8, 16, 16)
    assert str(batch.dtype) == "torch.float32"
    with pytest.raises(ValueError, match="2 volumes but 1 ROI"):
        prepare_batch([volume, volume], config, rois=[None])


# --------------------------------------------------------------------------------------------------
# automatic ROI
# --------------------------------------------------------------------------------------------------
def test_find_kidney_roi_finds_the_enhancing_ellipsoid():
    volume, kidney = _kidney_series(noise=15.0)
    roi = find_kidney_roi(volume, margin_mm=8.0)
    zs, ys, xs = np.nonzero(kidney)
    truth = RoiBox(zs.min(), zs.max() + 1, ys.min(), ys.max() + 1, xs.min(), xs.max() + 1)
    margin = np.ceil(8.0 / np.array(volume.spacing)).astype(int)
    for axis in range(3):
        lo_expected = max(0, truth.start[axis] - margin[axis])
        hi_expected = min(volume.shape[1 + axis], truth.stop[axis] + margin[axis])
        assert abs(roi.start[axis] - lo_expected) <= 1, (roi, truth)
        assert abs(roi.stop[axis] - hi_expected) <= 1, (roi, truth)
    # prepare() uses it when no box is given
    prepared = prepare(volume, PreprocessConfig(roi_margin_mm=8.0, input_size=(16, 32, 32)))
    assert prepared.roi == roi


def test_find_kidney_roi_needs_a_dynamic_series():
    volume, _ = _kidney_series(n_frames=1)
    with pytest.raises(ValueError, match=">= 2 frames"):
        find_kidney_roi(volume)


# --------------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------------
def test_roi_box_errors_name_box_and_shape():
    volume, _ = _kidney_series(n_frames=4)
    with pytest.raises(ValueError, match=r"empty.*\(20, 40, 48\)"):
        prepare(volume, PreprocessConfig(), RoiBox(5, 5, 0, 10, 0, 10))
    with pytest.raises(ValueError, match=r"\[0, 5, 0, 5, 60, 70\].*outside.*\(20, 40, 48\)"):
        prepare(volume, PreprocessConfig(), RoiBox(0, 5, 0, 5, 60, 70))
    with pytest.raises(ValueError, match="6 numbers"):
        prepare(volume, PreprocessConfig(), (0, 5, 0, 5))
    assert RoiBox(-3, 5, 0, 50, 10, 20).clipped((20, 40, 48)) == RoiBox(0, 5, 0, 40, 10, 20)


def test_constant_volume_has_no_signal():
    volume = DCEVolume(np.full((4, 10, 12, 14), 7.0, dtype=np.float32), np.eye(4))
    with pytest.raises(ValueError, match="no signal"):
        prepare(volume, PreprocessConfig(), RoiBox(2, 8, 2, 10, 2, 12))
    with pytest.raises(ValueError, match="no signal"):
        prepare(volume, PreprocessConfig())  # automatic ROI


def test_selectors_beyond_the_series():
    volume, _ = _kidney_series(n_frames=4)
    with pytest.raises(ValueError, match="frame 7 but the series has only 4 frame"):
        prepare(volume, PreprocessConfig(phases=(7,)), KIDNEY_ROI)
    with pytest.raises(ValueError, match="beyond the series"):
        prepare(volume, PreprocessConfig(phases=("300s",)), KIDNEY_ROI)
    no_times = DCEVolume(volume.data, volume.affine)
    with pytest.raises(ValueError, match="needs frame times"):
        prepare(no_times, PreprocessConfig(phases=("60s",)), KIDNEY_ROI)
