"""A real PACS for the tests: Debian's Orthanc on 127.0.0.1 at free ports, in a temporary folder."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

AET = "MEDIMPTEST"
STATION = "MEDIMP"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def orthanc_binary() -> str:
    found = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)
    if found is None:
        pytest.fail("Orthanc is needed by the PACS tests: apt-get install orthanc (scripts/setup.sh does)")
    return found


class OrthancServer:
    def __init__(self, folder: Path, **overrides):
        """``overrides`` replace entries of Orthanc's configuration (e.g. ``DicomAlwaysAllowGet=False``)."""
        self.folder = folder
        self.port = free_port()
        self.http_port = free_port()
        config = {
            "Name": "medimp-test-pacs",
            "StorageDirectory": str(folder / "db"),
            "IndexDirectory": str(folder / "db"),
            "Plugins": [],
            "HttpServerEnabled": False,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "DicomServerEnabled": True,
            "DicomAet": AET,
            "DicomPort": self.port,
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowGet": True,
            "DicomCheckModalityHost": False,
            "DicomModalities": {},
            "DicomScpTimeout": 30,
            "StorageCompression": False,
            "ConcurrentJobs": 1,
            **overrides,
        }
        (folder / "orthanc.json").write_text(json.dumps(config))
        self.log = open(folder / "orthanc.log", "w")  # noqa: SIM115 - closed in stop()
        # DCMTK (Orthanc's DICOM layer) turns Nagle's algorithm off only when TCP_NODELAY is set: without it
        # every stored or retrieved image waits on a delayed acknowledgement
        self.process = subprocess.Popen([orthanc_binary(), str(folder / "orthanc.json")],
                                        stdout=self.log, stderr=subprocess.STDOUT, cwd=folder,
                                        env={**os.environ, "TCP_NODELAY": "1"})
        self._wait_ready()

    def _wait_ready(self, limit_s: float = 120.0) -> None:
        """Poll with C-ECHO until the server answers (it starts in about a second)."""
        from pynetdicom import AE
        from pynetdicom.sop_class import Verification

        ae = AE(ae_title=STATION)
        ae.add_requested_context(Verification)
        ae.acse_timeout = ae.network_timeout = ae.connection_timeout = 2
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"Orthanc exited: {(self.folder / 'orthanc.log').read_text()[-2000:]}")
            assoc = ae.associate("127.0.0.1", self.port, ae_title=AET)
            if assoc.is_established:
                assoc.release()
                return
            time.sleep(0.2)
        self.stop()
        pytest.fail("Orthanc did not answer C-ECHO")

    def store(self, files) -> int:
        """Send DICOM files to the archive (C-STORE); returns how many it accepted."""
        import pydicom
        from pynetdicom import AE
        from pynetdicom.presentation import StoragePresentationContexts

        ae = AE(ae_title=STATION)
        ae.requested_contexts = StoragePresentationContexts[:120]
        assoc = ae.associate("127.0.0.1", self.port, ae_title=AET)
        assert assoc.is_established
        # each C-STORE goes out in several writes: without TCP_NODELAY every image waits on a delayed
        # acknowledgement (about 40 ms) before its last part leaves
        assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        accepted = 0
        try:
            for path in files:
                status = assoc.send_c_store(pydicom.dcmread(path))
                accepted += int(bool(status) and status.Status == 0)
        finally:
            assoc.release()
        return accepted

    def settings(self, path: Path, called_aet: str = AET, port: int | None = None, timeout_s: float = 10,
                 calling_aet: str = STATION, **extra) -> Path:
        """A PACS settings file naming this archive as server 'test'; ``extra`` adds settings (retrieval...)."""
        lines = [f'{key} = {json.dumps(value)}' for key, value in extra.items()]
        path.write_text(
            'default = "test"\n\n[server.test]\n'
            f'host = "127.0.0.1"\nport = {port or self.port}\ncalled_aet = "{called_aet}"\n'
            f'calling_aet = "{calling_aet}"\ntimeout_s = {timeout_s}\n' + "".join(f"{line}\n" for line in lines)
        )
        return path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()


#: stations of the strict archive: MEDIMP may query and C-MOVE (to its move port), not C-GET; GETTER may
#: query and C-GET, not C-MOVE; any other AE title is unknown to it
GETTER = "MEDIMPGET"


def strict_archive(folder: Path) -> OrthancServer:
    """An Orthanc that serves only the stations it lists (``DicomAlwaysAllow*`` off, per-station rights in
    ``DicomModalities``), as hospital archives do; ``move_port`` is where it sends MEDIMP's C-MOVEs."""
    move_port = free_port()
    server = OrthancServer(
        folder, DicomAlwaysAllowEcho=False, DicomAlwaysAllowFind=False, DicomAlwaysAllowGet=False,
        DicomAlwaysAllowMove=False,
        DicomModalities={
            "medimp": {"AET": STATION, "Host": "127.0.0.1", "Port": move_port, "AllowEcho": True,
                       "AllowFind": True, "AllowMove": True, "AllowGet": False},
            "getter": {"AET": GETTER, "Host": "127.0.0.1", "Port": free_port(), "AllowEcho": True,
                       "AllowFind": True, "AllowMove": False, "AllowGet": True},
        },
    )
    server.move_port = move_port
    return server
