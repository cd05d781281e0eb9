"""DICOM series reader: synthetic multi-phase MR series written with pydicom into tmp_path."""

from __future__ import annotations

import random
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from napari_medimp.core.io import DCEReadError, DCEReadWarning, load_dce
from napari_medimp.core.io.dicom import find_series, is_dicom_file, load_dicom_series

ROWS, COLS = 4, 6
PIXEL_SPACING = (0.7, 0.9)  # (between rows, between columns)
GAP = 2.5
ORIGIN = (-10.0, -20.0, 30.0)  # LPS position of slice 0, pixel (0, 0)
AXIAL = (1, 0, 0, 0, 1, 0)
CORONAL = (1, 0, 0, 0, 0, -1)
SAGITTAL = (0, 1, 0, 0, 0, -1)
_C, _S = np.cos(np.radians(30)), np.sin(np.radians(30))
OBLIQUE = (_C, _S, 0, -_S, _C, 0)
ACQ_TIMES = ("101455.000000", "101507.500000", "101520.000000")  # 0, 12.5, 25 s
MARKER = 60000



def _set_mono16(ds) -> None:
    """Pixel module tags of an unsigned 16-bit greyscale image."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0

def _value(t: int, k: int) -> int:
    return 1000 * t + 10 * k


def _write(ds: Dataset, path, preamble: bool = True) -> None:
    if preamble:
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
    else:  # no preamble, no file meta: the dataset alone, explicit VR little endian
        pydicom.dcmwrite(path, ds, implicit_vr=False, little_endian=True)


def make_slice(path, *, series_uid, position, pixels, orientation=AXIAL, pixel_spacing=PIXEL_SPACING,
               instance=1, description="DCE", drop=(), preamble=True, **tags) -> None:
    """One MR Image Storage file; ``tags`` are extra attributes, ``drop`` names attributes to leave out."""
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "MR"
    ds.PatientID = "KT001"
    ds.Manufacturer = "ACME"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesDescription = description
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.PixelSpacing = list(pixel_spacing)
    ds.SliceThickness = GAP
    pixels = np.asarray(pixels, dtype=np.uint16)
    ds.Rows, ds.Columns = pixels.shape
    _set_mono16(ds)
    ds.PixelData = pixels.tobytes()
    for key, value in tags.items():
        setattr(ds, key, value)
    for key in drop:
        delattr(ds, key)
    if not preamble:
        del ds.file_meta
    _write(ds, path, preamble)


def slice_position(k: int, orientation=AXIAL, origin=ORIGIN, gap=GAP) -> np.ndarray:
    normal = np.cross(orientation[:3], orientation[3:])
    return np.asarray(origin, float) + k * gap * normal


def write_series(folder, *, n_phases=3, n_slices=5, orientation=AXIAL, phase_tags=None, seed=0,
                 series_uid=None, marker=None, gaps=None, skip=(), per_file=None, **common) -> str:
    """A multi-phase series with random file names and shuffled InstanceNumbers.

    Pixel values encode the phase and slice (``_value``); ``marker=(t, k, row, col)`` sets one pixel to
    ``MARKER``. ``phase_tags(t)`` gives the temporal tags of phase t (default: TemporalPositionIdentifier
    and AcquisitionTime). ``per_file(t, k)`` returns extra keyword arguments for one file.
    """
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    rng = random.Random(seed)
    slots = [(t, k) for t in range(n_phases) for k in range(n_slices) if (t, k) not in skip]
    names = rng.sample(range(10**6), len(slots))
    instances = rng.sample(range(1, len(slots) + 1), len(slots))
    if phase_tags is None:
        def phase_tags(t):
            return {"TemporalPositionIdentifier": t + 1, "AcquisitionTime": ACQ_TIMES[t]}
    offsets = np.concatenate([[0.0], np.cumsum(gaps)]) if gaps is not None else np.arange(n_slices) * GAP
    normal = np.cross(orientation[:3], orientation[3:])
    for (t, k), name, instance in zip(slots, names, instances, strict=True):
        pixels = np.full((ROWS, COLS), _value(t, k), dtype=np.uint16)
        if marker is not None and marker[:2] == (t, k):
            pixels[marker[2], marker[3]] = MARKER
        kwargs = dict(common, **phase_tags(t), **(per_file(t, k) if per_file else {}))
        make_slice(folder / f"IM{name:06d}.dcm", series_uid=series_uid,
                   position=np.asarray(ORIGIN) + offsets[k] * normal, pixels=pixels,
                   orientation=orientation, instance=instance, **kwargs)
    return series_uid


def expected_axial(n_phases=3, n_slices=5) -> np.ndarray:
    return np.array([[np.full((ROWS, COLS), _value(t, k)) for k in range(n_slices)] for t in range(n_phases)],
                    dtype=np.float32)


# --------------------------------------------------------------------------------------------------
# ordering, spacing, times
# --------------------------------------------------------------------------------------------------
def test_phases_and_slices_ordered_by_time_and_position(tmp_path):
    uid = write_series(tmp_path / "s", seed=1)
    vol = load_dicom_series(tmp_path / "s")
    assert vol.shape == (3, 5, ROWS, COLS)
    np.testing.assert_array_equal(vol.data, expected_axial())
    assert vol.spacing == pytest.approx((2.5, 0.7, 0.9))
    np.testing.assert_allclose(vol.frame_times, [0.0, 12.5, 25.0])
    assert vol.data.dtype == np.float32 and not vol.is_lazy
    meta = vol.metadata
    assert meta["format"] == "dicom" and meta["series_uid"] == uid
    assert meta["grouped_by"] == "TemporalPositionIdentifier"
    assert meta["frame_times_from"] == "AcquisitionTime"
    assert (meta["n_files"], meta["n_slices"], meta["n_phases"]) == (15, 5, 3)
    assert meta["series_description"] == "DCE" and meta["modality"] == "MR" and meta["patient_id"] == "KT001"
    assert meta["source_orientation"] == "LPS"


def test_slices_descending_in_z_are_still_sorted_by_position(tmp_path):
    """Slice normal along +S but slices written from top to bottom: index 0 must be the lowest slice."""
    folder = tmp_path / "s"
    folder.mkdir()
    uid = generate_uid()
    for k in range(4):
        make_slice(folder / f"a{k}.dcm", series_uid=uid, instance=k + 1,
                   position=slice_position(3 - k), pixels=np.full((ROWS, COLS), 10 * (3 - k)))
    vol = load_dicom_series(folder)
    assert vol.shape == (1, 4, ROWS, COLS)
    np.testing.assert_array_equal(vol.data[0, :, 0, 0], [0, 10, 20, 30])
    assert vol.affine[2, 3] == pytest.approx(ORIGIN[2])
    assert vol.frame_times is None


def test_grouping_falls_back_to_acquisition_time(tmp_path):
    write_series(tmp_path / "s", seed=2, phase_tags=lambda t: {"AcquisitionTime": ACQ_TIMES[t]})
    vol = load_dicom_series(tmp_path / "s")
    assert vol.metadata["grouped_by"] == "AcquisitionTime"
    np.testing.assert_array_equal(vol.data, expected_axial())
    np.testing.assert_allclose(vol.frame_times, [0.0, 12.5, 25.0])


def test_grouping_falls_back_to_trigger_time(tmp_path):
    write_series(tmp_path / "s", seed=3, phase_tags=lambda t: {"TriggerTime": 100.0 + 8000.0 * t})
    vol = load_dicom_series(tmp_path / "s")
    assert vol.metadata["grouped_by"] == "TriggerTime"
    assert vol.metadata["frame_times_from"] == "TriggerTime"
    np.testing.assert_array_equal(vol.data, expected_axial())
    np.testing.assert_allclose(vol.frame_times, [0.0, 8.0, 16.0])


def test_acquisition_time_per_slice_orders_phases_at_each_position(tmp_path):
    """2D acquisitions: every slice has its own AcquisitionTime, so no tag groups whole phases."""
    def per_file(t, k):
        seconds = 10 * t + 0.5 * k
        return {"AcquisitionTime": f"1200{int(seconds):02d}.{round((seconds % 1) * 1e6):06d}"}

    write_series(tmp_path / "s", seed=4, phase_tags=lambda t: {}, per_file=per_file)
    vol = load_dicom_series(tmp_path / "s")
    assert vol.metadata["grouped_by"].startswith("order at each slice position")
    np.testing.assert_array_equal(vol.data, expected_axial())
    np.testing.assert_allclose(vol.frame_times, [0.0, 10.0, 20.0])


def test_acquisition_time_across_midnight_uses_acquisition_date(tmp_path):
    stamps = [("20240101", "235950"), ("20240102", "000005"), ("20240102", "000020")]
    write_series(tmp_path / "s", seed=5,
                 phase_tags=lambda t: {"AcquisitionDate": stamps[t][0], "AcquisitionTime": stamps[t][1]})
    vol = load_dicom_series(tmp_path / "s")
    np.testing.assert_array_equal(vol.data, expected_axial())
    np.testing.assert_allclose(vol.frame_times, [0.0, 15.0, 30.0])


def test_rescale_slope_and_intercept_applied(tmp_path):
    write_series(tmp_path / "s", seed=6, RescaleSlope=0.5, RescaleIntercept=-10)
    vol = load_dicom_series(tmp_path / "s")
    np.testing.assert_allclose(vol.data, expected_axial() * 0.5 - 10)
    assert vol.data[2, 4, 0, 0] == pytest.approx((2000 + 40) * 0.5 - 10)


def test_lazy_reading_matches_eager(tmp_path):
    write_series(tmp_path / "s", seed=7)
    vol = load_dicom_series(tmp_path / "s", lazy=True)
    assert vol.is_lazy and vol.metadata["lazy"]
    assert vol.shape == (3, 5, ROWS, COLS)
    np.testing.assert_array_equal(vol.frame(1), expected_axial()[1])
    np.testing.assert_array_equal(vol.load().data, expected_axial())


# --------------------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------------------
def test_axial_marker_world_position_by_hand(tmp_path):
    write_series(tmp_path / "s", n_phases=1, phase_tags=lambda t: {}, marker=(0, 3, 1, 4))
    vol = load_dicom_series(tmp_path / "s")
    # columns run towards patient Left and rows towards Posterior: both flip in RAS
    assert vol.data[0, 3, ROWS - 1 - 1, COLS - 1 - 4] == MARKER
    # LPS = (-10 + 4 * 0.9, -20 + 1 * 0.7, 30 + 3 * 2.5) = (-6.4, -19.3, 37.5)
    np.testing.assert_allclose(vol.affine @ [COLS - 1 - 4, ROWS - 1 - 1, 3, 1], [6.4, 19.3, 37.5, 1])
    # voxel (0, 0, 0) is the pixel (row 3, col 5) of the lowest slice
    np.testing.assert_allclose(vol.affine[:3, 3], [10 - 5 * 0.9, 20 - 3 * 0.7, 30])
    np.testing.assert_allclose(np.diag(vol.affine)[:3], [0.9, 0.7, 2.5])


@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy"])
@pytest.mark.parametrize("orientation", [AXIAL, CORONAL, SAGITTAL, OBLIQUE],
                         ids=["axial", "coronal", "sagittal", "oblique"])
def test_marker_lands_at_its_patient_position(tmp_path, orientation, lazy):
    t, k, row, col = 1, 3, 1, 4
    write_series(tmp_path / "s", orientation=orientation, marker=(t, k, row, col), seed=8)
    vol = load_dicom_series(tmp_path / "s", lazy=lazy).load()
    row_cos, col_cos = np.array(orientation[:3]), np.array(orientation[3:])
    lps = slice_position(k, orientation) + col * PIXEL_SPACING[1] * row_cos + row * PIXEL_SPACING[0] * col_cos
    ras = lps * [-1, -1, 1]
    hits = np.argwhere(vol.data[t] == MARKER)
    assert len(hits) == 1
    z, y, x = hits[0]
    np.testing.assert_allclose((vol.affine @ [x, y, z, 1])[:3], ras, atol=1e-6)


def test_coronal_series_axes_and_spacing(tmp_path):
    write_series(tmp_path / "s", orientation=CORONAL, marker=(0, 3, 1, 4), seed=9)
    vol = load_dicom_series(tmp_path / "s")
    # rows run Inferior, columns Left, slices (normal = +P) Posterior: z <- rows, y <- slices, x <- columns
    assert vol.shape == (3, ROWS, 5, COLS)
    assert vol.spacing == pytest.approx((0.7, 2.5, 0.9))
    assert vol.data[0, ROWS - 1 - 1, 5 - 1 - 3, COLS - 1 - 4] == MARKER
    assert vol.data[2, 0, 5 - 1 - 2, 0] == _value(2, 2)
    assert vol.metadata["source_orientation"] == "LIP"


def test_sagittal_series_axes(tmp_path):
    """Columns run Posterior, rows Inferior, slices (normal = cross(P, I) = Right) along x."""
    write_series(tmp_path / "s", orientation=SAGITTAL, seed=10)
    vol = load_dicom_series(tmp_path / "s", lazy=True)
    assert vol.shape == (3, ROWS, COLS, 5)
    assert vol.spacing == pytest.approx((0.7, 0.9, 2.5))
    assert vol.load().data[1, 0, 0, 2] == _value(1, 2)


def test_non_uniform_slice_gap_warns(tmp_path):
    write_series(tmp_path / "s", n_phases=1, n_slices=4, phase_tags=lambda t: {}, gaps=[2.5, 2.5, 4.0])
    with pytest.warns(DCEReadWarning, match="not uniform"):
        vol = load_dicom_series(tmp_path / "s")
    assert vol.shape == (1, 4, ROWS, COLS)
    assert vol.spacing[0] == pytest.approx(3.0)


# --------------------------------------------------------------------------------------------------
# series selection
# --------------------------------------------------------------------------------------------------
def test_two_series_need_a_series_uid(tmp_path):
    folder = tmp_path / "s"
    uid_a = write_series(folder, seed=10, description="dce")
    uid_b = write_series(folder, n_phases=1, n_slices=2, phase_tags=lambda t: {}, seed=11, description="t2")
    with pytest.raises(DCEReadError) as err:
        load_dicom_series(folder)
    message = str(err.value)
    assert uid_a in message and uid_b in message
    assert "2 DICOM series" in message and "in a folder of its own" in message and "series_uid" not in message
    assert "15 files" in message and "2 files" in message and "'t2'" in message
    assert load_dicom_series(folder, series_uid=uid_b).shape == (1, 2, ROWS, COLS)
    assert load_dicom_series(folder, series_uid=uid_a).shape == (3, 5, ROWS, COLS)
    assert {uid: len(files) for uid, files in find_series(folder).items()} == {uid_a: 15, uid_b: 2}


def test_a_series_is_chosen_by_uid_or_number_and_the_message_says_how(tmp_path):
    folder = tmp_path / "s"
    uid_a = write_series(folder, seed=10, description="dce", SeriesNumber=7)
    uid_b = write_series(folder, n_phases=1, n_slices=2, phase_tags=lambda t: {}, seed=11, description="t2",
                         SeriesNumber=3)
    with pytest.raises(DCEReadError, match=r"name it by SeriesInstanceUID or SeriesNumber \(the --series option "
                                           r"of medimp info.*\(number 7\) 'dce'.*\(number 3\) 't2'"):
        load_dce(folder)
    assert load_dce(folder, series=uid_b).metadata["series_uid"] == uid_b
    assert load_dce(folder, series=7).metadata["series_uid"] == uid_a
    assert load_dicom_series(folder, series_uid="3").metadata["series_uid"] == uid_b
    with pytest.raises(DCEReadError, match=r"no DICOM series with SeriesInstanceUID or SeriesNumber 9 in this "
                                           r"folder: .*\(number 7\)"):
        load_dce(folder, series=9)


def test_opening_one_file_reads_its_series_only(tmp_path):
    folder = tmp_path / "s"
    write_series(folder, seed=12)
    uid_b = write_series(folder, n_phases=1, n_slices=2, phase_tags=lambda t: {}, seed=13)
    one_file = find_series(folder)[uid_b][0]
    vol = load_dce(one_file)
    assert vol.shape == (1, 2, ROWS, COLS)
    assert vol.metadata["series_uid"] == uid_b


def test_pydicom_mr_small_opens_as_one_slice(tmp_path):
    from pydicom.data import get_testdata_file

    path = get_testdata_file("MR_small.dcm")
    ds = pydicom.dcmread(path)
    vol = load_dce(path)
    assert vol.shape == (1, 1, 64, 64)
    assert vol.spacing == pytest.approx((float(ds.SliceThickness), *map(float, ds.PixelSpacing)))
    # identity orientation (columns Left, rows Posterior) becomes RAS by flipping both in-plane axes
    np.testing.assert_array_equal(vol.data[0, 0], ds.pixel_array[::-1, ::-1].astype(np.float32))
    assert vol.metadata["n_files"] == 1  # the same instance in other transfer syntaxes is not stacked


# --------------------------------------------------------------------------------------------------
# compressed transfer syntaxes (pydicom's test files; JPEG Lossless SV1 made with GDCM, the declared decoder)
# --------------------------------------------------------------------------------------------------
def _test_file(name: str):
    from pydicom.data import get_testdata_file

    return get_testdata_file(name)


def _alone(path, folder) -> object:
    """A copy of one test file in a folder of its own (pydicom's folder holds many series)."""
    import shutil

    folder.mkdir()
    return shutil.copy(path, folder / "image.dcm")


def _jpeg_lossless_sv1(source, target) -> None:
    """``source`` re-encoded as JPEG Lossless, first-order prediction (process 14, selection value 1)."""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(source))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(target))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()


@pytest.mark.parametrize("name, syntax", [
    ("MR_small_RLE.dcm", "RLE Lossless"),
    ("MR_small_jp2klossless.dcm", "JPEG 2000 Image Compression (Lossless Only)"),
    ("MR_small_jpeg_ls_lossless.dcm", "JPEG-LS Lossless Image Compression"),
    ("SV1", "JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 [Selection Value 1])"),
])
def test_lossless_compressed_series_give_the_uncompressed_values(tmp_path, name, syntax):
    reference = load_dce(_alone(_test_file("MR_small.dcm"), tmp_path / "reference"))
    if name == "SV1":
        (tmp_path / "c").mkdir()
        path = tmp_path / "c" / "image.dcm"
        _jpeg_lossless_sv1(_test_file("MR_small.dcm"), path)
    else:
        path = _alone(_test_file(name), tmp_path / "c")
    assert str(pydicom.dcmread(path).file_meta.TransferSyntaxUID.name) == syntax
    for lazy in (False, True):
        vol = load_dce(path, lazy=lazy)
        assert vol.metadata["transfer_syntax"] == syntax
        np.testing.assert_array_equal(np.asarray(vol.load().data), reference.data)
        # in-plane axes and origin (the files' SliceThickness differs: some copies were written by other tools)
        np.testing.assert_array_equal(vol.affine[:, [0, 1, 3]], reference.affine[:, [0, 1, 3]])


def test_twelve_bit_jpeg_extended_without_its_decoder_is_refused_naming_syntax_and_package(tmp_path):
    """GDCM (the declared decoder) and Pillow do not decode 12-bit JPEG Extended; pylibjpeg-libjpeg would."""
    path = _alone(_test_file("JPGExtended.dcm"), tmp_path / "c")
    ds = pydicom.dcmread(path)
    ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing = [0, 0, 0], list(AXIAL), [1, 1]
    ds.save_as(path)
    with pytest.raises(DCEReadError, match=r"image.dcm.*'JPEG Extended \(Process 2 and 4\)'.*cannot be decoded.*"
                                           r"install pylibjpeg>=2.0 and pylibjpeg-libjpeg"):
        load_dce(path)


@pytest.mark.parametrize("uid, match", [
    (pydicom.uid.HTJ2KLossless, r"'High-Throughput JPEG 2000 Image Compression \(Lossless Only\)' .* and no "
                                r"decoder for it is installed: install pylibjpeg>=2.0 and pylibjpeg-openjpeg"),
    (pydicom.uid.MPEG2MPML, r"'MPEG2 Main Profile / Main Level' .*, which no DICOM image decoder reads"),
])
def test_series_without_a_decoder_is_refused_before_any_pixel_is_read(tmp_path, uid, match):
    path = _alone(_test_file("MR_small_jp2klossless.dcm"), tmp_path / "c")
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = uid
    ds.save_as(path)
    with pytest.raises(DCEReadError, match=match):
        load_dce(path, lazy=True)  # refused on opening, not when the first frame is shown


# --------------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------------
def test_missing_image_position_names_the_file(tmp_path):
    folder = tmp_path / "s"
    uid = write_series(folder, n_phases=1, phase_tags=lambda t: {})
    make_slice(folder / "noposition.dcm", series_uid=uid, position=slice_position(9),
               pixels=np.zeros((ROWS, COLS)), drop=("ImagePositionPatient",))
    with pytest.raises(DCEReadError, match="position") as err:
        load_dicom_series(folder)
    assert "noposition.dcm" in str(err.value)


def test_inconsistent_image_size_names_the_file(tmp_path):
    folder = tmp_path / "s"
    uid = write_series(folder, n_phases=1, phase_tags=lambda t: {})
    make_slice(folder / "big.dcm", series_uid=uid, position=slice_position(5), pixels=np.zeros((ROWS + 1, COLS)))
    with pytest.raises(DCEReadError, match="rows") as err:
        load_dicom_series(folder)
    assert "big.dcm" in str(err.value)


def test_phase_with_a_missing_slice_is_refused(tmp_path):
    write_series(tmp_path / "s", skip={(1, 2)}, seed=14)
    with pytest.raises(DCEReadError, match=r"phase 2 of 3 .* has 4 images at 4 of the 5 slice positions"):
        load_dicom_series(tmp_path / "s")


def test_non_dicom_files_are_ignored(tmp_path):
    folder = tmp_path / "s"
    write_series(folder, seed=15)
    (folder / "x.dcm").write_text("not a DICOM file\n")
    (folder / "notes.txt").write_text("hello")
    assert not is_dicom_file(folder / "x.dcm")
    assert load_dicom_series(folder).shape == (3, 5, ROWS, COLS)


def test_text_file_named_dcm_is_refused(tmp_path):
    text = tmp_path / "x.dcm"
    text.write_text("not a DICOM file\n")
    with pytest.raises(DCEReadError, match="not a DICOM file"):
        load_dicom_series(text)
    with pytest.raises(DCEReadError, match="unsupported file type"):
        load_dce(text)
    with pytest.raises(DCEReadError, match="no DICOM files"):
        load_dicom_series(tmp_path)


def test_truncated_pixel_data_names_the_file(tmp_path):
    folder = tmp_path / "s"
    write_series(folder, seed=16)
    victim = sorted(folder.iterdir())[3]
    victim.write_bytes(victim.read_bytes()[:-10])
    with pytest.raises(DCEReadError, match="pixel data") as err:
        load_dicom_series(folder)
    assert victim.name in str(err.value)


def test_corrupt_header_is_ignored_with_a_warning(tmp_path):
    folder = tmp_path / "s"
    write_series(folder, seed=17)
    (folder / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + bytes(range(256)) * 4)
    with pytest.warns(DCEReadWarning, match="broken.dcm"):
        vol = load_dicom_series(folder)
    assert vol.shape == (3, 5, ROWS, COLS)
    assert vol.metadata["files_ignored"] == [str(folder / "broken.dcm")]


def test_folder_of_corrupt_files_is_refused(tmp_path):
    (tmp_path / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + bytes(range(256)) * 4)
    assert is_dicom_file(tmp_path / "broken.dcm")
    with pytest.raises(DCEReadError, match="no readable DICOM files.*broken.dcm"):
        load_dicom_series(tmp_path)


def test_preamble_less_dcm_file_is_recognised(tmp_path):
    path = tmp_path / "raw.dcm"
    make_slice(path, series_uid=generate_uid(), position=ORIGIN, pixels=np.ones((ROWS, COLS)), preamble=False)
    assert open(path, "rb").read(132)[128:132] != b"DICM"
    assert is_dicom_file(path)
    assert load_dce(path).shape == (1, 1, ROWS, COLS)


# --------------------------------------------------------------------------------------------------
# enhanced multi-frame
# --------------------------------------------------------------------------------------------------
def _item(**tags) -> Dataset:
    item = Dataset()
    for key, value in tags.items():
        setattr(item, key, value)
    return item


def make_enhanced(path, n_phases=3, n_slices=4, seed=0, marker=(2, 1, 3, 0)) -> None:
    """Enhanced MR file: frames in shuffled order, geometry and temporal index per frame."""
    rng = random.Random(seed)
    slots = [(t, k) for t in range(n_phases) for k in range(n_slices)]
    rng.shuffle(slots)
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = sop_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "MR"
    ds.NumberOfFrames = len(slots)
    ds.Rows, ds.Columns = ROWS, COLS
    _set_mono16(ds)
    ds.SharedFunctionalGroupsSequence = Sequence([_item(
        PlaneOrientationSequence=Sequence([_item(ImageOrientationPatient=list(AXIAL))]),
        PixelMeasuresSequence=Sequence([_item(PixelSpacing=list(PIXEL_SPACING), SliceThickness=GAP)]),
        PixelValueTransformationSequence=Sequence([_item(RescaleSlope=2, RescaleIntercept=1, RescaleType="US")]),
    )])
    frames, per_frame = [], []
    for t, k in slots:
        pixels = np.full((ROWS, COLS), _value(t, k), dtype=np.uint16)
        if (t, k) == marker[:2]:
            pixels[marker[2], marker[3]] = MARKER
        frames.append(pixels)
        per_frame.append(_item(
            PlanePositionSequence=Sequence([_item(ImagePositionPatient=list(slice_position(k)))]),
            FrameContentSequence=Sequence([_item(
                TemporalPositionIndex=t + 1, FrameAcquisitionDateTime=f"20240101120{t}00.000000")]),
        ))
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.PixelData = np.stack(frames).tobytes()
    _write(ds, path)


def test_enhanced_multiframe(tmp_path):
    make_enhanced(tmp_path / "enh.dcm")
    vol = load_dce(tmp_path / "enh.dcm")
    assert vol.shape == (3, 4, ROWS, COLS)
    assert vol.metadata["multiframe"] and vol.metadata["grouped_by"] == "TemporalPositionIndex"
    expected = expected_axial(3, 4) * 2 + 1
    expected[2, 1, ROWS - 1 - 3, COLS - 1 - 0] = MARKER * 2 + 1
    np.testing.assert_array_equal(vol.data, expected)
    assert vol.spacing == pytest.approx((2.5, 0.7, 0.9))
    np.testing.assert_allclose(vol.frame_times, [0.0, 60.0, 120.0])
    np.testing.assert_allclose(vol.affine @ [COLS - 1, ROWS - 1 - 3, 1, 1],
                               [-ORIGIN[0], -ORIGIN[1] - 3 * 0.7, ORIGIN[2] + 2.5, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lazy = load_dicom_series(tmp_path / "enh.dcm", lazy=True)
    np.testing.assert_array_equal(lazy.load().data, expected)


def test_enhanced_frame_without_position_is_refused(tmp_path):
    path = tmp_path / "enh.dcm"
    make_enhanced(path)
    ds = pydicom.dcmread(path)
    del ds.PerFrameFunctionalGroupsSequence[5].PlanePositionSequence
    ds.save_as(path)
    with pytest.raises(DCEReadError, match=r"enh.dcm.*frame 6.*position"):
        load_dicom_series(path)


def test_enhanced_multiframe_real_world_value_mapping_per_frame(tmp_path):
    """A per-frame RealWorldValueMappingSequence wins over the shared rescale, frame by frame."""
    path = tmp_path / "enh.dcm"
    make_enhanced(path)
    ds = pydicom.dcmread(path)
    for item in ds.PerFrameFunctionalGroupsSequence:
        t = int(item.FrameContentSequence[0].TemporalPositionIndex) - 1
        item.RealWorldValueMappingSequence = Sequence([_item(RealWorldValueSlope=0.5 * (t + 1),
                                                             RealWorldValueIntercept=0.0)])
    ds.save_as(path)
    vol = load_dce(path)
    assert vol.metadata["scaling"] == "real-world value mapping"
    raw = expected_axial(3, 4)
    raw[2, 1, ROWS - 1 - 3, COLS - 1 - 0] = MARKER
    for t in range(3):
        np.testing.assert_allclose(vol.data[t], raw[t] * 0.5 * (t + 1))


# --------------------------------------------------------------------------------------------------
# geometry and time that would otherwise be guessed
# --------------------------------------------------------------------------------------------------
def test_acquisition_time_across_midnight_without_a_date_counts_on_the_next_day(tmp_path):
    clock = ["235950", "000005", "000020"]
    write_series(tmp_path / "s", seed=21, phase_tags=lambda t: {"AcquisitionTime": clock[t]})
    with pytest.warns(DCEReadWarning, match=r"from 23:59:50.0 to 00:00:20.0 without a date.*cross midnight"):
        vol = load_dicom_series(tmp_path / "s")
    np.testing.assert_array_equal(vol.data, expected_axial())  # phase order kept (not 00:00 first)
    np.testing.assert_allclose(vol.frame_times, [0.0, 15.0, 30.0])


def test_acquisition_time_against_the_phase_order_leaves_frame_times_unknown(tmp_path):
    clock = ["101520", "101507", "101455"]  # decreasing while TemporalPositionIdentifier increases
    write_series(tmp_path / "s", seed=22,
                 phase_tags=lambda t: {"TemporalPositionIdentifier": t + 1, "AcquisitionTime": clock[t]})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vol = load_dicom_series(tmp_path / "s")
    notes = [str(w.message) for w in caught if issubclass(w.category, DCEReadWarning)]
    assert vol.frame_times is None
    assert len(notes) == 1 and "does not increase with the phase order; frame times are unknown" in notes[0]


def test_slices_sharing_one_position_are_refused_not_read_as_frames(tmp_path):
    """24 images (4 phases x 6 slices) that all carry the same ImagePositionPatient."""
    folder = tmp_path / "s"
    folder.mkdir()
    uid = generate_uid()
    for t in range(4):
        for k in range(6):
            make_slice(folder / f"IM{t}{k}.dcm", series_uid=uid, position=ORIGIN,
                       pixels=np.full((ROWS, COLS), _value(t, k)), instance=6 * t + k + 1,
                       TemporalPositionIdentifier=t + 1, AcquisitionTime=ACQ_TIMES[min(t, 2)])
    with pytest.raises(DCEReadError, match=r"24 images lie at 1 slice position\(s\) but TemporalPositionIdentifier "
                                           r"names only 4 phases.*share an ImagePositionPatient"):
        load_dicom_series(folder)


@pytest.mark.parametrize("slope", ["nan", "0"])
def test_unusable_rescale_slope_is_refused_naming_the_file(tmp_path, slope):
    write_series(tmp_path / "s", seed=23, n_phases=2, n_slices=2, RescaleIntercept=0,
                 per_file=lambda t, k: {"RescaleSlope": slope} if (t, k) == (1, 1) else {"RescaleSlope": 1})
    with pytest.raises(DCEReadError, match=rf"IM\d+\.dcm: .*RescaleSlope is '{slope}', not a usable number"):
        load_dicom_series(tmp_path / "s")


def test_single_slice_without_thickness_warns_that_1mm_is_assumed(tmp_path):
    folder = tmp_path / "s"
    write_series(folder, seed=24, n_slices=1, drop=("SliceThickness",))
    with pytest.warns(DCEReadWarning, match="neither SpacingBetweenSlices nor SliceThickness; 1 mm slices assumed"):
        vol = load_dicom_series(folder)
    assert vol.spacing[0] == pytest.approx(1.0)
    write_series(tmp_path / "t", seed=24, n_slices=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DCEReadWarning)
        assert load_dicom_series(tmp_path / "t").spacing[0] == pytest.approx(GAP)


def test_every_file_of_a_large_written_exam_has_its_own_uid(tmp_path):
    """20 frames x 24 slices: frame 1 slice 12 and frame 11 slice 2 once shared a SOPInstanceUID (the
    parts of the UID were joined without a separator), so an archive kept 466 of 480 files."""
    import pydicom

    from napari_medimp.core.io.dicom_write import save_dicom_series
    from napari_medimp.core.volume import DCEVolume

    data = np.random.default_rng(0).normal(100, 5, (20, 24, 8, 8)).astype(np.float32)
    volume = DCEVolume(data, np.diag([2.0, 2.0, 3.0, 1.0]), np.arange(20) * 10.0)
    files = save_dicom_series(volume, tmp_path / "P1", patient_id="P1")
    assert len(files) == 480
    uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    assert len(uids) == 480


# --------------------------------------------------------------------------------------------------
# identifiers and folder contents
# --------------------------------------------------------------------------------------------------
def test_duplicate_sop_instances_are_counted_and_different_images_refused(tmp_path):
    folder = tmp_path / "s"
    write_series(folder, seed=31)
    original = sorted(folder.iterdir())[0]
    (folder / "zz_copy.dcm").write_bytes(original.read_bytes())
    with pytest.warns(DCEReadWarning, match=r"s: 1 duplicate file\(s\) ignored \(same SOPInstanceUID"):
        vol = load_dce(folder)
    assert vol.shape == (3, 5, ROWS, COLS) and vol.metadata["duplicates_ignored"] == 1
    assert any("duplicate" in note for note in vol.metadata["reading_notes"])
    other = pydicom.dcmread(original)
    other.PixelData = (np.asarray(other.pixel_array) + 7).astype(np.uint16).tobytes()
    other.save_as(folder / "zz_copy.dcm")
    with pytest.raises(DCEReadError, match=rf"zz_copy.dcm: shares SOPInstanceUID .* with {original.name} but holds "
                                           "a different image"):
        load_dce(folder)


def test_a_series_after_many_other_files_is_found_and_the_skipped_files_said(tmp_path):
    folder = tmp_path / "s"
    write_series(folder, seed=32)
    for k in range(12):
        (folder / f"A_readme_{k:02d}.txt").write_text("export notes\n")
    with pytest.warns(DCEReadWarning, match=r"s: 12 file\(s\) that are not DICOM skipped: A_readme_00.txt, .* and 7 more"):
        vol = load_dce(folder)
    assert vol.shape == (3, 5, ROWS, COLS)


def test_a_dicomdir_is_followed_to_its_images(tmp_path):
    from pydicom.fileset import FileSet

    source = tmp_path / "src"
    write_series(source, seed=33, StudyInstanceUID=generate_uid(), SeriesNumber=5, StudyDate="20240101", StudyID="1",
                 StudyTime="101455", PatientName="Test^Graft")
    fileset = FileSet()
    for path in sorted(source.iterdir()):
        fileset.add(pydicom.dcmread(path))
    media = tmp_path / "cd"
    fileset.write(media)
    assert (media / "DICOMDIR").is_file() and not any(p.suffix == ".dcm" for p in media.rglob("*"))
    vol = load_dce(media)
    np.testing.assert_array_equal(vol.load().data, expected_axial())
    (media / "PT000000").rename(tmp_path / "moved")
    with pytest.raises(DCEReadError, match=r"DICOMDIR: this DICOMDIR lists no readable image files beside it "
                                           r"\(15 listed file\(s\) missing\)"):
        load_dce(media)


def test_frame_times_come_from_the_next_timing_tag_when_one_is_the_same_in_every_phase(tmp_path):
    """One series whose phases share AcquisitionTime: the times come from TriggerTime, then ContentTime,
    then TemporalPositionIdentifier x TemporalResolution (ms), with a notice naming the tag used."""
    from napari_medimp.core.volume import DCEReadWarning

    same = "120000.000000"
    write_series(tmp_path / "trigger", seed=4, phase_tags=lambda t: {
        "TemporalPositionIdentifier": t + 1, "AcquisitionTime": same, "TriggerTime": 500.0 + 12000.0 * t})
    with pytest.warns(DCEReadWarning, match=r"frame times read from TriggerTime \(AcquisitionTime the same"):
        vol = load_dicom_series(tmp_path / "trigger")
    assert vol.metadata["frame_times_from"] == "TriggerTime"
    np.testing.assert_allclose(vol.frame_times, [0.0, 12.0, 24.0])
    write_series(tmp_path / "resolution", seed=5, phase_tags=lambda t: {
        "TemporalPositionIdentifier": t + 1, "AcquisitionTime": same, "TemporalResolution": 7500.0})
    with pytest.warns(DCEReadWarning, match="frame times read from TemporalPositionIdentifier x TemporalResolution"):
        vol = load_dicom_series(tmp_path / "resolution")
    np.testing.assert_allclose(vol.frame_times, [0.0, 7.5, 15.0])
