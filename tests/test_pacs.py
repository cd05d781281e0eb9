"""Query and retrieve against a real Orthanc PACS on 127.0.0.1, fed a generated multiphase exam."""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest
from pacs_server import AET, free_port

from napari_medimp.core import pacs, pacs_receive
from napari_medimp.core.io import load_dce

TIMES = np.array([0.0, 35.0, 200.0])


@pytest.fixture
def settings(archive, tmp_path):
    return archive.settings(tmp_path / "pacs.toml")


def _p7(settings):
    return pacs.find(pacs.server_named(path=settings), patient_id="P7")


# --------------------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------------------
def test_missing_settings_say_where_to_create_them(tmp_path, monkeypatch):
    monkeypatch.setenv(pacs.CONFIG_ENV, str(tmp_path / "none.toml"))
    with pytest.raises(pacs.PacsError, match=r"no PACS settings: create .*none.toml"):
        pacs.server_named()


@pytest.mark.parametrize("body, problem", [
    ("[server.a]\nhost = 'h'\nport = 0\ncalled_aet = 'X'\n", "'port' must be"),
    ("[server.a]\nhost = 'h'\nport = 104\ncalled_aet = 'AN_AE_TITLE_TOO_LONG'\n", "'called_aet' must be"),
    ("[server.a]\nhost = 'h'\nport = 104\ncalled_aet = 'X'\npassword = 'p'\n", "unknown setting"),
    ("default = 'b'\n[server.a]\nhost = 'h'\nport = 104\ncalled_aet = 'X'\n", "default = 'b' is not"),
    ("[server.a\n", "not valid TOML"),
])
def test_bad_settings_are_named(tmp_path, body, problem):
    (tmp_path / "pacs.toml").write_text(body)
    with pytest.raises(pacs.PacsError, match=problem):
        pacs.load_servers(tmp_path / "pacs.toml")


def test_server_description_never_shows_address_or_ae_titles(settings):
    server = pacs.server_named(path=settings)
    assert repr(server) == str(server) == "PacsServer('test')"


# --------------------------------------------------------------------------------------------------
# query
# --------------------------------------------------------------------------------------------------
def test_find_lists_the_phase_series_of_a_patient(settings):
    matches = _p7(settings)
    assert [m.series_description for m in matches] == ["DCE pre-contrast", "DCE arterial", "DCE tubular"]
    assert {(m.patient_id, m.patient_name, m.study_date, m.modality, m.n_images) for m in matches} == {
        ("P7", "Doe^Jane", "20240312", "MR", 20)}
    assert [m.series_number for m in matches] == [2, 3, 4]


def test_find_by_date_range_and_wildcard(settings):
    server = pacs.server_named(path=settings)
    assert {m.patient_id for m in pacs.find(server, study_date="20240501-20240701")} == {"P8"}
    assert {m.patient_id for m in pacs.find(server, patient_id="P*")} == {"P7", "P8"}
    assert pacs.find(server, patient_id="P7", modality="CT") == []


@pytest.mark.parametrize("kwargs, problem", [
    ({}, "give a patient ID or a study date"),
    ({"study_date": "12/03/2024"}, "YYYYMMDD"),
    ({"patient_id": "P7", "modality": "mr;"}, "modality"),
])
def test_bad_queries_are_refused_before_connecting(kwargs, problem):
    server = pacs.PacsServer("nowhere", "127.0.0.1", free_port(), "X")
    with pytest.raises(pacs.PacsError, match=problem):
        pacs.find(server, **kwargs)


def test_refused_association_and_unreachable_server(archive, tmp_path):
    wrong_aet = pacs.server_named(path=archive.settings(tmp_path / "a.toml", called_aet="NOTTHEPACS"))
    with pytest.raises(pacs.PacsError, match="PACS 'test' refused the connection"):
        pacs.find(wrong_aet, patient_id="P7")
    closed = pacs.server_named(path=archive.settings(tmp_path / "b.toml", port=free_port(), timeout_s=2))
    with pytest.raises(pacs.PacsError, match=r"could not reach PACS 'test': connection refused \(is it running"):
        pacs.echo(closed)


def test_a_server_that_never_answers_times_out_with_a_message(archive, tmp_path):
    import socket

    with socket.socket() as silent:  # listens, never speaks DICOM
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        server = pacs.server_named(path=archive.settings(tmp_path / "c.toml", port=silent.getsockname()[1],
                                                         timeout_s=1))
        with pytest.raises(pacs.PacsError, match="did not answer the DICOM association request within 1 s"):
            pacs.find(server, patient_id="P7")


# --------------------------------------------------------------------------------------------------
# retrieval
# --------------------------------------------------------------------------------------------------
def test_retrieve_opens_as_one_dce_volume_and_is_cached(archive, settings, tmp_path):
    server = pacs.server_named(path=settings)
    seen = []
    folder = pacs.retrieve(server, _p7(settings), root=tmp_path / "cache", progress=lambda n, m: seen.append((n, m)))
    assert seen[-1] == (60, 60) and len(seen) == 60
    volume = load_dce(folder)
    assert volume.shape == (3, 20, 40, 48)
    np.testing.assert_allclose(volume.frame_times, TIMES)
    np.testing.assert_allclose(volume.data, archive.volume.data, atol=0.02)
    np.testing.assert_allclose(volume.affine, archive.volume.affine, atol=1e-4)
    assert volume.metadata["patient_id"] == "P7"
    stamp = (folder / pacs.MANIFEST).stat().st_mtime_ns
    again = []
    assert pacs.retrieve(server, _p7(settings), root=tmp_path / "cache", progress=lambda n, m: again.append(n)) == folder
    assert again == [60] and (folder / pacs.MANIFEST).stat().st_mtime_ns == stamp
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no partial folder left


def test_cancel_stops_the_transfer_and_keeps_nothing(settings, tmp_path):
    server = pacs.server_named(path=settings)
    cancel = threading.Event()

    def progress(n, m):
        if n == 5:
            cancel.set()

    with pytest.raises(pacs.PacsCancelled, match="cancelled; nothing was kept"):
        pacs.retrieve(server, _p7(settings), root=tmp_path / "cache", progress=progress, cancel=cancel)
    assert not any(p.is_file() for p in (tmp_path / "cache").rglob("*"))


def test_images_that_fail_to_arrive_make_the_retrieval_incomplete(settings, tmp_path, monkeypatch):
    server = pacs.server_named(path=settings)
    real_write, calls = pacs_receive.atomic_write_bytes, {"n": 0}

    def full_disk_on_the_seventh(path, payload):
        calls["n"] += 1
        if calls["n"] == 7:
            raise OSError(28, "No space left on device")
        real_write(path, payload)

    monkeypatch.setattr(pacs_receive, "atomic_write_bytes", full_disk_on_the_seventh)
    with pytest.raises(pacs.PacsError, match="incomplete.*nothing was kept"):
        pacs.retrieve(server, _p7(settings), root=tmp_path / "cache")
    assert pacs.cached_retrieval(_p7(settings), tmp_path / "cache") is None
    assert not any(p.is_file() for p in (tmp_path / "cache").rglob("*"))


def test_fewer_images_than_announced_is_incomplete(settings, tmp_path):
    server = pacs.server_named(path=settings)
    matches = _p7(settings)
    matches[0].n_images = 25  # the archive announced more than it holds
    with pytest.raises(pacs.PacsError, match="incomplete: 60 of the 65 images"):
        pacs.retrieve(server, matches, root=tmp_path / "cache")


def test_address_and_ae_titles_stay_out_of_the_logs(settings, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    server = pacs.server_named(path=settings)
    pacs.retrieve(server, _p7(settings)[:1], root=tmp_path / "cache")
    text = caplog.text
    assert AET not in text and "MEDIMP" not in text and str(server.port) not in text


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------
def test_cli_find_and_get(settings, tmp_path, capsys, monkeypatch):
    from napari_medimp.cli import main

    monkeypatch.setenv("NAPARI_MEDIMP_CACHE", str(tmp_path / "cache"))
    assert main(["pacs", "find", "--config", str(settings), "--patient", "P7"]) == 0
    out = capsys.readouterr().out
    assert "DCE arterial" in out and "20240312" in out and "3 series" in out
    study = _p7(settings)[0].study_uid
    assert main(["pacs", "get", "--config", str(settings), "--study", study]) == 0
    out = capsys.readouterr().out
    assert "3 frames" in out and str(tmp_path / "cache") in out
    assert main(["pacs", "find", "--config", str(tmp_path / "missing.toml"), "--patient", "P7"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("medimp: no PACS settings") and err.count("\n") == 1 and "Traceback" not in err


def test_a_refused_retrieval_leaves_nothing_in_the_cache(tmp_path):
    """The archive cannot be reached: the retrieval fails and the cache holds no study folder, empty or not."""
    closed = pacs.PacsServer("closed", "127.0.0.1", free_port(), "X", timeout_s=2)
    series = [pacs.SeriesMatch("P7", "Doe^Jane", "1.2.3", "20240312", "kidney", "1.2.3.4", 1, "dce", "MR", 3)]
    cache = tmp_path / "cache"
    with pytest.raises(pacs.PacsError, match="could not reach PACS 'closed'"):
        pacs.retrieve(closed, series, root=cache)
    assert [p.relative_to(cache) for p in cache.rglob("*")] == []
