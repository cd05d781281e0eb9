"""The plugin inside a real napari viewer: manifest, reader, writer, sample data, screenshot."""

from __future__ import annotations

import os

import numpy as np
import pytest
from nibabel.testing import data_path

import napari_medimp
from napari_medimp.core.io import load_dce, save_nifti

EXAMPLE4D = os.path.join(data_path, "example4d.nii.gz")
PLUGIN = "napari-medimp"


def test_manifest_is_valid_and_reaches_the_package():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution(PLUGIN)
    manifest.validate_imports()
    assert os.path.exists(os.path.join(os.path.dirname(napari_medimp.__file__), "napari.yaml"))
    ids = {c.id for c in manifest.contributions.commands}
    assert {"napari-medimp.get_reader", "napari-medimp.write_image", "napari-medimp.sample_graft"} <= ids


def test_reader_gives_geometry_of_nibabel_example(make_napari_viewer):
    import nibabel as nib

    viewer = make_napari_viewer()
    layers = viewer.open(EXAMPLE4D, plugin=PLUGIN)
    layer = layers[0]
    ref = nib.load(EXAMPLE4D)
    nx, ny, nz, nt = ref.shape
    assert layer.data.shape == (nt, nz, ny, nx)
    assert tuple(layer.axis_labels) == ("t", "z", "y", "x")
    zx, zy, zz, tr = ref.header.get_zooms()
    np.testing.assert_allclose(layer.scale[1:], (zz, zy, zx), rtol=1e-5)
    np.testing.assert_allclose(layer.scale[0], tr)
    assert [str(u) for u in layer.units] == ["second", "millimeter", "millimeter", "millimeter"]
    lo, hi = layer.contrast_limits
    assert lo < hi
    # the layer places voxels where the canonical affine says
    # example4d is 10 degrees oblique: shown in its voxel frame, exact affine kept for saving
    vol = load_dce(EXAMPLE4D)
    assert vol.obliquity_deg > 5
    np.testing.assert_allclose(layer.metadata["affine"], vol.affine)
    np.testing.assert_allclose(layer.translate[1:], vol.origin)


def test_bad_file_is_reported_and_viewer_keeps_its_layers(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    viewer.open(EXAMPLE4D, plugin=PLUGIN)
    bad = tmp_path / "broken.nii.gz"
    noise = np.random.default_rng(0).random((2, 16, 16, 16)).astype(np.float32)
    good = save_nifti(tmp_path / "good.nii.gz", noise, np.eye(4))
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(Exception, match=r"broken\.nii\.gz"):
        viewer.open(bad, plugin=PLUGIN)
    assert len(viewer.layers) == 1
    viewer.open(good, plugin=PLUGIN)
    assert len(viewer.layers) == 2


def test_reader_declines_unrelated_files(tmp_path):
    from napari_medimp._reader import get_reader

    other = tmp_path / "table.csv"
    other.write_text("a,b\n1,2\n")
    assert get_reader(str(other)) is None
    assert get_reader(EXAMPLE4D) is not None


def test_writer_round_trips_a_3d_overlay_with_its_geometry(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    (source,) = viewer.open(EXAMPLE4D, plugin=PLUGIN)
    overlay = np.random.default_rng(0).random(source.data.shape[1:]).astype(np.float32)
    # a derived layer copies the source's geometry and its exact affine
    layer = viewer.add_image(overlay, name="saliency", scale=source.scale[1:], translate=source.translate[1:],
                             metadata={"affine": source.metadata["affine"]})
    out = tmp_path / "saliency.nii.gz"
    layer.save(str(out), plugin=PLUGIN)
    import nibabel as nib

    img = nib.load(str(out))
    vol = load_dce(EXAMPLE4D)
    np.testing.assert_allclose(img.affine, vol.affine, atol=1e-5)
    np.testing.assert_allclose(np.asarray(img.dataobj).transpose(2, 1, 0), overlay)


@pytest.mark.gui
def test_sample_shows_an_enhancing_kidney(make_napari_viewer, tmp_path):
    from napari_medimp._demo import show_sample

    viewer = make_napari_viewer(show=True)
    report = show_sample(viewer)
    image, labels = viewer.layers[0], viewer.layers[1]
    assert image.data.ndim == 4 and labels.data.ndim == 3
    np.testing.assert_allclose(labels.scale, image.scale[1:])
    np.testing.assert_allclose(labels.translate, image.translate[1:])
    labels.visible = False
    from napari_medimp._layers import layer_region_names
    from napari_medimp.core.terms import KIDNEY_REGION_NAMES

    assert layer_region_names(labels.metadata) == KIDNEY_REGION_NAMES  # the panel's curves are named from it
    cortex = report["regions"]["cortex"]
    assert cortex["relative_peak_enhancement"] > 0.5

    peak = viewer.screenshot(canvas_only=True, flash=False)
    viewer.dims.set_current_step(0, 0)
    baseline = viewer.screenshot(canvas_only=True, flash=False)
    from PIL import Image

    Image.fromarray(peak).save(tmp_path / "peak.png")
    gray_peak = peak[..., :3].mean(axis=-1)
    gray_base = baseline[..., :3].mean(axis=-1)
    assert gray_peak.std() > 10, "screenshot is blank"
    # the enhancing kidney is brighter at peak than before contrast arrives
    bright = gray_peak > np.percentile(gray_peak, 97)
    assert gray_peak[bright].mean() - gray_base[bright].mean() > 30


def test_writer_uses_scale_and_translate_of_a_plain_layer(make_napari_viewer, tmp_path):
    import nibabel as nib

    viewer = make_napari_viewer()
    layer = viewer.add_labels(np.arange(24, dtype=np.uint8).reshape(2, 3, 4), scale=(3.0, 2.0, 1.5),
                              translate=(10.0, -20.0, 30.0))
    out = tmp_path / "labels.nii.gz"
    layer.save(str(out), plugin=PLUGIN)
    img = nib.load(str(out))
    expected = np.diag([1.5, 2.0, 3.0, 1.0])
    expected[:3, 3] = (30.0, -20.0, 10.0)
    np.testing.assert_allclose(img.affine, expected)
    assert img.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(img.dataobj).transpose(2, 1, 0), layer.data)


def test_a_cohort_exam_opens_with_its_labels_named_from_the_label_file(training_cohort):
    """The generator's label file names its values in a sidecar; the labels layer carries those names."""
    from napari_medimp._layers import layer_region_names
    from napari_medimp._reader import read_dce

    exam = sorted(training_cohort.glob("*/D30"))[0]
    layers = read_dce(exam)
    assert [kind for *_, kind in layers] == ["image", "labels"]
    names = layer_region_names(layers[1][1]["metadata"])
    assert names is not None and names.get(2) == "cortex" and names.get(3) == "medulla"
    assert 1 not in names  # surrounding tissue is not a region of the graft
