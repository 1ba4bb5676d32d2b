"""A sharded cluster on loopback for the router's process tests: etcd members, one karma-trio
node per group (each an HA group of one, on its own leader key), a shard map in etcd, and
`karma-trio router` in front, all real processes."""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from karma.cluster.shardmap import ShardMap, even_split, map_key
from tests.process.etcd import EtcdCluster
from tests.process.ha_group import B1, call
from tests.process.proc import Client, Proc, free_port

__all__ = ["B1", "Client", "Cluster", "RouterProc", "call"]


def group_node(directory: Path, etcd_url: str, group: str, *flags: str) -> Proc:
    return Proc(
        directory,
        f"--ha-etcd={etcd_url}",
        f"--ha-cluster={group}",
        f"--ha-node={group}-n1",
        "--ha-ttl=3",
        "--ha-loop-wait=0.5",
        "--wal-fsync=false",
        "--log=false",
        *flags,
    )


class RouterProc:
    def __init__(self, directory: Path, etcd_url: str, cluster: str, *flags: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.metrics_port = free_port()
        self.args = [
            sys.executable,
            "-m",
            "karma",
            "router",
            f"--etcd={etcd_url}",
            f"--cluster={cluster}",
            "--bind=127.0.0.1",
            f"--port={self.port}",
            f"--metrics-port={self.metrics_port}",
            "--group-timeout-s=3",
            *flags,
        ]
        self.log_path = directory / "router.log"
        self._log: BinaryIO | None = None
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RouterProc:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in close()
        self.process = subprocess.Popen(
            self.args, stdout=subprocess.DEVNULL, stderr=self._log, start_new_session=True
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"router exited: {self.log_path.read_text()[-800:]}")
            try:
                client = Client(self.port)
            except OSError:
                time.sleep(0.05)
                continue
            client.close()
            return self
        raise RuntimeError("router did not listen")

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None


class Cluster:
    """`groups` single-node groups in cluster `name`, a map splitting the slots evenly, a router."""

    def __init__(
        self,
        directory: Path,
        etcd: EtcdCluster,
        name: str,
        groups: Sequence[str],
        node_flags: Sequence[str] = (),
        router_flags: Sequence[str] = (),
    ) -> None:
        self.directory = directory
        self.etcd = etcd
        self.name = name
        self.groups = list(groups)
        self.nodes = {g: group_node(directory / g, etcd.url, g, *node_flags) for g in self.groups}
        self.router = RouterProc(directory / "router", etcd.url, name, *router_flags)
        self.map = even_split(self.groups)
        tokens = [f.split("=", 1)[1] for f in node_flags if f.startswith("--auth-token=")]
        #: what a probe of a node carries when the case gives the nodes a token
        self.token: dict[str, str] = {"token": tokens[0]} if tokens else {}

    def start(self) -> Cluster:
        for proc in self.nodes.values():
            proc.start(wait=False)
        for proc in self.nodes.values():
            proc.wait_listening()
        self.write_map(self.map)
        for group in self.groups:
            self.wait_leader(group)
        self.router.start()
        self.wait_router()
        return self

    def write_map(self, shardmap: ShardMap) -> None:
        put = {
            "key": base64.b64encode(map_key(self.name).encode()).decode(),
            "value": base64.b64encode(shardmap.to_json()).decode(),
        }
        self.etcd.members[0].post("/v3/kv/put", put)

    def wait_leader(self, group: str, timeout: float = 15) -> None:
        """Until the group's node leads (read from its topology: no write to see it)."""
        proc = self.nodes[group]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = call(proc, "cluster.topology", **self.token)
            response = answer.get("response")
            if isinstance(response, dict) and response.get("role") == "master":
                return
            time.sleep(0.1)
        raise AssertionError(f"group {group} has no leader after {timeout} s")

    def wait_router(self, timeout: float = 15) -> None:
        """Until the router knows every group's leader."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = call_router(self, "cluster.topology", **self.token)
            response = answer["response"]
            groups = response.get("groups") if isinstance(response, dict) else None
            if groups and all(groups.get(g) for g in self.groups):
                return
            time.sleep(0.1)
        raise AssertionError("the router did not learn every leader")

    def restart_nodes(self) -> None:
        for proc in self.nodes.values():
            proc.kill()
        for proc in self.nodes.values():
            proc.start(same_port=True, wait=False)
        for proc in self.nodes.values():
            proc.wait_listening()
        for group in self.groups:
            self.wait_leader(group, timeout=20)
        self.wait_router()

    def close(self) -> None:
        self.router.close()
        for proc in self.nodes.values():
            proc.close()


def call_router(cluster: Cluster, op: str, **fields: object) -> dict[str, object]:
    client = Client(cluster.router.port)
    try:
        return client.call(op, **fields)
    finally:
        client.close()
