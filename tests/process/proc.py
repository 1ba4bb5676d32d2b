"""karma-trio as a real subprocess on a free loopback port."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Proc:
    def __init__(
        self,
        directory: Path,
        *flags: str,
        max_files: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.directory = directory
        self.flags = list(flags)
        #: variables added to the server's environment (e.g. KARMA_FAILPOINTS), every start
        self.env = env or {}
        self.max_files = max_files  # RLIMIT_NOFILE of the server, to run it out of descriptors
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = directory.parent / f"{directory.name}-server.log"
        self._log: BinaryIO | None = None
        #: a TLS node (--tls-cert): what test clients wrap their connections in
        self.client_tls: ssl.SSLContext | None = None

    def start(self, *extra: str, wait: bool = True, same_port: bool = False) -> Proc:
        if not (same_port and self.port):
            self.port = free_port()
        args = [
            sys.executable,
            "-m",
            "karma",
            "--bind=127.0.0.1",
            f"--port={self.port}",
            f"--directory={self.directory}",
            *self.flags,
            *extra,
        ]
        self.close()
        # stderr goes to a file: a pipe nobody reads would block a chatty server
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in close()
        self.process = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            start_new_session=True,
            env={**os.environ, **self.env} if self.env else None,
            preexec_fn=self._limit_files if self.max_files else None,
        )
        if wait:
            self.wait_listening()
        return self

    def _limit_files(self) -> None:
        assert self.max_files is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.max_files, self.max_files))

    def status(self, field: str) -> int:
        """A `kB` field of /proc/PID/status (VmRSS, VmHWM), in bytes."""
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name == field:
                return int(value.split()[0]) * 1024
        raise KeyError(field)

    def wait_listening(self, timeout: float = 20) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"exited {self.process.returncode}: {self.stderr()[-800:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("server did not listen")

    def stderr(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, signum: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signum)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def wait(self, timeout: float = 20) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()

    def close(self) -> None:
        self.kill()
        if self._log is not None:
            self._log.close()
            self._log = None


class Client:
    def __init__(self, port: int, tls: ssl.SSLContext | None = None) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname="127.0.0.1")
        self.sock = sock
        self.buffer = b""

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        self.sock.sendall(json.dumps({"v": 2, "op": op, **fields}).encode() + b"\n")
        return self.reply()

    def reply(self) -> dict[str, Any]:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("closed")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        self.sock.close()
