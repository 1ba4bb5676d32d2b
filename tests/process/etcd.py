"""A real etcd member on loopback, with a temp data dir and free ports (spec/ha.md §4).

The HA tests skip, saying why, only where no etcd binary exists (.ci/run installs Debian's
etcd-server).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import BinaryIO

from tests.process.proc import free_port

ETCD = shutil.which("etcd")


class Etcd:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.client_port = free_port()
        self.peer_port = free_port()
        self.url = f"http://127.0.0.1:{self.client_port}"
        self.process: subprocess.Popen[bytes] | None = None
        self._log: BinaryIO | None = None

    def start(self) -> Etcd:
        assert ETCD is not None
        peer = f"http://127.0.0.1:{self.peer_port}"
        self._log = open(self.directory.parent / "etcd.log", "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                ETCD,
                "--name=t",
                f"--data-dir={self.directory}",
                f"--listen-client-urls={self.url}",
                f"--advertise-client-urls={self.url}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=t={peer}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                self.post("/v3/kv/range", {"key": "eA=="})
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("etcd did not start")

    def post(self, path: str, body: dict[str, object]) -> dict[str, object]:
        request = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=2) as answer:
            result: dict[str, object] = json.loads(answer.read())
            return result

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None
