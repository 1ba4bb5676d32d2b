"""The group under test: etcd (three members) and three karma-trio nodes on loopback.

The nodes run with test_ha.py's flags (ttl 3 s, loop_wait 1 s, polls every 100 ms, no fsync: a
SIGKILLed process loses nothing the kernel has) plus `--log-level=debug`, so each logs
`ha.renewed` (term, deadline_unix) on every lease renewal while it leads. Each node reads its
own failpoints file (`KARMA_FAILPOINTS`, karma/storage/failpoints.py): the nemesis slows its
WAL flushes through it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
from pathlib import Path
from typing import Any

from tests.process.etcd import Etcd, EtcdCluster
from tests.process.jepsen.checker import LogEvent, parse_log
from tests.process.proc import Proc

TTL = 3
LOOP_WAIT = 1.0
POLL_MS = 100
REPLICATED_TIMEOUT_MS = 1500
BUCKET = 20260501
SERIES = "s"
NODES = ("n0", "n1", "n2")


class Group:
    def __init__(self, root: Path, *, etcd_members: int = 3) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.etcd = EtcdCluster(root / "etcd", size=etcd_members)
        self.root = root
        self.nodes: dict[str, Proc] = {}
        #: nodes stopped with SIGSTOP (not asked anything until SIGCONT)
        self.paused: set[str] = set()
        #: nodes SIGKILLed and not restarted yet
        self.dead: set[str] = set()

    def start(self) -> None:
        self.etcd.start()
        for name in NODES:
            self.nodes[name] = Proc(
                self.root / name,
                f"--ha-etcd={self.etcd.url}",
                "--ha-cluster=jepsen",
                f"--ha-node={name}",
                f"--ha-ttl={TTL}",
                f"--ha-loop-wait={LOOP_WAIT}",
                f"--replication-poll-interval-ms={POLL_MS}",
                "--wal-fsync=false",
                # below the clients' 2 s timeout: a replicated write that cannot gather its
                # replica answers replication_timeout instead of leaving the client guessing
                f"--replicated-timeout-ms={REPLICATED_TIMEOUT_MS}",
                "--log-level=debug",
                env={"KARMA_FAILPOINTS": str(self.failpoints_path(name))},
            )
            self.failpoints(name, {})
        for proc in self.nodes.values():
            proc.start()

    def close(self) -> None:
        """Kill every node (SIGKILL works on stopped ones too), then stop etcd."""
        try:
            for proc in self.nodes.values():
                proc.close()
        finally:
            self.etcd.stop()

    def discard_data(self) -> None:
        """After a passing run: the data directories go (etcd preallocates 64 MB of WAL per
        member), the logs beside them stay."""
        for directory in [m.directory for m in self.etcd.members] + [
            p.directory for p in self.nodes.values()
        ]:
            shutil.rmtree(directory, ignore_errors=True)

    # --- addresses ----------------------------------------------------------------------------
    def ports(self) -> dict[str, int]:
        return {name: proc.port for name, proc in self.nodes.items()}

    def up(self) -> list[str]:
        return [n for n in self.nodes if n not in self.paused and n not in self.dead]

    # --- faults -------------------------------------------------------------------------------
    def kill(self, name: str) -> None:
        self.nodes[name].kill()
        self.dead.add(name)

    def restart(self, name: str) -> None:
        self.nodes[name].start(same_port=True)
        self.dead.discard(name)

    def pause(self, name: str) -> None:
        self.nodes[name].signal(signal.SIGSTOP)
        self.paused.add(name)

    def resume(self, name: str) -> None:
        self.nodes[name].signal(signal.SIGCONT)
        self.paused.discard(name)

    def failpoints_path(self, name: str) -> Path:
        return self.root / f"{name}-failpoints.json"

    def failpoints(self, name: str, faults: dict[str, Any]) -> None:
        """Replace node `name`'s failpoints (atomically: it re-reads the file when its mtime or
        size changes); `{}` turns them off."""
        path = self.failpoints_path(name)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(faults))
        os.replace(tmp, path)

    def etcd_members(self) -> list[Etcd]:
        return list(self.etcd.members)

    # --- reading ------------------------------------------------------------------------------
    def call(
        self, name: str, op: str, timeout: float = 2.0, **fields: Any
    ) -> dict[str, Any] | None:
        """One request on a fresh connection; None when the node does not answer in time."""
        try:
            with socket.create_connection(("127.0.0.1", self.nodes[name].port), timeout) as sock:
                sock.sendall(json.dumps({"v": 2, "op": op, **fields}).encode() + b"\n")
                data = b""
                while not data.endswith(b"\n"):
                    chunk = sock.recv(1 << 16)
                    if not chunk:
                        return None
                    data += chunk
        except OSError:
            return None
        answer: dict[str, Any] = json.loads(data)
        return answer

    def master(self) -> str | None:
        """The node that says it is master (leading and before its deadline), if one does."""
        for name in self.up():
            answer = self.call(name, "cluster.topology", timeout=1.0)
            if answer is not None and answer["success"] and answer["response"]["role"] == "master":
                return name
        return None

    def roles(self) -> dict[str, str]:
        """What each node says of itself and its leader (for a stuck run's message)."""
        said = {}
        for name in self.nodes:
            if name in self.dead or name in self.paused:
                said[name] = "dead" if name in self.dead else "paused"
                continue
            answer = self.call(name, "cluster.topology", timeout=1.0)
            if answer is None or not answer["success"]:
                said[name] = f"no answer ({answer})"
                continue
            t = answer["response"]
            leader = t["leader"]["node"] if t.get("leader") else None
            said[name] = f"{t['role']}, term {t['term']}, leader {leader}"
        return said

    def tails(self, lines: int = 12) -> str:
        """The last info-or-worse log lines of each node (a failed run's story)."""
        out = []
        for name, proc in self.nodes.items():
            kept = [x for x in proc.stderr().splitlines() if '"level":"debug"' not in x]
            out += [f"--- {name}", *kept[-lines:]]
        return "\n".join(out)

    def sums(self, name: str, keys: list[int]) -> dict[int, int] | None:
        found = {}
        for key in keys:
            answer = self.call(
                name, "counter.sum", series=SERIES, key=key, from_day=BUCKET, to_day=BUCKET
            )
            if answer is None:
                return None
            if answer.get("error_code") == "not_found":
                found[key] = 0  # nothing of this series or key here (yet)
            elif answer.get("success"):
                found[key] = int(answer["response"])
            else:
                return None
        return found

    def histories(self) -> dict[str, list[list[object]]] | None:
        """Each node's term history (`karma.history`); None when no node has one."""
        found = {}
        for name, proc in self.nodes.items():
            path = proc.directory / "karma.history"
            found[name] = json.loads(path.read_text()) if path.exists() else []
        return found if any(found.values()) else None

    def logs(self) -> list[LogEvent]:
        events = []
        for name, proc in self.nodes.items():
            events += parse_log(name, proc.stderr())
        return events
