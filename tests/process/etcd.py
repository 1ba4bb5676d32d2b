"""Real etcd members on loopback, with temp data dirs and free ports (spec/ha.md §4).

`Etcd` is one member (alone, or one of an `EtcdCluster`); `EtcdCluster` starts three (or
`size`) members that form one cluster, for the etcd faults: kill the leader, lose quorum.

The HA tests skip, saying why, only where no etcd binary exists (.ci/run installs Debian's
etcd-server).
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any, BinaryIO

from tests.process.proc import free_port
from tests.tls_certs import Certs

ETCD = shutil.which("etcd")


class Etcd:
    def __init__(self, directory: Path, name: str = "t", tls: Certs | None = None) -> None:
        self.directory = directory
        self.name = name
        #: set: clients reach it over https and must present a certificate of `tls.ca`
        self.tls = tls
        self.client_port = free_port()
        self.peer_port = free_port()
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.client_port}"
        self.peer_url = f"http://127.0.0.1:{self.peer_port}"
        #: `name=peer_url,...` of every member (set by EtcdCluster; alone: just this one)
        self.initial_cluster = f"{name}={self.peer_url}"
        self.extra_flags: list[str] = []
        if tls is not None:
            self.extra_flags += [
                f"--cert-file={tls.cert}",
                f"--key-file={tls.key}",
                f"--trusted-ca-file={tls.ca_file}",
                "--client-cert-auth",
            ]
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = directory.parent / f"{directory.name}.log"
        self._log: BinaryIO | None = None

    def start(self, *, wait: bool = True) -> Etcd:
        """Start (or start again, with the same data dir and ports); wait until it answers.

        On a restart etcd reads its membership from the data dir and ignores the
        --initial-cluster flags, so the same flags serve a first start and a rejoin.
        """
        assert ETCD is not None
        self._close_log()
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()/kill()
        self.process = subprocess.Popen(
            [
                ETCD,
                f"--name={self.name}",
                f"--data-dir={self.directory}",
                f"--listen-client-urls={self.url}",
                f"--advertise-client-urls={self.url}",
                f"--listen-peer-urls={self.peer_url}",
                f"--initial-advertise-peer-urls={self.peer_url}",
                f"--initial-cluster={self.initial_cluster}",
                "--initial-cluster-state=new",
                "--initial-cluster-token=karma-test",
                *self.extra_flags,
                "--logger=zap",  # timestamps in ms, to line the log up with a test's
                "--log-outputs=stderr",
            ],
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            start_new_session=True,
        )
        if wait:
            self.wait_ready()
        return self

    def restart(self) -> Etcd:
        """Start a killed or stopped member again; returns once it serves linearizable reads
        (for a cluster member: it rejoined and there is a leader)."""
        self.start()
        return self

    def wait_ready(self, timeout: float = 20) -> None:
        """Until a linearizable range answers (it needs a leader, so a quorum)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"etcd {self.name} exited {self.process.returncode}")
            try:
                answer = self.post("/v3/kv/range", {"key": "eA=="})
                if "header" in answer:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"etcd {self.name} did not answer within {timeout} s")

    def post(self, path: str, body: dict[str, object], timeout: float = 2) -> dict[str, Any]:
        request = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(), method="POST"
        )
        context = None
        if self.tls is not None:
            context = ssl.create_default_context(cafile=self.tls.ca_file)
            context.load_cert_chain(self.tls.client_cert, self.tls.client_key)
        with urllib.request.urlopen(request, timeout=timeout, context=context) as answer:
            result: dict[str, Any] = json.loads(answer.read())
            return result

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL (no clean shutdown: what a crash or a power loss looks like to the others)."""
        if self.alive():
            assert self.process is not None
            self.process.kill()
            self.process.wait(timeout=10)
        self._close_log()

    def stop(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class EtcdCluster:
    """`size` members forming one etcd cluster on loopback, data dirs under `directory`.

    Elections are faster than etcd's defaults (heartbeat 100 ms, election timeout 1000 ms:
    1.1-2.2 s from a leader's SIGKILL to a new leader, measured here): the HA tests' ttl 3 s
    leaves a master only ttl - margin - loop_wait = 1.25 s between its last keepalive before
    an etcd leader dies and its deadline. With 50/500 ms an election took 0.47-0.76 s. The
    rule is the operator's too (docs/ha.md): etcd's election must fit in that window.
    """

    def __init__(self, directory: Path, size: int = 3, *, election_timeout_ms: int = 500) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.members = [Etcd(directory / f"e{i}", name=f"e{i}") for i in range(size)]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for member in self.members:
            member.initial_cluster = initial
            member.extra_flags = [
                f"--heartbeat-interval={election_timeout_ms // 10}",
                f"--election-timeout={election_timeout_ms}",
            ]
        #: every client URL, comma-joined: the value for --ha-etcd=
        self.url = ",".join(m.url for m in self.members)

    def start(self, timeout: float = 30) -> EtcdCluster:
        for member in self.members:  # none can answer before a quorum is up: start all first
            member.start(wait=False)
        try:
            for member in self.members:
                member.wait_ready(timeout)
            self.leader()
        except BaseException:
            self.stop()
            raise
        return self

    def leader(self, timeout: float = 10) -> Etcd:
        """The member that says it is the leader (/v3/maintenance/status: member_id == leader)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for member in self.members:
                if not member.alive():
                    continue
                try:
                    status = member.post("/v3/maintenance/status", {}, timeout=1)
                except OSError:
                    continue
                if status.get("leader") and status["header"]["member_id"] == status["leader"]:
                    return member
            time.sleep(0.05)
        raise RuntimeError(f"no etcd leader within {timeout} s")

    def stop(self) -> None:
        for member in self.members:
            member.stop()
