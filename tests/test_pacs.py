"""Query and retrieve against a real Orthanc PACS on 127.0.0.1, fed a generated multiphase exam."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import warnings

import numpy as np
import pytest
from pacs_server import AET, GETTER, free_port, strict_archive

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
    with pytest.raises(pacs.PacsError, match=r"PACS 'test' refused the connection: the archive's AE title is wrong "
                                             r"\(called_aet in the PACS settings\)"):
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
def _opened_as_p7(folder, archive):
    """The retrieved folder opens as P7's exam, without a warning (the retrieval's own record beside the
    images is no "file that is not DICOM")."""
    assert (folder / pacs.MANIFEST).is_file()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        volume = load_dce(folder)
    assert volume.shape == (3, 20, 40, 48)
    np.testing.assert_allclose(volume.frame_times, TIMES)
    np.testing.assert_allclose(volume.data, archive.volume.data, atol=0.02)
    return volume


def test_retrieve_opens_as_one_dce_volume_and_is_cached(archive, settings, tmp_path):
    server = pacs.server_named(path=settings)
    seen = []
    folder = pacs.retrieve(server, _p7(settings), root=tmp_path / "cache", progress=lambda n, m: seen.append((n, m)))
    assert seen[-1] == (60, 60) and len(seen) == 60
    volume = _opened_as_p7(folder, archive)
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


# --------------------------------------------------------------------------------------------------
# an archive that serves only the stations it lists; C-MOVE; whole phases
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def strict(tmp_path_factory):
    """Strict Orthanc (see pacs_server.strict_archive) holding P7 as one series per phase, and three exams
    that lack images: Q1 one series of 3 phases missing one slice, Q2 the same missing its last phase, Q3
    one series per phase whose second phase misses one slice."""
    from helpers import kidney_volume

    from napari_medimp.core.io.dicom_write import save_dicom_series

    folder = tmp_path_factory.mktemp("strict-orthanc")
    server = strict_archive(folder)
    vol = kidney_volume(n_frames=3)
    vol.frame_times = TIMES.copy()
    files = save_dicom_series(vol, folder / "P7", patient_id="P7", study_date="20240312", series_per_phase=True,
                              phase_names=["pre-contrast", "arterial", "tubular"])
    q1 = save_dicom_series(vol, folder / "Q1", patient_id="Q1", study_date="20230101")
    q2 = save_dicom_series(vol, folder / "Q2", patient_id="Q2", study_date="20230101")
    q3 = save_dicom_series(vol, folder / "Q3", patient_id="Q3", study_date="20230101", series_per_phase=True)
    q1 = [f for f in q1 if f.name != "t002_z006.dcm"]
    q2 = [f for f in q2 if not f.name.startswith("t003_")]
    q3 = [f for f in q3 if f.name != "s003_t002_z006.dcm"]
    sent = files + q1 + q2 + q3
    assert server.store(sent) == len(sent) == 60 + 59 + 40 + 59
    yield server
    server.stop()


def _strict_server(strict, tmp_path, **extra):
    return pacs.server_named(path=strict.settings(tmp_path / "strict.toml", **extra))


def test_an_unregistered_station_is_told_so_at_once(strict, tmp_path):
    stranger = _strict_server(strict, tmp_path, calling_aet="STRANGER", timeout_s=20)
    started = time.monotonic()
    with pytest.raises(pacs.PacsError, match=r"^PACS 'test' ended the connection when asked for a query \(C-FIND\): "
                                             r"this station's AE title is not registered in the archive"):
        pacs.find(stranger, patient_id="P7")
    with pytest.raises(pacs.PacsError, match="verification .* this station's AE title is not registered"):
        pacs.echo(stranger)
    matches = pacs.find(_strict_server(strict, tmp_path), patient_id="P7")
    with pytest.raises(pacs.PacsError, match=r"C-GET: this station's AE title is not registered.*ask the PACS "
                                             r"administrator to register this station's AE title \(calling_aet"):
        pacs.retrieve(stranger, matches, root=tmp_path / "cache")
    assert time.monotonic() - started < 10  # told at once, not after the 20 s timeout
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*"))


def test_c_get_refused_for_this_station_says_use_c_move(strict, tmp_path):
    server = _strict_server(strict, tmp_path)
    matches = pacs.find(server, patient_id="P7")
    assert len(matches) == 3
    with pytest.raises(pacs.PacsError, match=r"the archive does not allow C-GET for this station: use C-MOVE "
                                             r"\(retrieval = \"move\""):
        pacs.retrieve(server, matches, root=tmp_path / "cache")
    assert not any((tmp_path / "cache").rglob("*"))


def test_c_move_refused_for_this_station_says_use_c_get(strict, tmp_path):
    server = _strict_server(strict, tmp_path, calling_aet=GETTER, retrieval="move", move_port=free_port(),
                            move_address="127.0.0.1")
    with pytest.raises(pacs.PacsError, match="the archive does not allow C-MOVE for this station: use C-GET"):
        pacs.retrieve(server, pacs.find(server, patient_id="P7"), root=tmp_path / "cache")


def test_c_move_retrieves_the_same_exam_as_c_get_into_the_cache(strict, archive, tmp_path):
    server = _strict_server(strict, tmp_path, retrieval="move", move_port=strict.move_port, move_address="127.0.0.1")
    assert (server.retrieval, server.move_aet, server.move_port) == ("move", "MEDIMP", strict.move_port)
    seen = []
    matches = pacs.find(server, patient_id="P7")
    folder = pacs.retrieve(server, matches, root=tmp_path / "cache", progress=lambda n, m: seen.append((n, m)))
    assert seen[-1] == (60, 60) and len(seen) == 60
    volume = _opened_as_p7(folder, archive)
    assert json.loads((folder / pacs.MANIFEST).read_text())["retrieval"] == "move"
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", strict.move_port), timeout=2):
        pass  # this station listens only during the retrieval
    assert pacs.retrieve(server, matches, root=tmp_path / "cache") == folder  # from the cache
    getter = _strict_server(strict, tmp_path, calling_aet=GETTER)
    assert load_dce(pacs.retrieve(getter, matches, root=tmp_path / "get")).shape == volume.shape


def test_an_unknown_move_destination_is_explained(strict, tmp_path):
    server = _strict_server(strict, tmp_path, retrieval="move", move_port=strict.move_port, move_address="127.0.0.1",
                            move_aet="NOTREGISTERED")
    with pytest.raises(pacs.PacsError, match=r"refused the C-MOVE of series 2 'DCE pre-contrast' \(status 0xC000.*"
                                             r"register this station as a C-MOVE destination.*nothing was kept"):
        pacs.retrieve(server, pacs.find(server, patient_id="P7"), root=tmp_path / "cache")
    assert not any((tmp_path / "cache").rglob("*"))


def test_a_busy_move_port_is_named_by_its_setting(strict, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        server = _strict_server(strict, tmp_path, retrieval="move", move_port=taken.getsockname()[1],
                                move_address="127.0.0.1")
        with pytest.raises(pacs.PacsError, match=r"cannot receive the C-MOVE of PACS 'test' on its move port "
                                                 r"\(move_port, move_address in the settings\): Address already in use"):
            pacs.retrieve(server, pacs.find(server, patient_id="P7"), root=tmp_path / "cache")


def test_cancel_during_c_move_keeps_nothing(strict, tmp_path):
    server = _strict_server(strict, tmp_path, retrieval="move", move_port=strict.move_port, move_address="127.0.0.1")
    cancel = threading.Event()

    def progress(n, m):
        if n == 5:
            cancel.set()

    with pytest.raises(pacs.PacsCancelled, match="cancelled; nothing was kept"):
        pacs.retrieve(server, pacs.find(server, patient_id="P7"), root=tmp_path / "cache", progress=progress,
                      cancel=cancel)
    assert not any(p.is_file() for p in (tmp_path / "cache").rglob("*"))


@pytest.mark.parametrize("retrieval", ["get", "move"])
@pytest.mark.parametrize("patient, problem", [
    ("Q1", r"series 1 'DCE': its phases hold 20, 19 and 20 slices"),
    ("Q2", r"series 1 'DCE' announces 3 temporal positions; images of 2 arrived"),
    ("Q3", r"the phase series hold different numbers of slices: series 2 'DCE phase 1' 20, "
           r"series 3 'DCE phase 2' 19, series 4 'DCE phase 3' 20"),
])
def test_a_retrieval_that_misses_slices_or_phases_keeps_nothing(strict, tmp_path, retrieval, patient, problem):
    """The archive counts what it holds, so every announced image arrives: the phases tell what is missing."""
    station = {"get": {"calling_aet": GETTER},
               "move": {"retrieval": "move", "move_port": strict.move_port, "move_address": "127.0.0.1"}}[retrieval]
    server = _strict_server(strict, tmp_path, **station)
    matches = pacs.find(server, patient_id=patient)
    with pytest.raises(pacs.PacsError, match=f"^retrieval incomplete: {problem}; nothing was kept$"):
        pacs.retrieve(server, matches, root=tmp_path / "cache")
    assert pacs.cached_retrieval(matches, tmp_path / "cache") is None
    assert not any((tmp_path / "cache").rglob("*"))


def test_an_image_sent_twice_is_refused():
    from dataclasses import replace

    from napari_medimp.core.pacs_receive import Instance, completeness_problem

    grid = (40, 48, (1.0, 0.0, 0.0, 0.0, 1.0, 0.0))
    items = [Instance("1.2", f"1.2.{z}", None, None, (0.0, 0.0, float(z)), grid) for z in range(4)]
    assert completeness_problem(items, 0, {"1.2": "series 1 'DCE'"}) is None
    assert completeness_problem(items, 2, {}) == "2 image(s) arrived twice (same SOPInstanceUID)"
    gap = items + items[:3]  # a second phase missing its last slice, positions repeated
    assert completeness_problem([replace(item, sop_uid=f"x{i}") for i, item in enumerate(gap)], 0,
                                {"1.2": "series 1 'DCE'"}) == (
        "series 1 'DCE': 7 images do not make whole phases of 4 slices (1 slice position(s) hold fewer than 2 images)")


@pytest.mark.parametrize("args, words", [
    ((1, 1, 3), "refused the connection: this station's AE title is not registered in the archive; ask the PACS "
                "administrator to register this station's AE title (calling_aet in the PACS settings)"),
    ((1, 1, 7), "the archive's AE title is wrong (called_aet in the PACS settings)"),
    ((2, 3, 2), "it has reached its limit of connections; try again in a few minutes"),
])
def test_association_rejections_say_what_to_ask(args, words):
    from napari_medimp.core.pacs_status import rejection_words

    assert words in rejection_words("hospital", *args)


@pytest.mark.parametrize("operation, status, comment, words", [
    ("get", 0xA702, "", "refused the C-GET of series 3 'DCE' (status 0xA702: refused: out of resources, the "
                        "archive could not send the images)"),
    ("get", 0x0122, "", "does not support this SOP class); ask the PACS administrator to allow C-GET for this "
                        "station, or use C-MOVE"),
    ("find", 0xA900, "", "(status 0xA900: failed: the request does not match the query/retrieve model)"),
    ("move", 0xA801, "", "the move destination is unknown to the archive); ask the PACS administrator to "
                         "register this station as a C-MOVE destination"),
    ("find", 0xC001, "bad\nkey\x1b", "unable to process the request, saying 'bad\\nkey\\x1b')"),
])
def test_statuses_say_what_happened(operation, status, comment, words):
    from napari_medimp.core.pacs_status import status_words

    assert words in status_words("hospital", operation, status, comment, "series 3 'DCE'")


@pytest.mark.parametrize("body, problem", [
    ("retrieval = 'fetch'\n", "'retrieval' must be \"get\""),
    ("retrieval = 'move'\n", "needs 'move_port'"),
    ("retrieval = 'move'\nmove_port = 70000\n", "'move_port' must be"),
])
def test_bad_move_settings_are_named(tmp_path, body, problem):
    (tmp_path / "pacs.toml").write_text("[server.a]\nhost = 'h'\nport = 104\ncalled_aet = 'X'\n" + body)
    with pytest.raises(pacs.PacsError, match=problem):
        pacs.load_servers(tmp_path / "pacs.toml")


def test_cli_get_uses_c_move_from_the_settings_and_says_why_c_get_fails(strict, tmp_path, capsys, monkeypatch):
    from napari_medimp.cli import main

    monkeypatch.setenv("NAPARI_MEDIMP_CACHE", str(tmp_path / "cache"))
    study = pacs.find(_strict_server(strict, tmp_path), patient_id="P7")[0].study_uid
    assert main(["pacs", "get", "--config", str(strict.settings(tmp_path / "get.toml")), "--study", study]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not allow C-GET for this station: use C-MOVE" in err
    move = strict.settings(tmp_path / "move.toml", retrieval="move", move_port=strict.move_port,
                           move_address="127.0.0.1")
    assert main(["pacs", "get", "--config", str(move), "--study", study]) == 0
    assert "3 frames" in capsys.readouterr().out
