"""NIfTI readers and writer: geometry, orientation, laziness and refusal of bad files."""

from __future__ import annotations

import gzip
import json
import os
import re
import struct
import tracemalloc
import warnings

import nibabel as nib
import numpy as np
import pytest
from nibabel.testing import data_path

from napari_medimp.core.io import DCEReadError, DCEReadWarning, load_dce, load_nifti, save_nifti
from napari_medimp.core.io.nifti import load_phase_folder
from napari_medimp.core.volume import affine_from_geometry

EXAMPLE4D = os.path.join(data_path, "example4d.nii.gz")


def _write(path, array_xyzt, affine, dtype=np.float32):
    img = nib.Nifti1Image(np.asarray(array_xyzt, dtype=dtype), affine)
    nib.save(img, str(path))
    return path


def _napari_world(geometry, index_zyx):
    """World coordinate of an array index under napari's scale/rotate/translate composition."""
    rotate = geometry.get("rotate", np.eye(4))[1:, 1:]
    return np.asarray(geometry["translate"][1:]) + rotate @ (np.asarray(geometry["scale"][1:]) * index_zyx)


def test_nibabel_example4d_shape_axis_order_and_spacing():
    ref = nib.load(EXAMPLE4D)
    vol = load_dce(EXAMPLE4D)
    nx, ny, nz, nt = ref.shape
    assert vol.shape == (nt, nz, ny, nx)
    zx, zy, zz, tr = ref.header.get_zooms()
    np.testing.assert_allclose(vol.spacing, (zz, zy, zx), rtol=1e-5)
    # the file is LAS: reorientation to RAS flips x, nothing else
    assert vol.metadata["source_orientation"] == "LAS"
    assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")
    raw = np.asarray(ref.dataobj, dtype=np.float32)
    np.testing.assert_array_equal(vol.data[1, 5, 7, 9], raw[nx - 1 - 9, 7, 5, 1])
    np.testing.assert_allclose(vol.frame_times, [0.0, tr])
    assert vol.data.dtype == np.float32


def test_marker_voxel_keeps_its_world_position(tmp_path):
    # an LPI, permuted (y-x swapped) acquisition with anisotropic voxels
    affine = np.array([[0.0, -1.5, 0.0, 90.0], [-2.0, 0.0, 0.0, 40.0], [0.0, 0.0, -4.0, 30.0], [0, 0, 0, 1]])
    data = np.zeros((10, 12, 6, 3), np.float32)
    ijk = (3, 8, 2)
    data[ijk + (1,)] = 100.0
    path = _write(tmp_path / "oblique.nii", data, affine)
    world = affine @ np.array([*ijk, 1.0])

    vol = load_dce(path)
    assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")
    assert vol.shape == (3, 6, 10, 12)  # x<->y swapped by the permutation
    t, z, y, x = np.argwhere(vol.data == 100.0)[0]
    assert t == 1
    np.testing.assert_allclose(vol.affine @ [x, y, z, 1.0], world)
    np.testing.assert_allclose(vol.spacing, (4.0, 2.0, 1.5))
    # napari's layer transform puts it at the same place (world axes S, A, R)
    np.testing.assert_allclose(_napari_world(vol.layer_geometry(), np.array([z, y, x])), world[:3][::-1])


def test_oblique_volume_gets_a_rotation_and_round_trips(tmp_path):
    angle = np.deg2rad(12)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([2.0, 2.0, 3.0])
    affine[:3, 3] = [-50, 20, 10]
    data = np.random.default_rng(0).random((8, 9, 5, 2)).astype(np.float32)
    vol = load_dce(_write(tmp_path / "obl.nii.gz", data, affine))
    assert vol.obliquity_deg == pytest.approx(12.0)
    assert "rotate" not in vol.layer_geometry()
    geometry = vol.layer_geometry(include_rotation=True)
    assert "rotate" in geometry
    np.testing.assert_allclose(affine_from_geometry(geometry["scale"], geometry["translate"], geometry["rotate"]),
                               vol.affine, atol=1e-9)
    idx = np.array([4.0, 6.0, 2.0])  # z, y, x
    np.testing.assert_allclose(_napari_world(geometry, idx), (vol.affine @ [*idx[::-1], 1])[:3][::-1])


def test_save_load_round_trip_with_frame_times(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.random((4, 5, 6, 7)).astype(np.float32)
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    affine[:3, 3] = [-10, 5, 2]
    times = [0.0, 4.0, 10.0, 30.0]
    path = save_nifti(tmp_path / "rt.nii.gz", data, affine, frame_times=times)
    assert json.loads((tmp_path / "rt.json").read_text())["FrameTimes"] == times
    vol = load_dce(path)
    np.testing.assert_array_equal(vol.data, data)
    np.testing.assert_allclose(vol.affine, affine)
    np.testing.assert_allclose(vol.frame_times, times)
    # reproducible bytes: same input, same file
    again = save_nifti(tmp_path / "rt2.nii.gz", data, affine, frame_times=times)
    assert again.read_bytes() == path.read_bytes()


def test_uniform_frame_times_come_from_the_header(tmp_path):
    data = np.zeros((3, 2, 2, 2), np.float32)
    path = save_nifti(tmp_path / "u.nii", data, np.eye(4), frame_times=[0, 2.5, 5.0])
    (tmp_path / "u.json").unlink()
    np.testing.assert_allclose(load_dce(path).frame_times, [0, 2.5, 5.0])


def test_lazy_read_matches_eager_and_defers_io(tmp_path):
    rng = np.random.default_rng(2)
    data = rng.random((6, 4, 5, 7)).astype(np.float32)  # t, z, y, x
    for name in ("lazy.nii", "lazy.nii.gz"):
        path = save_nifti(tmp_path / name, data, np.diag([-2.0, 2.0, 2.0, 1.0]))
        lazy = load_nifti(path, lazy=True)
        eager = load_nifti(path, lazy=False)
        assert lazy.is_lazy and not eager.is_lazy
        assert lazy.shape == eager.shape == (6, 4, 5, 7)
        np.testing.assert_array_equal(lazy.frame(3), eager.data[3])
        np.testing.assert_array_equal(lazy.load().data, eager.data)
        np.testing.assert_array_equal(eager.data[:, :, :, ::-1], data)  # x flipped to RAS


def test_lazy_shape_of_a_sagittal_file(tmp_path):
    # sagittal acquisition: voxel axes (i, j, k) run along (A, S, R), a cyclic permutation
    affine = np.array([[0, 0, 1.0, 0], [1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]])
    data = np.random.default_rng(4).random((4, 5, 6, 2)).astype(np.float32)
    path = _write(tmp_path / "sag.nii", data, affine)
    lazy, eager = load_nifti(path, lazy=True), load_nifti(path, lazy=False)
    assert lazy.shape == eager.shape == (2, 5, 4, 6)
    np.testing.assert_array_equal(lazy.load().data, eager.data)


def test_3d_opens_as_one_frame_with_a_warning(tmp_path):
    path = _write(tmp_path / "three.nii.gz", np.ones((4, 5, 6)), np.eye(4))
    with pytest.warns(DCEReadWarning, match="single frame"):
        vol = load_dce(path)
    assert vol.shape == (1, 6, 5, 4)


def test_5d_is_refused_but_trailing_singletons_are_fine(tmp_path):
    bad = _write(tmp_path / "five.nii.gz", np.ones((3, 3, 3, 2, 2)), np.eye(4))
    with pytest.raises(DCEReadError, match=r"five\.nii\.gz.*5D"):
        load_dce(bad)
    ok = _write(tmp_path / "ok.nii.gz", np.ones((3, 3, 3, 2, 1)), np.eye(4))
    assert load_dce(ok).shape == (2, 3, 3, 3)


def test_zero_length_axis_is_refused(tmp_path):
    path = _write(tmp_path / "empty.nii", np.ones((3, 0, 3, 2)), np.eye(4))
    with pytest.raises(DCEReadError, match="zero-length"):
        load_dce(path)


def test_nan_and_inf_voxels_are_zeroed_and_counted(tmp_path):
    data = np.ones((3, 3, 3, 2), np.float32)
    data[0, 0, 0, 0] = np.nan
    data[1, 1, 1, 1] = np.inf
    path = _write(tmp_path / "nan.nii.gz", data, np.eye(4))
    with pytest.warns(DCEReadWarning, match="2 NaN/Inf voxels"):
        vol = load_dce(path)
    assert np.isfinite(vol.data).all()
    assert vol.data.sum() == pytest.approx(data.size - 2)


def test_truncated_gzip_is_reported_at_open(tmp_path):
    data = np.random.default_rng(3).random((20, 20, 20, 4)).astype(np.float32)
    path = save_nifti(tmp_path / "full.nii.gz", data, np.eye(4))
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    for lazy in (None, True, False):
        with pytest.raises(DCEReadError, match=r"cut\.nii\.gz.*(truncated|corrupt)"):
            load_nifti(cut, lazy=lazy)


def test_truncated_uncompressed_file(tmp_path):
    path = save_nifti(tmp_path / "full.nii", np.ones((2, 10, 10, 10), np.float32), np.eye(4))
    cut = tmp_path / "cut.nii"
    cut.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(DCEReadError, match="truncated"):
        load_dce(cut)


def test_text_file_named_nifti(tmp_path):
    path = tmp_path / "notes.nii.gz"
    path.write_text("patient notes, not an image\n" * 10)
    with pytest.raises(DCEReadError, match=r"notes\.nii\.gz"):
        load_dce(path)
    gz = tmp_path / "text.nii.gz"
    gz.write_bytes(gzip.compress(b"hello world" * 100))
    with pytest.raises(DCEReadError, match=r"text\.nii\.gz"):
        load_dce(gz)


def test_huge_header_in_tiny_file_allocates_nothing(tmp_path):
    header = nib.Nifti1Header()
    header.set_data_shape((4000, 4000, 4000, 50))
    header.set_data_dtype(np.float32)
    for name, opener in (("huge.nii", open), ("huge.nii.gz", gzip.open)):
        path = tmp_path / name
        with opener(path, "wb") as fh:
            fh.write(header.binaryblock + b"\x00" * 4 + b"\x00" * 4096)
        tracemalloc.start()
        with pytest.raises(DCEReadError, match="(truncated|header claims)"):
            load_dce(path)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 50 * 2**20


def test_phase_folder_natural_order_and_sidecar_times(tmp_path):
    folder = tmp_path / "phases"
    folder.mkdir()
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    for k in (1, 2, 10):
        _write(folder / f"phase{k}.nii.gz", np.full((3, 4, 5), k, np.float32), affine)
    vol = load_phase_folder(folder)
    assert vol.shape == (3, 5, 4, 3)
    assert [float(vol.data[t].mean()) for t in range(3)] == [1.0, 2.0, 10.0]
    assert vol.frame_times is None and vol.metadata["ordered_by"] == "file name"
    lazy = load_phase_folder(folder, lazy=True)
    assert lazy.is_lazy
    np.testing.assert_array_equal(lazy.load().data, vol.data)
    # sidecar times override the name order
    for k, stamp in ((1, "10:00:20"), (2, "10:00:00.5"), (10, "10:00:05")):
        (folder / f"phase{k}.json").write_text(json.dumps({"AcquisitionTime": stamp}))
    vol = load_dce(folder)
    assert [float(vol.data[t].mean()) for t in range(3)] == [2.0, 10.0, 1.0]
    np.testing.assert_allclose(vol.frame_times, [0.0, 4.5, 19.5])


def test_phase_folder_with_mismatched_phase_names_the_file(tmp_path):
    folder = tmp_path / "phases"
    folder.mkdir()
    _write(folder / "a.nii.gz", np.zeros((3, 4, 5)), np.eye(4))
    _write(folder / "b.nii.gz", np.zeros((3, 4, 6)), np.eye(4))
    with pytest.raises(DCEReadError, match=r"b\.nii\.gz.*shape"):
        load_dce(folder)


def test_cohort_tree_exam_and_patient_folders(tmp_path):
    from napari_medimp.core.io.cohort import classify_folder, load_exam, patient_exams

    affine = np.eye(4)
    for exam in ("M3", "D15"):
        seq = tmp_path / "cohort" / "P01" / exam / "dce"
        seq.mkdir(parents=True)
        for k in range(3):
            _write(seq / f"t{k}.nii.gz", np.full((4, 4, 2), k, np.float32), affine)
        (tmp_path / "cohort" / "P01" / exam / "seg").mkdir()
        _write(tmp_path / "cohort" / "P01" / exam / "seg" / "seg.nii.gz", np.ones((4, 4, 2), np.uint8), affine)
    (tmp_path / "cohort" / "clinical.csv").write_text("patient_id\nP01\n")

    assert classify_folder(tmp_path / "cohort").kind == "cohort"
    assert classify_folder(tmp_path / "cohort" / "P01").kind == "patient"
    assert list(patient_exams(tmp_path / "cohort" / "P01")) == ["D15", "M3"]
    vol, seg = load_exam(tmp_path / "cohort" / "P01" / "M3")
    assert vol.shape == (3, 2, 4, 4) and seg.name == "seg.nii.gz"
    assert vol.metadata["patient"] == "P01" and vol.metadata["exam"] == "M3"
    with pytest.raises(DCEReadError, match="exams D15, M3"):
        load_dce(tmp_path / "cohort" / "P01")
    with pytest.raises(DCEReadError, match="cohort folder of 1 patients"):
        load_dce(tmp_path / "cohort")


def test_missing_path_and_unknown_file_type(tmp_path):
    with pytest.raises(DCEReadError, match="no such file"):
        load_dce(tmp_path / "nothing.nii.gz")
    other = tmp_path / "image.png"
    other.write_bytes(b"\x89PNG....")
    with pytest.raises(DCEReadError, match="unsupported file type"):
        load_dce(other)


def test_no_warning_for_a_clean_4d_file(tmp_path):
    path = save_nifti(tmp_path / "clean.nii.gz", np.ones((2, 3, 3, 3), np.float32), np.eye(4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dce(path)


@pytest.mark.parametrize("times, problem", [
    ([0.0, 10.0, 5.0, 20.0], "do not increase (frame 3 at 5 s after frame 2 at 10 s)"),
    ([0.0, 0.0, 0.0, 0.0], "are all equal"),
    ([0.0, 1e30, 2e30, 3e30], "more than a day"),
    ([0.0, float("nan"), 2.0, 3.0], "not all finite"),
])
def test_impossible_frame_times_are_ignored_with_a_notice(tmp_path, times, problem):
    path = save_nifti(tmp_path / "dce.nii.gz", np.zeros((4, 3, 4, 5), np.float32), np.eye(4), frame_times=times)
    with pytest.warns(DCEReadWarning, match=re.escape(problem)):
        volume = load_nifti(path)
    assert volume.frame_times is None and problem in volume.metadata["frame_times_ignored"]


def _patch_header(path, **fields):
    """Write header fields as stored bytes (nibabel's writer would correct them)."""
    raw = bytearray(path.read_bytes())
    offsets = {"pixdim_xyz": (80, "<3f"), "qform_code": (252, "<h"), "sform_code": (254, "<h")}
    for name, value in fields.items():
        offset, fmt = offsets[name]
        struct.pack_into(fmt, raw, offset, *np.atleast_1d(value))
    path.write_bytes(bytes(raw))
    return path


def _qform_only(tmp_path, name="q.nii"):
    affine = np.diag([2.5, 2.5, 4.0, 1.0])
    affine[:3, 3] = [-10.0, -20.0, -30.0]
    img = nib.Nifti1Image(np.ones((6, 5, 4, 3), np.float32), affine)
    img.set_qform(affine, code=1)
    img.set_sform(None, code=0)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(tmp_path / name))
    return tmp_path / name


def test_qform_only_with_zero_voxel_size_is_refused_not_read_as_1mm(tmp_path):
    path = _patch_header(_qform_only(tmp_path), pixdim_xyz=(0.0, 0.0, 0.0))
    with pytest.raises(DCEReadError, match=r"no voxel size along x, y, z \(pixdim 0, 0, 0\).*unknown"):
        load_dce(path)
    partial = _patch_header(_qform_only(tmp_path, "p.nii"), pixdim_xyz=(2.5, 2.5, float("nan")))
    with pytest.raises(DCEReadError, match=r"along z \(pixdim 2.5, 2.5, nan\)"):
        load_dce(partial)


def test_qform_only_with_a_voxel_size_reads_it(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DCEReadWarning)
        vol = load_dce(_qform_only(tmp_path))
    np.testing.assert_allclose(sorted(vol.spacing), [2.5, 2.5, 4.0])


def test_header_without_qform_and_sform_warns_that_geometry_is_assumed(tmp_path):
    path = _patch_header(_qform_only(tmp_path), qform_code=0)
    with pytest.warns(DCEReadWarning, match=r"no position or orientation .* 2.5, 2.5, 4 mm voxels"):
        vol = load_dce(path)
    np.testing.assert_allclose(sorted(vol.spacing), [2.5, 2.5, 4.0])


def test_qform_and_sform_that_disagree_are_named_and_the_sform_is_used(tmp_path):
    sform = np.diag([2.0, 2.0, 3.0, 1.0])
    qform = sform.copy()
    qform[:3, 3] = [0.0, 0.0, 6.0]  # two slices apart
    img = nib.Nifti1Image(np.ones((6, 5, 4, 3), np.float32), sform)
    img.set_sform(sform, code=2)
    img.set_qform(qform, code=1)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(tmp_path / "qs.nii"))
    with pytest.warns(DCEReadWarning, match=r"qform and sform place the image 6 mm apart.*sform is used"):
        vol = load_dce(tmp_path / "qs.nii")
    np.testing.assert_allclose(vol.affine[:3, 3], [0.0, 0.0, 0.0], atol=1e-6)
    # agreeing within round-off is not a problem
    img.set_qform(sform, code=1)
    nib.save(img, str(tmp_path / "same.nii"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DCEReadWarning)
        load_dce(tmp_path / "same.nii")


def test_a_flipped_byte_inside_a_gzipped_nifti_is_refused_not_read(tmp_path):
    """One byte changed in the compressed voxel data: without a CRC check half of the voxels would change
    silently. The file is refused, named, for the image and for a label file alike."""
    from napari_medimp.core.io import DCEReadError, load_dce, save_nifti
    from napari_medimp.core.io.nifti import load_labels

    rng = np.random.default_rng(0)
    data = rng.normal(100, 10, (4, 6, 8, 10)).astype(np.float32)
    path = save_nifti(tmp_path / "dce.nii.gz", data, np.eye(4), frame_times=np.arange(4) * 10.0)
    raw = bytearray(path.read_bytes())
    damaged = tmp_path / "damaged.nii.gz"
    for offset in (len(raw) // 2, len(raw) - 6):  # in the deflate stream; in the CRC itself
        copy = bytearray(raw)
        copy[offset] ^= 0x01
        damaged.write_bytes(bytes(copy))
        with pytest.raises(DCEReadError, match=r"damaged\.nii\.gz.*gzip stream is corrupt or truncated"):
            load_dce(damaged)
    labels = save_nifti(tmp_path / "seg.nii.gz", np.ones((1, 6, 8, 10), np.uint8), np.eye(4), dtype=np.uint8)
    copy = bytearray(labels.read_bytes())
    copy[-7] ^= 0x01
    labels.write_bytes(bytes(copy))
    with pytest.raises(DCEReadError, match="gzip stream is corrupt"):
        load_labels(labels)
    assert load_dce(path).data.shape == (4, 6, 8, 10)


def test_colour_complex_and_deeply_nested_inputs_get_a_message_naming_the_file(tmp_path):
    import nibabel as nib

    from napari_medimp.core.io import DCEReadError, load_dce, save_nifti
    from napari_medimp.core.volume import DCEReadWarning

    rgb = np.zeros((8, 8, 4, 3), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), tmp_path / "rgb.nii.gz")
    with pytest.raises(DCEReadError, match=r"rgb\.nii\.gz.*colour \(RGB\)"):
        load_dce(tmp_path / "rgb.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((8, 8, 4, 3), np.complex64), np.eye(4)), tmp_path / "complex.nii.gz")
    with pytest.raises(DCEReadError, match=r"complex\.nii\.gz.*complex voxels"):
        load_dce(tmp_path / "complex.nii.gz")
    path = save_nifti(tmp_path / "dce.nii.gz", np.ones((3, 4, 5, 6), np.float32), np.eye(4),
                      frame_times=[0.0, 10.0, 20.0])
    (tmp_path / "dce.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.warns(DCEReadWarning, match=r"dce\.json: sidecar ignored, nested too deeply"):
        assert load_dce(path).n_frames == 3


def _patch(path, fmt, offset, *values):
    raw = bytearray(path.read_bytes())
    struct.pack_into(fmt, raw, offset, *values)
    path.write_bytes(bytes(raw))
    return path


def test_vox_offset_inside_the_header_is_refused_naming_the_field(tmp_path):
    """vox_offset 0 in a .nii file: nibabel reads the voxels from byte 0, the image shifted by the header."""
    data = np.arange(6 * 5 * 4 * 3, dtype=np.float32).reshape(6, 5, 4, 3)
    img = nib.Nifti1Image(data, np.eye(4))
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(tmp_path / "v.nii"))
    with pytest.raises(DCEReadError, match=r"v.nii: header field vox_offset is 0, inside the 348-byte header"):
        load_dce(_patch(tmp_path / "v.nii", "<f", 108, 0.0))
    with pytest.raises(DCEReadError, match=r"v.nii: not a readable NIfTI file \(vox offset 100 too low"):
        load_dce(_patch(tmp_path / "v.nii", "<f", 108, 100.0))


@pytest.mark.parametrize(("unit", "message"), [("unknown", r"no time unit \(xyzt_units\).*seconds assumed"),
                                               ("hz", r"frame spacing \(pixdim\[4\] 2.5\) is in hertz.*not a time"),
                                               ("ppm", r"in parts per million.*frame times unknown")])
def test_a_frame_spacing_without_a_time_unit_is_said(tmp_path, unit, message):
    img = nib.Nifti1Image(np.ones((6, 5, 4, 3), np.float32), np.eye(4))
    img.header.set_xyzt_units("mm", unit)
    img.header.set_zooms((1.0, 1.0, 1.0, 2.5))
    nib.save(img, str(tmp_path / "t.nii"))
    with pytest.warns(DCEReadWarning, match=message):
        vol = load_dce(tmp_path / "t.nii")
    assert any(re.search(message, note) for note in vol.metadata["reading_notes"])
    if unit == "unknown":
        np.testing.assert_allclose(vol.frame_times, [0.0, 2.5, 5.0])
    else:
        assert vol.frame_times is None


def _sform_file(tmp_path, sform, name="s.nii", sform_code=1, qform=None):
    img = nib.Nifti1Image(np.ones((40, 40, 20, 2), np.float32), np.eye(4))
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(qform if qform is not None else np.eye(4), code=1 if qform is not None else 0)
    img.set_sform(sform, code=1)
    nib.save(img, str(tmp_path / name))
    if sform_code != 1:
        _patch_header(tmp_path / name, sform_code=sform_code)
    return tmp_path / name


def test_a_sheared_sform_is_refused_or_the_qform_used_and_said(tmp_path):
    sheared = np.diag([2.0, 2.0, 3.0, 1.0])
    sheared[0, 2] = 1.5  # slices slide 1.5 mm sideways each: 28 mm at the last slice
    with pytest.raises(DCEReadError, match=r"s.nii: .*the sform \(code 1\) is sheared .*fix the header"):
        load_dce(_sform_file(tmp_path, sheared))
    qform = np.diag([2.0, 2.0, 3.0, 1.0])
    with pytest.warns(DCEReadWarning, match=r"sform \(code 1\) is sheared.*ignored; the qform \(code 1\) places"):
        vol = load_dce(_sform_file(tmp_path, sheared, "sq.nii", qform=qform))
    np.testing.assert_allclose(sorted(vol.spacing), [2.0, 2.0, 3.0])
    singular = np.diag([2.0, 2.0, 0.0, 1.0])
    with pytest.raises(DCEReadError, match=r"sform \(code 1\) is singular"):
        load_dce(_sform_file(tmp_path, singular, "z.nii"))


def test_an_undefined_sform_code_is_not_used_and_the_choice_is_said(tmp_path):
    """nibabel uses any non-zero sform code; a code the standard does not define is ignored, and said."""
    far = np.diag([2.0, 2.0, 3.0, 1.0])
    far[:3, 3] = [40.0, -35.0, 60.0]
    qform = np.diag([2.0, 2.0, 3.0, 1.0])
    path = _sform_file(tmp_path, far, "c.nii", sform_code=-7, qform=qform)
    with pytest.warns(DCEReadWarning, match=r"c.nii: sform_code -7 is not a code .* ignored; the qform \(code 1\)"):
        vol = load_dce(path)
    np.testing.assert_allclose(vol.affine[:3, 3], [0.0, 0.0, 0.0], atol=1e-6)
