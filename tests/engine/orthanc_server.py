"""A real Orthanc (with its DICOMweb plugin) on a free loopback port, for tests.

Storage and index live in a folder the test owns; the DICOM network port, remote access and
(unless ``users`` is given) authentication are off, so nothing but this machine's loopback
traffic reaches it. Starting waits at most ``START_TIMEOUT`` seconds.
"""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import requests

ORTHANC = shutil.which("Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
MISSING = (None if ORTHANC and DICOMWEB_PLUGIN.is_file() else
           "Orthanc with its DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb)")
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OrthancServer:
    def __init__(self, folder: Path, users: dict[str, str] | None = None, port: int | None = None):
        self.folder = Path(folder)
        self.port = port or free_port()
        self.users = users
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def auth(self):
        return next(iter(self.users.items())) if self.users else None

    def start(self) -> "OrthancServer":
        (self.folder / "db").mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "dcx-test", "StorageDirectory": str(self.folder / "db"), "IndexDirectory": str(self.folder / "db"),
            "HttpPort": self.port,  # Orthanc 1.10 has no bind address; RemoteAccessAllowed: loopback only
            "DicomServerEnabled": False, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(self.users), "RegisteredUsers": self.users or {},
            "Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        path = self.folder / "orthanc.json"
        path.write_text(json.dumps(config))
        log = open(self.folder / "orthanc.log", "ab")
        self.process = subprocess.Popen([ORTHANC, str(path)], stdout=log, stderr=log, cwd=self.folder)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited ({self.process.returncode}): "
                                   + (self.folder / "orthanc.log").read_text()[-2000:])
            try:
                if requests.get(f"{self.url}/system", auth=self.auth, timeout=1).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {START_TIMEOUT} s")

    def stop(self, kill: bool = False) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=15)

    def upload(self, path: Path) -> bool:
        """POST one file to /instances; True when Orthanc stored it."""
        response = requests.post(f"{self.url}/instances", data=Path(path).read_bytes(), auth=self.auth, timeout=30)
        return response.status_code == 200

    def get(self, path: str, **kwargs):
        response = requests.get(f"{self.url}{path}", auth=self.auth, timeout=30, **kwargs)
        response.raise_for_status()
        return response.json()
