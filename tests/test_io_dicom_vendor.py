"""DICOM as scanners store it: phases as separate series, Philips and real-world value scaling, and a
cross-check of geometry and values against dcm2niix, the field's reference converter."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from helpers import kidney_volume
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from napari_medimp.core.io import DCEReadError, DCEReadWarning, load_dce
from napari_medimp.core.io.dicom_write import save_dicom_series
from napari_medimp.core.volume import DCEVolume

TIMES = np.array([0.0, 30.0, 240.0])


def _volume(affine=None, n_frames=3) -> DCEVolume:
    vol = kidney_volume(n_frames=n_frames)
    vol.frame_times = TIMES[:n_frames]
    if affine is not None:
        vol.affine = affine
    return vol


def _edit(folder: Path, change) -> None:
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        change(path, ds)
        ds.save_as(path, enforce_file_format=True)


def _oblique_affine() -> np.ndarray:
    """Voxels of 1.5 x 2 x 3.5 mm, rotated 20 degrees about the patient's S axis and 10 about R."""
    a, b = np.deg2rad(20), np.deg2rad(10)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag([1.5, 2.0, 3.5])
    affine[:3, 3] = (-40.0, 25.0, -60.0)
    return affine


# --------------------------------------------------------------------------------------------------
# phases stored as separate series of one study
# --------------------------------------------------------------------------------------------------
def test_phase_series_of_one_study_open_as_one_dynamic_series_in_time_order(tmp_path):
    vol = _volume()
    save_dicom_series(vol, tmp_path / "study", patient_id="P7", series_per_phase=True)
    # number the series against their acquisition order: the times must decide
    _edit(tmp_path / "study", lambda path, ds: setattr(ds, "SeriesNumber", 10 - int(ds.SeriesNumber)))
    out = load_dce(tmp_path / "study")
    assert out.shape == (3, 20, 40, 48)
    np.testing.assert_allclose(out.frame_times, TIMES)
    for t in range(3):
        np.testing.assert_allclose(out.data[t], vol.data[t], atol=0.01)
    np.testing.assert_allclose(out.affine, vol.affine, atol=1e-4)
    assert out.metadata["grouped_by"] == "one series per phase, ordered by acquisition time"
    assert len(out.metadata["phase_series_uids"]) == 3


def test_phase_series_without_times_follow_series_numbers_with_a_warning(tmp_path):
    vol = _volume()
    save_dicom_series(vol, tmp_path / "study", patient_id="P7", series_per_phase=True)

    def strip_times(path, ds):
        for tag in ("AcquisitionTime", "AcquisitionDate", "SeriesTime", "ContentTime"):
            delattr(ds, tag)

    _edit(tmp_path / "study", strip_times)
    with pytest.warns(DCEReadWarning, match="ordered by SeriesNumber"):
        out = load_dce(tmp_path / "study")
    assert out.frame_times is None
    np.testing.assert_allclose(out.data[2], vol.data[2], atol=0.01)


def test_phase_series_with_different_geometry_are_refused_naming_both(tmp_path):
    vol = _volume(n_frames=2)
    folder = tmp_path / "study"
    save_dicom_series(vol, folder, patient_id="P7", series_per_phase=True, study_uid="1.2.3.4")
    moved = vol.affine.copy()
    moved[:3, 3] += (0, 0, 9.0)
    shifted = DCEVolume(vol.data[:1], moved, [500.0])
    save_dicom_series(shifted, folder / "x", patient_id="P7", series_per_phase=True, study_uid="1.2.3.4",
                      description="late", seed="other")
    for path in (folder / "x").iterdir():
        path.rename(folder / f"late_{path.name}")
    (folder / "x").rmdir()
    with pytest.raises(DCEReadError, match=r"phase series with different geometry: .* 20 slices of 48x40 "
                                           r"\(2x2 mm pixels\), first at ImagePositionPatient \(48.0, 40.0, -(21|30).0\)"
                                           r".*ImagePositionPatient \(48.0, 40.0, -(30|21).0\)"):
        load_dce(folder)


def test_series_of_different_studies_still_need_a_choice(tmp_path):
    vol = _volume(n_frames=1)
    save_dicom_series(vol, tmp_path / "f", patient_id="P1")
    save_dicom_series(vol, tmp_path / "g", patient_id="P2")
    for path in (tmp_path / "g").iterdir():
        shutil.move(path, tmp_path / "f" / f"g_{path.name}")
    with pytest.raises(DCEReadError, match="holds 2 DICOM series; put the series to read in a folder of its own"):
        load_dce(tmp_path / "f")


# --------------------------------------------------------------------------------------------------
# vendor scaling
# --------------------------------------------------------------------------------------------------
def test_philips_private_scale_slope_gives_floating_point_values(tmp_path):
    """FP = (PV * RS + RI) / (RS * SS): phases with different display rescaling become comparable."""
    vol = _volume(n_frames=2)
    folder = tmp_path / "philips"
    save_dicom_series(vol, folder, patient_id="P7")
    scales = {1: (2.0, 10.0, 0.5), 2: (4.0, -20.0, 0.25)}  # per phase: RS, RI, SS
    stored = {}

    def philips(path, ds):
        rs, ri, ss = scales[int(ds.TemporalPositionIdentifier)]
        ds.Manufacturer = "Philips Medical Systems"
        ds.RescaleSlope, ds.RescaleIntercept = rs, ri
        block = ds.private_block(0x2005, "Philips MR Imaging DD 001", create=True)
        block.add_new(0x0E, "FL", ss)
        stored[path.name] = (ds.pixel_array.astype(float), rs, ri, ss)

    _edit(folder, philips)
    out = load_dce(folder)
    assert out.metadata["scaling"] == "Philips floating-point values (private scale slope)"
    name = "t002_z005.dcm"
    pv, rs, ri, ss = stored[name]
    expected = (pv * rs + ri) / (rs * ss)
    np.testing.assert_allclose(out.data[1, 4], expected, rtol=1e-5)  # z index 4 = slice 5, axes y, x unchanged


def _philips_frame_header(item: Dataset, rs: float, ri: float, ss: float) -> None:
    """What a Philips enhanced MR frame carries: its display rescaling in the standard functional group, and
    its classic header, scale slope included, in the private per-frame item (2005,140F)."""
    item.PixelValueTransformationSequence = Sequence([Dataset()])
    item.PixelValueTransformationSequence[0].RescaleSlope = rs
    item.PixelValueTransformationSequence[0].RescaleIntercept = ri
    header = Dataset()
    header.RescaleSlope, header.RescaleIntercept = rs, ri
    header.private_block(0x2005, "Philips MR Imaging DD 001", create=True).add_new(0x0E, "FL", ss)
    item.private_block(0x2005, "Philips MR Imaging DD 005", create=True).add_new(0x0F, "SQ", Sequence([header]))


def test_philips_enhanced_scaling_per_phase_gives_floating_point_values(tmp_path):
    """Per-frame private scale slopes that differ between phases: every phase in the scanner's floating-point
    values, FP = (SV * RS + RI) / (RS * SS), not in its display values SV * RS + RI (which would bend the curves)."""
    from test_io_dicom import COLS, MARKER, ROWS, expected_axial, make_enhanced

    path = tmp_path / "enh.dcm"
    make_enhanced(path)
    ds = pydicom.dcmread(path)
    ds.Manufacturer = "Philips Medical Systems"
    scales = {0: (2.0, 0.0, 0.25), 1: (3.1, 4.0, 0.004), 2: (1.25, -2.0, 0.03)}  # per phase: RS, RI, SS
    for item in ds.PerFrameFunctionalGroupsSequence:
        _philips_frame_header(item, *scales[int(item.FrameContentSequence[0].TemporalPositionIndex) - 1])
    ds.save_as(path)
    out = load_dce(path)
    assert out.shape == (3, 4, ROWS, COLS)
    assert out.metadata["scaling"] == "Philips floating-point values (private scale slope)"
    stored = expected_axial(3, 4).astype(float)
    stored[2, 1, ROWS - 1 - 3, COLS - 1 - 0] = MARKER  # make_enhanced's marker pixel
    for t, (rs, ri, ss) in scales.items():
        np.testing.assert_allclose(out.data[t], (stored[t] * rs + ri) / (rs * ss), rtol=1e-5)
        assert not np.allclose(out.data[t], stored[t] * rs + ri)


def _philips_enhanced_file(path: Path) -> np.ndarray:
    """nibabel's Philips enhanced MR test file (a 3D MPRAGE whose pixels are blank) with random stored values."""
    import gzip

    source = Path(nib.__file__).parent / "nicom" / "tests" / "data" / "philips_mprage.dcm.gz"
    with gzip.open(source) as fh:
        ds = pydicom.dcmread(fh)
    stored = np.random.default_rng(5).integers(0, 4000, (int(ds.NumberOfFrames), ds.Rows, ds.Columns), np.uint16)
    ds.PixelData = stored.tobytes()
    path.parent.mkdir(parents=True)
    ds.save_as(path)
    return stored


def test_philips_enhanced_file_matches_dcm2niix_precise_float_values(tmp_path):
    """A real Philips enhanced file: the values are dcm2niix's (its default Philips precise float scaling,
    with the RS and SS it reports in its sidecar), 1 / (RS * SS) = 1768 times the display values."""
    stored = _philips_enhanced_file(tmp_path / "dicom" / "philips.dcm")
    ours = load_dce(tmp_path / "dicom" / "philips.dcm")
    assert ours.metadata["scaling"] == "Philips floating-point values (private scale slope)"
    out = tmp_path / "nii"
    out.mkdir()
    done = subprocess.run([_dcm2niix(), "-z", "n", "-o", str(out), "-f", "philips", str(tmp_path / "dicom")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    sidecar = json.loads((out / "philips.json").read_text())
    assert sidecar["UsePhilipsFloatNotDisplayScaling"] == 1
    rs, ss = sidecar["PhilipsRescaleSlope"], sidecar["PhilipsScaleSlope"]
    assert (rs, ss) == pytest.approx((2.10794, 0.00026825), rel=1e-5)
    image = nib.as_closest_canonical(nib.load(out / "philips.nii"))
    theirs = np.asarray(image.get_fdata()).transpose(2, 1, 0)  # (x, y, z) -> (z, y, x), both canonical RAS
    assert ours.shape == (1, *theirs.shape)
    np.testing.assert_allclose(ours.affine, image.affine, atol=1e-3)
    np.testing.assert_allclose(ours.data[0], theirs, rtol=1e-5, atol=1e-3)
    # the ratio to the display values (stored x RS) the reader used to return
    assert float(ours.data.max()) / (float(stored.max()) * rs) == pytest.approx(1 / (rs * ss), rel=1e-4)
    assert 1 / (rs * ss) == pytest.approx(1768, abs=1)


def test_real_world_value_mapping_is_applied_and_named(tmp_path):
    vol = _volume(n_frames=2)
    folder = tmp_path / "rwv"
    save_dicom_series(vol, folder, patient_id="P7")
    raw = {}

    def rwv(path, ds):
        item = Dataset()
        item.RealWorldValueSlope = 2.5
        item.RealWorldValueIntercept = -3.0
        unit = Dataset()
        unit.CodeValue, unit.CodingSchemeDesignator, unit.CodeMeaning = "1", "UCUM", "no units"
        item.MeasurementUnitsCodeSequence = [unit]
        ds.RealWorldValueMappingSequence = [item]
        raw[path.name] = ds.pixel_array.astype(float)

    _edit(folder, rwv)
    out = load_dce(folder)
    assert out.metadata["scaling"] == "real-world value mapping (1)"
    np.testing.assert_allclose(out.data[0, 0], raw["t001_z001.dcm"] * 2.5 - 3.0, rtol=1e-6)


def test_plain_series_reports_rescale_scaling(tmp_path):
    save_dicom_series(_volume(n_frames=1), tmp_path / "s", patient_id="P7")
    assert load_dce(tmp_path / "s").metadata["scaling"] == "rescale slope and intercept"


# --------------------------------------------------------------------------------------------------
# dcm2niix cross-check
# --------------------------------------------------------------------------------------------------
def _dcm2niix() -> str:
    exe = Path(sys.executable).with_name("dcm2niix")
    found = str(exe) if exe.exists() else shutil.which("dcm2niix")
    if found is None:
        pytest.fail("dcm2niix is a test dependency (pip install dcm2niix) and was not found")
    return found


def _convert(src: Path, out: Path) -> list[nib.Nifti1Image]:
    out.mkdir()
    done = subprocess.run([_dcm2niix(), "-z", "n", "-b", "n", "-o", str(out), "-f", "%s", str(src)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return [nib.as_closest_canonical(nib.load(p)) for p in sorted(out.glob("*.nii"), key=lambda p: int(p.stem))]


@pytest.mark.parametrize("per_phase", [False, True], ids=["one series", "one series per phase"])
def test_geometry_and_values_match_dcm2niix(tmp_path, per_phase):
    vol = _volume(affine=_oblique_affine())
    save_dicom_series(vol, tmp_path / "dicom", patient_id="P7", series_per_phase=per_phase)
    ours = load_dce(tmp_path / "dicom")
    images = _convert(tmp_path / "dicom", tmp_path / "nii")
    if per_phase:
        assert len(images) == 3
        theirs = np.stack([np.asarray(img.dataobj, dtype=float) for img in images])
    else:
        assert len(images) == 1 and images[0].shape[3] == 3
        theirs = np.moveaxis(np.asarray(images[0].dataobj, dtype=float), 3, 0)
    theirs = theirs.transpose(0, 3, 2, 1)  # (t, x, y, z) -> (t, z, y, x), both canonical RAS
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours.affine, images[0].affine, atol=1e-3)
    np.testing.assert_allclose(ours.spacing, images[0].header.get_zooms()[:3][::-1], rtol=1e-5)
    assert "".join(nib.aff2axcodes(ours.affine)) == "".join(nib.aff2axcodes(images[0].affine)) == "RAS"
    np.testing.assert_allclose(ours.data, theirs, atol=0.02 * float(np.ptp(theirs)) / 1000 + 1e-3)


# Siemens MOSAIC
# --------------------------------------------------------------------------------------------------
_NIBABEL_DATA = Path(nib.__file__).parent / "nicom" / "tests" / "data"


def _siemens_mosaics(folder: Path, edit=None) -> list[np.ndarray]:
    """nibabel's two Siemens DWI mosaic files (one series, b=0 then b=1000: 48 slices of 128 x 128 tiled 7 x 7
    in an 896 x 896 image), decompressed into ``folder``. Their stored pixels are all zero, so each file is
    given random pixels (returned) to compare values; ``edit(ds)`` changes a header before saving."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(8)
    stored = []
    for name in ("siemens_dwi_0", "siemens_dwi_1000"):
        ds = pydicom.dcmread(io.BytesIO(gzip.decompress((_NIBABEL_DATA / f"{name}.dcm.gz").read_bytes())))
        pixels = rng.integers(0, 4000, size=(ds.Rows, ds.Columns), dtype=np.uint16)
        ds.PixelData = pixels.tobytes()
        if edit is not None:
            edit(ds)
        ds.save_as(folder / f"{name}.dcm")
        stored.append(pixels)
    return stored


def test_siemens_mosaic_series_matches_dcm2niix(tmp_path):
    """Two mosaic files of one series are two phases of 48 slices unpacked from the tiles, with dcm2niix's
    shape, values and affine (within 1e-3 mm), the slices placed from the CSA header."""
    stored = _siemens_mosaics(tmp_path / "dicom")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DCEReadWarning)
        ours = load_dce(tmp_path / "dicom" / "siemens_dwi_1000.dcm")  # one file opens its series
    (image,) = _convert(tmp_path / "dicom", tmp_path / "nii")
    assert image.shape == (128, 128, 48, 2)
    theirs = np.moveaxis(np.asarray(image.dataobj, dtype=float), 3, 0).transpose(0, 3, 2, 1)  # -> (t, z, y, x)
    assert ours.shape == theirs.shape == (2, 48, 128, 128)
    np.testing.assert_array_equal(ours.data, theirs)
    np.testing.assert_allclose(ours.affine, image.affine, atol=1e-3)
    np.testing.assert_allclose(ours.spacing, image.header.get_zooms()[:3][::-1], rtol=1e-5)
    for phase, pixels in zip(ours.data, stored, strict=True):  # 48 tiles of 49: the last one is padding
        assert phase.sum(dtype=np.float64) == pixels.sum(dtype=np.float64) - pixels[768:, 768:].sum(dtype=np.float64)
    assert ours.metadata["mosaic"] is True and ours.metadata["n_files"] == 2
    assert ours.metadata["grouped_by"] == ours.metadata["frame_times_from"] == "AcquisitionTime"
    np.testing.assert_allclose(ours.frame_times, [0.0, 6.6275], atol=1e-3)  # 20:29:59.925 -> 20:30:06.5525


def _csa_image_header(ds):
    """The Siemens CSA image header element, (0029,1010) under the 'SIEMENS CSA HEADER' private creator."""
    return ds.private_block(0x0029, "SIEMENS CSA HEADER")[0x10]


def _without_mosaic_count(ds) -> None:
    element = _csa_image_header(ds)
    assert b"NumberOfImagesInMosaic" in element.value
    element.value = element.value.replace(b"NumberOfImagesInMosaic", b"NumberOfImagesInMosaiX")


def _unreadable_csa(ds) -> None:
    element = _csa_image_header(ds)
    assert element.value.startswith(b"SV10")
    element.value = element.value[:8] + b"\xff\xff\xff\x7f" + element.value[12:]  # a huge number of tags


def _tiles_that_do_not_fit(ds) -> None:
    ds.Columns = 900


@pytest.mark.parametrize(("edit", "problem"), [
    (_without_mosaic_count, "has no NumberOfImagesInMosaic in its Siemens CSA image header"),
    (_unreadable_csa, r"whose Siemens CSA image header cannot be read \("),
    (_tiles_that_do_not_fit, r"whose 48 slices \(NumberOfImagesInMosaic\), 7 per row and column, do not fit its "
                             r"896x900 matrix"),
], ids=["no NumberOfImagesInMosaic", "unreadable CSA header", "tiles do not fit"])
def test_a_siemens_mosaic_whose_slices_cannot_be_placed_is_refused_naming_why(tmp_path, edit, problem):
    _siemens_mosaics(tmp_path / "dicom", edit=edit)
    with pytest.raises(DCEReadError, match=r"siemens_dwi_\d+\.dcm: a Siemens mosaic .*" + problem):
        load_dce(tmp_path / "dicom")
