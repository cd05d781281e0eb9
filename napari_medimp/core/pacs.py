"""Query and retrieve DCE-MRI from a hospital PACS (DICOM C-FIND, then C-GET or C-MOVE, through pynetdicom).

Servers are described in a TOML settings file, never on the command line or in logs::

    # ~/.config/napari-medimp/pacs.toml   (or the file named by $NAPARI_MEDIMP_PACS_CONFIG)
    default = "hospital"

    [server.hospital]
    host = "pacs.hospital.example"
    port = 104
    called_aet = "PACS"          # the archive's AE title
    calling_aet = "MEDIMP"       # this station's AE title, as registered at the archive
    timeout_s = 30
    retrieval = "get"            # or "move": the archive sends the images to this station's storage port
    # move_aet = "MEDIMP"        # this station's AE title as a C-MOVE destination (default: calling_aet)
    # move_port = 11112          # the port this station listens on during a C-MOVE (needed for "move")
    # move_address = "0.0.0.0"   # the address it listens on (default: every address of this computer)

Messages name a server by its entry name ("hospital"); its address and AE titles stay in the file.
Retrieved series land in the cache (``<cache>/pacs/<study>/<selection>/``): they are downloaded into a
temporary folder and moved in place only once every image announced by the archive has arrived, so an
interrupted or incomplete retrieval is never opened as a complete exam. Complete means: every image the
archive announced arrived, and the images of each series form whole phases
(:func:`napari_medimp.core.pacs_receive.completeness_problem`). A refusal is told in words the PACS
administrator can act on (:mod:`napari_medimp.core.pacs_status`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import threading
import time
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from .atomic import atomic_write_bytes
from .failures import quiet_logger
from .outputs import RETRIEVAL_RECORD_FILE
from .pacs_receive import Receiver, completeness_problem
from .pacs_status import ended_words, rejection_words, status_words, unsupported_words

CONFIG_ENV = "NAPARI_MEDIMP_PACS_CONFIG"
#: the retrieval record beside a cached series (its name is owned by :mod:`.outputs`)
MANIFEST = RETRIEVAL_RECORD_FILE
_MAX_CONFIG_BYTES = 256 * 1024
_AET = re.compile(r"^[\x20-\x7e]{1,16}$")
_DATE = re.compile(r"^(\d{8})?(-(\d{8})?)?$")
_SETTINGS = {"host", "port", "called_aet", "calling_aet", "timeout_s", "retrieval", "move_aet", "move_port",
             "move_address"}
RETRIEVALS = ("get", "move")


class PacsError(Exception):
    """A query or retrieval failed; the message says what happened in one line."""


class PacsCancelled(PacsError):
    """The user stopped a retrieval; nothing was kept."""


@dataclass(frozen=True)
class PacsServer:
    name: str
    host: str
    port: int
    called_aet: str
    calling_aet: str = "MEDIMP"
    timeout_s: float = 30.0
    retrieval: str = "get"
    move_aet: str = ""  # empty: calling_aet
    move_port: int | None = None
    move_address: str = "0.0.0.0"

    def __repr__(self) -> str:  # keep the address and AE titles out of tracebacks and logs
        return f"PacsServer({self.name!r})"

    __str__ = __repr__


def config_path() -> Path:
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    from platformdirs import user_config_dir

    return Path(user_config_dir("napari-medimp")) / "pacs.toml"


def load_servers(path=None) -> tuple[dict[str, PacsServer], str | None]:
    """Servers of the settings file and the default entry's name; a missing file is an error saying where."""
    path = Path(path) if path else config_path()
    if not path.exists():
        raise PacsError(f"no PACS settings: create {path} (see the README, 'Open from PACS')")
    if not path.is_file():
        raise PacsError(f"{path}: the PACS settings must be a regular file")
    if path.stat().st_size > _MAX_CONFIG_BYTES:
        raise PacsError(f"{path}: PACS settings larger than {_MAX_CONFIG_BYTES // 1024} KiB; not read")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PacsError(f"{path}: PACS settings are not valid TOML ({exc})") from None
    entries = raw.get("server")
    if not isinstance(entries, dict) or not entries:
        raise PacsError(f"{path}: no [server.<name>] entry")
    servers = {}
    for name, entry in entries.items():
        where = f"{path}: [server.{name}]"
        if not isinstance(entry, dict):
            raise PacsError(f"{where} must be a table")
        unknown = set(entry) - _SETTINGS
        if unknown:
            raise PacsError(f"{where}: unknown setting(s) {', '.join(sorted(unknown))}")
        host, port = entry.get("host"), entry.get("port")
        if not isinstance(host, str) or not host.strip():
            raise PacsError(f"{where}: 'host' must be a host name or address")
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise PacsError(f"{where}: 'port' must be a whole number from 1 to 65535")
        aets = {}
        for key, fallback in (("called_aet", None), ("calling_aet", "MEDIMP")):
            value = entry.get(key, fallback)
            if not isinstance(value, str) or not _AET.match(value) or not value.strip():
                raise PacsError(f"{where}: '{key}' must be an AE title of 1 to 16 printable characters")
            aets[key] = value.strip()
        timeout = entry.get("timeout_s", 30.0)
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not 0.1 <= timeout <= 3600:
            raise PacsError(f"{where}: 'timeout_s' must be between 0.1 and 3600 seconds")
        servers[name] = PacsServer(name, host.strip(), port, aets["called_aet"], aets["calling_aet"], float(timeout),
                                   **_move_settings(entry, where, aets["calling_aet"]))
    default = raw.get("default")
    if default is not None and default not in servers:
        raise PacsError(f"{path}: default = {default!r} is not one of the servers ({', '.join(servers)})")
    return servers, default or next(iter(servers))


def _move_settings(entry: dict, where: str, calling_aet: str) -> dict:
    retrieval = entry.get("retrieval", "get")
    if retrieval not in RETRIEVALS:
        raise PacsError(f"{where}: 'retrieval' must be \"get\" (C-GET) or \"move\" (C-MOVE)")
    move_aet = entry.get("move_aet", calling_aet)
    if not isinstance(move_aet, str) or not _AET.match(move_aet) or not move_aet.strip():
        raise PacsError(f"{where}: 'move_aet' must be an AE title of 1 to 16 printable characters")
    port = entry.get("move_port")
    if port is not None and (not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535):
        raise PacsError(f"{where}: 'move_port' must be a whole number from 1 to 65535")
    if retrieval == "move" and port is None:
        raise PacsError(f"{where}: retrieval = \"move\" needs 'move_port', the port this station receives on "
                        "(registered at the archive with its AE title and address)")
    address = entry.get("move_address", "0.0.0.0")
    if not isinstance(address, str) or not address.strip():
        raise PacsError(f"{where}: 'move_address' must be an address of this computer")
    return {"retrieval": retrieval, "move_aet": move_aet.strip(), "move_port": port, "move_address": address.strip()}


def server_named(name: str | None = None, path=None) -> PacsServer:
    servers, default = load_servers(path)
    name = name or default
    if name not in servers:
        raise PacsError(f"no PACS server named {name!r} in the settings (known: {', '.join(servers)})")
    return servers[name]


# --------------------------------------------------------------------------------------------------
# associations
# --------------------------------------------------------------------------------------------------
def _quiet_network_log():
    """pynetdicom logs association details (addresses, AE titles); keep them out of the user's logs."""
    return quiet_logger("pynetdicom", logging.CRITICAL)


def _application_entity(server: PacsServer):
    from pynetdicom import AE

    ae = AE(ae_title=server.calling_aet)
    for attr in ("acse_timeout", "dimse_timeout", "network_timeout", "connection_timeout"):
        setattr(ae, attr, server.timeout_s)
    return ae


def _refused(server: PacsServer) -> PacsError:
    return PacsError(f"PACS '{server.name}' refused the connection: its settings do not accept this "
                     "station's AE title or the called AE title is wrong")


def _associate(ae, server: PacsServer, **kwargs):
    started = time.monotonic()
    assoc = ae.associate(server.host, server.port, ae_title=server.called_aet, **kwargs)
    if assoc.is_established:
        return assoc
    if assoc.is_rejected:
        answer = getattr(assoc.acceptor, "primitive", None)
        raise PacsError(rejection_words(server.name, getattr(answer, "result", None),
                                        getattr(answer, "result_source", None), getattr(answer, "diagnostic", None)))
    waited = time.monotonic() - started
    try:  # pynetdicom reports an unreachable host as an abort: tell the two apart
        socket.create_connection((server.host, server.port), timeout=server.timeout_s).close()
    except ConnectionRefusedError:
        raise PacsError(f"could not reach PACS '{server.name}': connection refused (is it running, "
                        "is the port right?)") from None
    except TimeoutError:
        raise PacsError(f"could not reach PACS '{server.name}': no answer within {server.timeout_s:g} s") from None
    except OSError as exc:
        raise PacsError(f"could not reach PACS '{server.name}': {exc.strerror or 'network error'}") from None
    if waited >= 0.9 * server.timeout_s:
        raise PacsError(f"PACS '{server.name}' took the network connection but did not answer the DICOM "
                        f"association request within {server.timeout_s:g} s")
    # a quick end without an answer: the archive dropped the request (a rejection whose reply was lost
    # when it closed the connection right after is reported this way by pynetdicom)
    raise _refused(server)


def _accepted(assoc, model) -> bool:
    """Whether the archive accepted the presentation context of ``model`` on this association."""
    return any(str(cx.abstract_syntax) == str(model) for cx in assoc.accepted_contexts)


@contextlib.contextmanager
def _association(ae, server: PacsServer, model=None, operation: str = "", **kwargs):
    """An association of ``ae`` with the archive, released on leaving. With ``model``: refused in words when
    the archive does not offer that service (``operation``: "find", "get", "move")."""
    assoc = _associate(ae, server, **kwargs)
    try:
        if model is not None and not _accepted(assoc, model):
            raise PacsError(unsupported_words(server.name, operation))
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def _station_may_query(server: PacsServer, study_uid: str) -> bool:
    """Whether the archive answers a query of this station (then it knows the station)."""
    from pydicom.dataset import Dataset
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FindModel

    ae = _application_entity(server)
    ae.add_requested_context(FindModel)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    try:
        with _association(ae, server, FindModel, "find") as assoc:
            return all(bool(status) for status, _ in assoc.send_c_find(query, FindModel))
    except PacsError:
        return False


def _no_answer(server: PacsServer, operation: str, since: float, during: str, study_uid: str = "") -> PacsError:
    """No response came: the archive ended the association at once (how Orthanc refuses a service to a
    station) or went silent until the timeout."""
    if time.monotonic() - since < 0.9 * server.timeout_s:
        known = _station_may_query(server, study_uid) if operation in ("get", "move") else None
        return PacsError(ended_words(server.name, operation, known))
    return PacsError(f"PACS '{server.name}' stopped answering {during} (timeout)")


def echo(server: PacsServer) -> None:
    """Check that the server answers (C-ECHO); raises ``PacsError`` when it does not."""
    from pynetdicom.sop_class import Verification

    with _quiet_network_log():
        ae = _application_entity(server)
        ae.add_requested_context(Verification)
        with _association(ae, server) as assoc:
            started = time.monotonic()
            status = assoc.send_c_echo()
            if not status:
                raise _no_answer(server, "echo", started, "the verification request")
    if status.Status != 0:
        raise PacsError(f"PACS '{server.name}' did not answer the verification request")


# --------------------------------------------------------------------------------------------------
# query
# --------------------------------------------------------------------------------------------------
@dataclass
class SeriesMatch:
    patient_id: str
    patient_name: str
    study_uid: str
    study_date: str
    study_description: str
    series_uid: str
    series_number: int | None
    series_description: str
    modality: str
    n_images: int | None

    def label(self) -> str:
        return f"series {self.series_number if self.series_number is not None else '?'} '{self.series_description}'"


def _check_query(patient_id: str, study_date: str, modality: str) -> None:
    every_patient = not patient_id.strip() or ("*" in patient_id and not patient_id.strip("*? "))
    if every_patient and not study_date:
        raise PacsError(f"give a patient ID or a study date (a query for every patient is refused"
                        f"{f', and patient {patient_id!r} matches every patient' if patient_id.strip() else ''})")
    if study_date and not _DATE.match(study_date):
        raise PacsError(f"study date {study_date!r} must be YYYYMMDD or a range YYYYMMDD-YYYYMMDD")
    if modality and not re.fullmatch(r"[A-Z]{1,16}", modality):
        raise PacsError(f"modality {modality!r} must be a DICOM modality code such as MR")
    if any(c in patient_id for c in "\\\x00"):
        raise PacsError("the patient ID holds a backslash or a null character")


def _find(assoc, model, query, server) -> list:
    results = []
    last = time.monotonic()
    for status, identifier in assoc.send_c_find(query, model):
        if not status:
            raise _no_answer(server, "find", last, "the query")
        last = time.monotonic()
        if status.Status in (0xFF00, 0xFF01) and identifier is not None:
            results.append(identifier)
        elif status.Status != 0:
            raise PacsError(status_words(server.name, "find", status.Status, str(status.get("ErrorComment", ""))))
    return results


def find(server: PacsServer, patient_id: str = "", study_date: str = "", modality: str = "MR",
         study_uid: str = "") -> list[SeriesMatch]:
    """Series matching a patient ID (wildcards * and ? allowed), a study date or range, and a modality."""
    from pydicom.dataset import Dataset
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FindModel

    if not study_uid:
        _check_query(patient_id, study_date, modality)
    with _quiet_network_log():
        ae = _application_entity(server)
        ae.add_requested_context(FindModel)
        with _association(ae, server, FindModel, "find") as assoc:
            study_query = Dataset()
            study_query.QueryRetrieveLevel = "STUDY"
            study_query.PatientID = patient_id
            study_query.PatientName = ""
            study_query.StudyDate = study_date
            study_query.StudyInstanceUID = study_uid
            study_query.StudyDescription = ""
            studies = _find(assoc, FindModel, study_query, server)
            matches = []
            for study in studies:
                series_query = Dataset()
                series_query.QueryRetrieveLevel = "SERIES"
                series_query.StudyInstanceUID = str(study.get("StudyInstanceUID", ""))
                series_query.SeriesInstanceUID = ""
                series_query.SeriesNumber = ""
                series_query.SeriesDescription = ""
                series_query.Modality = modality
                series_query.NumberOfSeriesRelatedInstances = ""
                for series in _find(assoc, FindModel, series_query, server):
                    count = series.get("NumberOfSeriesRelatedInstances")
                    number = series.get("SeriesNumber")
                    matches.append(SeriesMatch(
                        patient_id=str(study.get("PatientID", "")),
                        patient_name=str(study.get("PatientName", "")),
                        study_uid=str(study.get("StudyInstanceUID", "")),
                        study_date=str(study.get("StudyDate", "")),
                        study_description=str(study.get("StudyDescription", "")),
                        series_uid=str(series.get("SeriesInstanceUID", "")),
                        series_number=int(number) if number not in (None, "") else None,
                        series_description=str(series.get("SeriesDescription", "")),
                        modality=str(series.get("Modality", "")),
                        n_images=int(count) if count not in (None, "") else None,
                    ))
    return sorted(matches, key=lambda m: (m.patient_id, m.study_date, m.study_uid, m.series_number or 0))


# --------------------------------------------------------------------------------------------------
# retrieval
# --------------------------------------------------------------------------------------------------
def cache_root() -> Path:
    from .sample import cache_dir

    return cache_dir() / "pacs"


def _selection_folder(series: list[SeriesMatch], root: Path) -> Path:
    uids = sorted(m.series_uid for m in series)
    digest = hashlib.sha256("\n".join(uids).encode()).hexdigest()[:16]
    return root / re.sub(r"[^0-9.]", "_", series[0].study_uid)[:64] / digest


def cached_retrieval(series: list[SeriesMatch], root=None) -> Path | None:
    """The folder of an earlier complete retrieval of exactly these series, else None."""
    folder = _selection_folder(series, Path(root) if root else cache_root())
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return None
    try:
        recorded = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return None
    n_files = sum(1 for p in folder.iterdir() if p.suffix == ".dcm")
    return folder if recorded.get("complete") and recorded.get("n_images") == n_files else None


def _series_query(match: SeriesMatch):
    from pydicom.dataset import Dataset

    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = match.study_uid
    query.SeriesInstanceUID = match.series_uid
    return query


def _follow(server: PacsServer, operation: str, match: SeriesMatch, responses, receiver: Receiver, assoc) -> None:
    """Read the C-GET or C-MOVE responses of one series; raise unless the archive reports success."""
    last, final = time.monotonic(), None
    for status, _ in responses:
        if receiver.cancel.is_set():
            assoc.abort()
            raise PacsCancelled("retrieval cancelled; nothing was kept")
        if not status:
            raise _no_answer(server, operation, last, f"during the retrieval of {match.label()}", match.study_uid)
        last = time.monotonic()
        if status.Status not in (0xFF00, 0xFF01):
            final = status
    if receiver.cancel.is_set():
        raise PacsCancelled("retrieval cancelled; nothing was kept")
    code = final.Status if final is not None else 0xFFFF
    failed = int(final.get("NumberOfFailedSuboperations", 0) or 0) if final is not None else 0
    if code == 0x0000 and not failed and assoc.is_established:
        return
    if code in (0x0000, 0xB000) or receiver.write_failures:
        raise PacsError(f"retrieval of {match.label()} incomplete: the PACS answered status 0x{code:04X} with "
                        f"{failed} failed image(s); {receiver.n} image(s) arrived in all, nothing was kept")
    comment = str(final.get("ErrorComment", "")) if final is not None else ""
    raise PacsError(f"{status_words(server.name, operation, code, comment, match.label())}; nothing was kept")


def _get(server: PacsServer, series: list[SeriesMatch], receiver: Receiver) -> None:
    """C-GET: the images come back on the association that asks for them."""
    from pynetdicom import build_role, evt
    from pynetdicom.presentation import StoragePresentationContexts
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GetModel

    ae = _application_entity(server)
    ae.add_requested_context(GetModel)
    roles = []
    for context in StoragePresentationContexts[:127]:
        ae.add_requested_context(context.abstract_syntax)
        roles.append(build_role(context.abstract_syntax, scp_role=True))
    with _association(ae, server, GetModel, "get", ext_neg=roles,
                      evt_handlers=[(evt.EVT_C_STORE, receiver.on_store)]) as assoc:
        for match in series:
            _follow(server, "get", match, assoc.send_c_get(_series_query(match), GetModel), receiver, assoc)


def _move(server: PacsServer, series: list[SeriesMatch], receiver: Receiver) -> None:
    """C-MOVE: this station listens on ``move_port`` while the archive sends the images there."""
    from pynetdicom import AE, evt
    from pynetdicom.presentation import StoragePresentationContexts
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as MoveModel

    destination = server.move_aet or server.calling_aet
    scp = AE(ae_title=destination)
    scp.supported_contexts = StoragePresentationContexts
    scp.require_called_aet = True  # an association for another AE title is not this retrieval's
    for attr in ("acse_timeout", "dimse_timeout", "network_timeout"):
        setattr(scp, attr, server.timeout_s)
    try:
        listener = scp.start_server((server.move_address, server.move_port), block=False,
                                    evt_handlers=[(evt.EVT_C_STORE, receiver.on_store)])
    except (OSError, OverflowError) as exc:
        raise PacsError(f"this station cannot receive the C-MOVE of PACS '{server.name}' on its move port "
                        f"(move_port, move_address in the settings): {getattr(exc, 'strerror', None) or exc}; "
                        "choose a free port and register it at the archive") from None
    try:
        ae = _application_entity(server)
        ae.add_requested_context(MoveModel)
        with _association(ae, server, MoveModel, "move") as assoc:
            for match in series:
                _follow(server, "move", match, assoc.send_c_move(_series_query(match), destination, MoveModel),
                        receiver, assoc)
    finally:
        listener.shutdown()


def retrieve(server: PacsServer, series: list[SeriesMatch], root=None,
             progress: Callable[[int, int | None], None] | None = None,
             cancel: threading.Event | None = None) -> Path:
    """Download the given series of one study (C-GET, or C-MOVE when the server's ``retrieval`` is "move")
    and return the local folder holding them.

    ``progress(received, expected)`` is called after each image; ``cancel`` stops the transfer (then
    :class:`PacsCancelled`). A retrieval is complete when the archive reports no failed sub-operation,
    every announced image was stored and the images of each series form whole phases; anything less raises
    :class:`PacsError` and keeps nothing.
    """
    if not series:
        raise PacsError("no series selected")
    studies = {m.study_uid for m in series}
    if len(studies) != 1:
        raise PacsError("the selected series belong to different studies; retrieve one exam at a time")
    root = Path(root) if root else cache_root()
    done = cached_retrieval(series, root)
    if done is not None:
        if progress:
            n = sum(1 for p in done.iterdir() if p.suffix == ".dcm")
            progress(n, n)
        return done

    final = _selection_folder(series, root)
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.parent / f".{final.name}.partial-{os.getpid()}-{threading.get_ident()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    expected = sum(m.n_images for m in series) if all(m.n_images is not None for m in series) else None
    cancel = cancel or threading.Event()
    receiver = Receiver(partial, {m.series_uid for m in series}, progress, cancel, expected)
    try:
        with _quiet_network_log():
            (_move if server.retrieval == "move" else _get)(server, series, receiver)
        if cancel.is_set():
            raise PacsCancelled("retrieval cancelled; nothing was kept")
        n_files = sum(1 for p in partial.iterdir() if p.suffix == ".dcm")
        if expected is not None and n_files != expected:
            raise PacsError(f"retrieval incomplete: {n_files} of the {expected} images announced by PACS "
                            f"'{server.name}' arrived; nothing was kept")
        if n_files == 0:
            raise PacsError(f"PACS '{server.name}' sent no images for the selected series")
        problem = completeness_problem(receiver.instances, receiver.duplicates, {m.series_uid: m.label() for m in series})
        if problem:
            raise PacsError(f"retrieval incomplete: {problem}; nothing was kept")
        manifest = {"complete": True, "n_images": n_files, "study_uid": series[0].study_uid,
                    "retrieval": server.retrieval, "series": [asdict(m) for m in series]}
        atomic_write_bytes(partial / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
        shutil.rmtree(final, ignore_errors=True)  # an older, unfinished copy of the same selection
        os.replace(partial, final)
        return final
    finally:
        shutil.rmtree(partial, ignore_errors=True)
        if not final.exists():  # a failed retrieval leaves no empty study folder in the cache either
            with contextlib.suppress(OSError):
                final.parent.rmdir()  # only when empty: other retrievals of the study stay
