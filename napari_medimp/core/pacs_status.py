"""What an archive's refusal means, in words a user can take to the PACS administrator.

The DICOM answers read here: the A-ASSOCIATE-RJ of a refused association (result, source, reason), an
association the archive ends right after a request (what Orthanc does when a station may not use a
service), and the status of a C-FIND, C-GET or C-MOVE response with its error comment. Each function
returns one line; :mod:`napari_medimp.core.pacs` raises it. Settings are named by their key in the PACS
settings file, never by their value: addresses and AE titles stay in the file.
"""

from __future__ import annotations

from .failures import one_line

#: the operations a message speaks of, as a user and a PACS administrator call them
OPERATIONS = {"echo": "verification (C-ECHO)", "find": "query (C-FIND)", "get": "C-GET", "move": "C-MOVE"}

_REGISTER = ("ask the PACS administrator to register this station's AE title (calling_aet in the PACS "
             "settings) and this computer's address")
_REJECT_SOURCES = {1: "the archive", 2: "the archive's DICOM service (ACSE)", 3: "the archive's network layer"}


def rejection_words(name: str, result: int | None, source: int | None, reason: int | None) -> str:
    """One line for an A-ASSOCIATE-RJ: ``result`` 1 permanent, 2 transient; ``source`` 1 service user,
    2 service provider (ACSE), 3 service provider (presentation); ``reason`` per source (PS3.8 9.3.4)."""
    head = f"PACS '{name}' refused the connection"
    if source == 1 and reason == 3:
        return f"{head}: this station's AE title is not registered in the archive; {_REGISTER}"
    if source == 1 and reason == 7:
        return (f"{head}: the archive's AE title is wrong (called_aet in the PACS settings); ask the PACS "
                "administrator for the archive's AE title")
    if source == 1 and reason == 2:
        return f"{head}: it does not support the DICOM application context; ask the PACS administrator"
    if source == 2 and reason == 2:
        return f"{head}: it does not support this DICOM protocol version; ask the PACS administrator"
    if source == 3 and reason in (1, 2):
        why = "it is busy (temporary congestion)" if reason == 1 else "it has reached its limit of connections"
        return f"{head}: {why}; try again in a few minutes"
    kind = {1: "permanently", 2: "for now"}.get(result, "")
    who = _REJECT_SOURCES.get(source, "the archive")
    return (f"{head} {kind} ({who} gave no reason{'' if reason in (None, 1) else f', reason code {reason}'}): "
            "its settings may not accept this station's AE title, or the archive's AE title (called_aet) is "
            f"wrong; {_REGISTER}").replace("  ", " ")


def ended_words(name: str, operation: str, station_known: bool | None = None) -> str:
    """The archive ended the association as soon as it was asked for ``operation`` (echo, find, get, move).

    ``station_known``: whether a query from this station is answered (then the station is registered and only
    this operation is not allowed for it); None when not checked."""
    head = f"PACS '{name}' ended the connection when asked for a {OPERATIONS[operation]}"
    if operation == "get" and station_known:
        return (f"{head}: the archive does not allow C-GET for this station: use C-MOVE (retrieval = \"move\" "
                "for this server in the PACS settings, with move_port) or ask the PACS administrator to allow "
                "C-GET for this station's AE title")
    if operation == "move" and station_known:
        return (f"{head}: the archive does not allow C-MOVE for this station: use C-GET (retrieval = \"get\" "
                "in the PACS settings) or ask the PACS administrator to allow C-MOVE for this station's AE title")
    return (f"{head}: this station's AE title is not registered in the archive, or may not use this service; "
            f"{_REGISTER}")


#: statuses of C-FIND, C-GET and C-MOVE responses (PS3.4 C.4, PS3.7 C) that end an operation
_STATUS = {
    0x0122: "refused: the archive does not support this SOP class",
    0x0124: "refused: this station is not authorized",
    0xA700: "refused: out of resources",
    0xA701: "refused: out of resources, the archive could not count the matches",
    0xA702: "refused: out of resources, the archive could not send the images",
    0xA801: "refused: the move destination is unknown to the archive",
    0xA900: "failed: the request does not match the query/retrieve model",
    0xB000: "warning: some images could not be sent",
    0xFE00: "cancelled",
}


def status_meaning(status: int) -> str:
    if status in _STATUS:
        return _STATUS[status]
    if 0xA000 <= status <= 0xAFFF or 0xC000 <= status <= 0xCFFF:
        return "failed: the archive was unable to process the request"
    return "unexpected answer"


def _advice(operation: str, status: int) -> str:
    if status in (0x0124,) or (status == 0x0122 and operation in ("get", "move")):
        other = "C-MOVE (retrieval = \"move\")" if operation == "get" else "C-GET (retrieval = \"get\")"
        return (f"; ask the PACS administrator to allow {OPERATIONS[operation]} for this station, or use {other} "
                "in the PACS settings")
    if status in (0x0122, 0xA900):
        return "; ask the PACS administrator which query/retrieve model (study root) the archive offers"
    if status == 0xA801 or (operation == "move" and 0xC000 <= status <= 0xCFFF):
        return ("; ask the PACS administrator to register this station as a C-MOVE destination, with its move "
                "AE title (move_aet, else calling_aet, in the PACS settings), this computer's address and move_port")
    if status in (0xA700, 0xA701, 0xA702):
        return "; try again later or ask the PACS administrator"
    return ""


def status_words(name: str, operation: str, status: int, comment: str = "", what: str = "") -> str:
    """One line for a C-FIND, C-GET or C-MOVE response ending with ``status`` (its error comment, if any, is
    quoted with its control characters escaped); ``what`` names the series asked for."""
    target = f" of {what}" if what else ""
    said = f", saying '{one_line(comment.strip())[:200]}'" if comment and comment.strip() else ""
    return (f"PACS '{name}' refused the {OPERATIONS[operation]}{target} (status 0x{status:04X}: "
            f"{status_meaning(status)}{said}){_advice(operation, status)}")


def unsupported_words(name: str, operation: str) -> str:
    """The archive accepted the association but not the presentation context of ``operation``."""
    other = {"get": " or use C-MOVE (retrieval = \"move\" in the PACS settings)",
             "move": " or use C-GET (retrieval = \"get\" in the PACS settings)"}.get(operation, "")
    return (f"PACS '{name}' does not offer the study-root {OPERATIONS[operation]} to this station; ask the PACS "
            f"administrator to allow it{other}")
