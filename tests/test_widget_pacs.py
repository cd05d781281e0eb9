"""Open from PACS in a real napari viewer at its default window size, against a local Orthanc."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medimp.core import pacs, pacs_receive

pytestmark = pytest.mark.gui
DEFAULT_SIZE = (1089, 630)


@pytest.fixture
def dock(make_napari_viewer, archive, tmp_path, monkeypatch):
    from napari_medimp._widgets.pacs import PacsWidget

    monkeypatch.setenv("NAPARI_MEDIMP_CACHE", str(tmp_path / "cache"))
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(*DEFAULT_SIZE)
    widget = PacsWidget(viewer, settings_path=archive.settings(tmp_path / "pacs.toml"))
    viewer.window.add_dock_widget(widget, name="Open from PACS", area="right")
    return viewer, widget


def _search(qtbot, widget, patient="P7", rows=3):
    widget.patient.setText(patient)
    widget.search_button.click()
    qtbot.waitUntil(lambda: widget.table.rowCount() == rows and widget._worker is None, timeout=60_000)


def test_search_retrieve_and_open_as_one_dce_layer(qtbot, dock, archive, tmp_path):
    from qtpy.QtCore import Qt

    viewer, widget = dock
    _search(qtbot, widget)
    assert [widget.table.item(r, 2).text() for r in range(3)] == ["2 DCE pre-contrast", "3 DCE arterial",
                                                                  "4 DCE tubular"]
    assert widget.table.item(0, 1).text() == "2024-03-12"
    assert "Doe, Jane" in widget.table.item(0, 0).toolTip()
    assert len(widget.selected_series()) == 3  # one exam found: all its series selected
    assert widget.retrieve_button.isEnabled()
    qtbot.mouseClick(widget.retrieve_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: len(viewer.layers) == 1 and widget._worker is None, timeout=120_000)
    layer = viewer.layers[0]
    assert layer.name == "P7 2024-03-12"
    assert layer.data.shape == (3, 20, 40, 48)
    np.testing.assert_allclose(np.asarray(layer.data), archive.volume.data, atol=0.02)
    np.testing.assert_allclose(layer.scale[1:], (3.0, 2.0, 2.0))
    assert widget.progress.value() == widget.progress.maximum() == 60
    assert "Opened 'P7 2024-03-12': 3 phases of 48x40x20 voxels" in widget.status.text()

    viewer.dims.set_current_step(0, 2)  # late phase: the kidney has taken up contrast
    shot = viewer.screenshot(canvas_only=False, flash=False)
    from imageio.v3 import imwrite

    imwrite(tmp_path / "pacs_dialog.png", shot)
    import os
    if os.environ.get("MEDIMP_SCREENSHOTS"):
        imwrite(os.path.join(os.environ["MEDIMP_SCREENSHOTS"], "pacs_dialog.png"), shot)
    assert shot.shape[0] >= DEFAULT_SIZE[1] - 40 and shot.shape[1] >= DEFAULT_SIZE[0] - 40
    # the dock is visible with its table text, and the canvas shows the enhancing kidney
    canvas = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(float)
    assert canvas.max() - np.median(canvas) > 60
    assert widget.table.isVisible() and widget.table.horizontalScrollBar().maximum() == 0  # no column cut
    assert widget.table.columnWidth(2) >= widget.fontMetrics().horizontalAdvance("2 DCE pre-contrast") + 16  # not elided


def test_refused_server_is_one_message_and_the_viewer_keeps_its_layers(qtbot, dock, archive, tmp_path):
    viewer, widget = dock
    viewer.add_image(np.zeros((4, 4)), name="work in progress")
    _search(qtbot, widget)  # the right server's series, then a search that fails must not keep showing them
    widget._settings_path = archive.settings(tmp_path / "wrong.toml", called_aet="NOTTHEPACS")
    widget.load_settings()
    widget.patient.setText("P7")
    widget.search_button.click()
    qtbot.waitUntil(lambda: widget._worker is None and "refused" in widget.status.text(), timeout=60_000)
    assert widget.status.text() == ("PACS 'test' refused the connection: the archive's AE title is wrong (called_aet "
                                    "in the PACS settings); ask the PACS administrator for the archive's AE title")
    assert [layer.name for layer in viewer.layers] == ["work in progress"]
    assert widget.search_button.isEnabled()
    assert widget.table.rowCount() == 0 and widget.selected_series() == []
    assert not widget.retrieve_button.isEnabled()


def test_missing_settings_are_explained_and_search_is_disabled(make_napari_viewer, tmp_path):
    from napari_medimp._widgets.pacs import PacsWidget

    widget = PacsWidget(make_napari_viewer(), settings_path=tmp_path / "pacs.toml")
    assert "no PACS settings: create" in widget.status.text() and str(tmp_path) in widget.status.text()
    assert not widget.search_button.isEnabled() and not widget.retrieve_button.isEnabled()


@pytest.fixture(scope="module")
def strict(tmp_path_factory):
    from helpers import kidney_volume
    from pacs_server import strict_archive

    from napari_medimp.core.io.dicom_write import save_dicom_series

    folder = tmp_path_factory.mktemp("strict-orthanc")
    server = strict_archive(folder)
    files = save_dicom_series(kidney_volume(n_frames=3), folder / "P7", patient_id="P7", study_date="20240312",
                              series_per_phase=True)
    assert server.store(files) == len(files)
    yield server
    server.stop()


def test_an_archive_that_refuses_c_get_says_use_c_move_and_c_move_opens(qtbot, make_napari_viewer, strict,
                                                                        tmp_path, monkeypatch):
    from napari_medimp._widgets.pacs import PacsWidget

    monkeypatch.setenv("NAPARI_MEDIMP_CACHE", str(tmp_path / "cache"))
    viewer = make_napari_viewer()
    widget = PacsWidget(viewer, settings_path=strict.settings(tmp_path / "pacs.toml"))
    _search(qtbot, widget)
    widget.retrieve_button.click()
    qtbot.waitUntil(lambda: widget._worker is None and "C-GET" in widget.status.text(), timeout=60_000)
    assert "the archive does not allow C-GET for this station: use C-MOVE" in widget.status.text()
    assert len(viewer.layers) == 0 and not any((tmp_path / "cache").rglob("*.dcm"))

    widget._settings_path = strict.settings(tmp_path / "pacs.toml", retrieval="move", move_port=strict.move_port,
                                            move_address="127.0.0.1")
    widget.load_settings()
    _search(qtbot, widget)
    widget.retrieve_button.click()
    assert widget.status.text() == "Retrieving 3 series from PACS 'test' (C-MOVE to this station)..."
    qtbot.waitUntil(lambda: len(viewer.layers) == 1 and widget._worker is None, timeout=120_000)
    assert viewer.layers[0].data.shape == (3, 20, 40, 48)
    assert widget.progress.value() == widget.progress.maximum() == 60


def test_cancel_during_retrieval_keeps_nothing_and_opens_nothing(qtbot, dock, monkeypatch, tmp_path):
    viewer, widget = dock
    real_write, count = pacs_receive.atomic_write_bytes, {"n": 0}

    def write_then_hold(path, payload):  # the third image waits until the user has pressed Cancel
        real_write(path, payload)
        count["n"] += 1
        if count["n"] == 3:
            assert widget._cancel.wait(60)

    monkeypatch.setattr(pacs_receive, "atomic_write_bytes", write_then_hold)
    _search(qtbot, widget)
    widget.retrieve_button.click()
    qtbot.waitUntil(lambda: widget.progress.value() >= 2, timeout=60_000)  # the third is held
    assert widget.cancel_button.isEnabled() and not widget.search_button.isEnabled()
    widget.cancel_button.click()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=60_000)
    assert widget.status.text() == "Retrieval cancelled; nothing was kept"
    assert len(viewer.layers) == 0
    assert not any(p.is_file() for p in (tmp_path / "cache").rglob("*.dcm"))


def test_menu_command_docks_the_dialog(make_napari_viewer, monkeypatch, tmp_path):
    from napari_medimp._widgets.pacs import PacsWidget, open_pacs_dialog

    monkeypatch.setenv(pacs.CONFIG_ENV, str(tmp_path / "none.toml"))
    widget = open_pacs_dialog(make_napari_viewer())
    assert isinstance(widget, PacsWidget)
