"""Scale-out: one group against two single-node groups of a sharded cluster, in one run.

Starts one etcd member and three karma-trio nodes (WAL on): `one` is the only group of
cluster `bench1`; `g1` and `g2` split cluster `bench2` evenly; `plain` is a node without
`--cluster`, for the cost of the owner check. Each configuration is driven by `kslot`
(benchmarks/kslot.c, our slot-aware load generator: only keys whose slot the driven group
owns), one kslot per group, all started together; rounds alternate between configurations.
Prints a table (median of the rounds) and writes JSON to benchmarks/results/.

    .venv/bin/python benchmarks/cluster_bench.py                       # 3 rounds, defaults
    .venv/bin/python benchmarks/cluster_bench.py --rounds 5 --requests 50000
    .venv/bin/python benchmarks/cluster_bench.py --quick               # a smoke run

Each group gets `--clients` connections with `--pipeline` requests in flight on each (defaults
4 and 8: 32 in flight per group, as bench.py's `increment pipeline=32` keeps per server is 4 x
32 = 128; pass --pipeline 32 for that). Needs `etcd` and `gcc` on PATH.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench import BUILD, KARMA, RESULTS, ROOT, cpu_seconds, free_port, wait_listening

SOURCE = ROOT / "benchmarks" / "kslot.c"
WAL_ON = ["--wal=true", "--wal-fsync=false"]
COMMON = ["--bind=127.0.0.1", "--log=false", "--read-timeout=0", "--ha-ttl=10"]


def build_kslot() -> Path:
    binary = BUILD / "kslot"
    if not binary.exists() or binary.stat().st_mtime < SOURCE.stat().st_mtime:
        BUILD.mkdir(parents=True, exist_ok=True)
        subprocess.run(["gcc", "-O2", "-pthread", "-o", str(binary), str(SOURCE)], check=True)
    return binary


class Etcd:
    def __init__(self, directory: Path) -> None:
        self.port, peer = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(directory / "etcd.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                "etcd",
                "--name=b",
                f"--data-dir={directory / 'etcd'}",
                f"--listen-client-urls={self.url}",
                f"--advertise-client-urls={self.url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=b=http://127.0.0.1:{peer}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                request = urllib.request.Request(
                    self.url + "/v3/kv/range", data=b'{"key":"eA=="}', method="POST"
                )
                with urllib.request.urlopen(request, timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("etcd did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        self.log.close()


class Node:
    def __init__(self, directory: Path, name: str, *flags: str) -> None:
        self.name = name
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                *KARMA,
                *COMMON,
                f"--port={self.port}",
                f"--directory={directory / name}",
                *WAL_ON,
                *flags,
            ]
        )
        wait_listening(self.port, self.process)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def cluster_node(directory: Path, etcd: Etcd, cluster: str, group: str) -> Node:
    return Node(
        directory,
        group,
        f"--ha-etcd={etcd.url}",
        f"--cluster={cluster}",
        f"--group={group}",
        f"--ha-node={group}",
    )


def create_map(etcd: Etcd, cluster: str, groups: list[str]) -> dict[str, list[list[int]]]:
    """`karma-trio cluster create`, then each group's slot ranges from `cluster show --json`."""
    base = [*KARMA, "cluster"]
    where = [f"--etcd={etcd.url}", f"--cluster={cluster}"]
    subprocess.run([*base, "create", *where, *groups], check=True, capture_output=True)
    shown = subprocess.run([*base, "show", *where, "--json"], check=True, capture_output=True)
    return {row["group"]: row["ranges"] for row in json.loads(shown.stdout)["groups"]}


def wait_serving(node: Node, kslot: Path, slots: str) -> None:
    """Until the node took its map and its leadership: one write of its own slots succeeds."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done = subprocess.run(
            [str(kslot), f"--port={node.port}", f"--slots={slots}", "--clients=1",
             "--pipeline=1", "--requests=1", "--setup"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"{node.name} does not serve its slots")


def drive(
    kslot: Path, targets: list[tuple[Node, str]], args: argparse.Namespace
) -> dict[str, object]:
    """One kslot per (node, slot ranges), all at once; the aggregate rate over the longest."""
    cpu_before = [cpu_seconds(node.process.pid) for node, _ in targets]
    runs = [
        subprocess.Popen(
            [
                str(kslot),
                f"--port={node.port}",
                f"--slots={slots}",
                f"--clients={args.clients}",
                f"--pipeline={args.pipeline}",
                f"--requests={args.requests}",
                f"--keys={args.keys}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for node, slots in targets
    ]
    parts = []
    for run in runs:
        out, err = run.communicate(timeout=900)
        try:
            parts.append(json.loads(out.strip().splitlines()[-1]))
        except (IndexError, ValueError):
            return {"error": err.strip()[-300:]}
    requests = sum(int(p["requests"]) for p in parts)
    seconds = max(float(p["seconds"]) for p in parts)
    cpu = sum(
        cpu_seconds(node.process.pid) - before
        for (node, _), before in zip(targets, cpu_before, strict=True)
    )
    return {
        "requests": requests,
        "seconds": round(seconds, 4),
        "ops_per_sec": round(requests / seconds, 1),
        "per_group_ops_per_sec": [p["ops_per_sec"] for p in parts],
        "errors": sum(int(p["errors"]) for p in parts),
        "server_cpu_us": round(cpu / requests * 1e6, 2),
    }


def ranges_text(ranges: list[list[int]]) -> str:
    return ",".join(f"{first}-{last}" for first, last in ranges)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=40000, help="per connection")
    parser.add_argument("--clients", type=int, default=4, help="connections per group")
    parser.add_argument("--pipeline", type=int, default=8, help="in flight per connection")
    parser.add_argument("--keys", type=int, default=10000, help="distinct keys per group")
    parser.add_argument("--quick", action="store_true", help="1 round, 2000 requests")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.requests = 1, 2000
    if shutil.which("etcd") is None or shutil.which("gcc") is None:
        raise SystemExit("needs etcd and gcc on PATH")
    kslot = build_kslot()
    directory = Path(tempfile.mkdtemp(prefix="cluster-bench-"))
    etcd = Etcd(directory)
    nodes: list[Node] = []
    try:
        one = cluster_node(directory, etcd, "bench1", "one")
        g1 = cluster_node(directory, etcd, "bench2", "g1")
        g2 = cluster_node(directory, etcd, "bench2", "g2")
        plain = Node(directory, "plain")
        nodes = [one, g1, g2, plain]
        create_map(etcd, "bench1", ["one"])
        split = create_map(etcd, "bench2", ["g1", "g2"])
        configs: dict[str, list[tuple[Node, str]]] = {
            "plain (no --cluster)": [(plain, "0-16383")],
            "1 group": [(one, "0-16383")],
            "2 groups": [(g1, ranges_text(split["g1"])), (g2, ranges_text(split["g2"]))],
        }
        for targets in configs.values():
            for node, slots in targets:
                wait_serving(node, kslot, slots)
        results: dict[str, list[dict[str, object]]] = {name: [] for name in configs}
        for number in range(args.rounds):
            for name, targets in configs.items():
                row = drive(kslot, targets, args)
                results[name].append(row)
                print(f"round {number + 1} {name}: {row}", file=sys.stderr)
    finally:
        for node in nodes:
            node.stop()
        etcd.stop()
        shutil.rmtree(directory, ignore_errors=True)
    report(results, args)


def median(rows: list[dict[str, object]], field: str) -> float:
    values = [float(v) for row in rows if isinstance(v := row.get(field), int | float)]
    return statistics.median(values) if values else 0.0


def report(results: dict[str, list[dict[str, object]]], args: argparse.Namespace) -> None:
    base = median(results["1 group"], "ops_per_sec")
    in_flight = args.clients * args.pipeline
    print(
        f"\nincrement, WAL on (no fsync), {in_flight} in flight per group, {args.rounds}"
        " round(s), median\n"
    )
    print("| configuration | ops/s | x 1 group | server CPU µs/req | errors |")
    print("|---|---:|---:|---:|---:|")
    for name, rows in results.items():
        rate = median(rows, "ops_per_sec")
        ratio = rate / base if base else 0.0
        errors = sum(int(e) for row in rows if isinstance(e := row.get("errors"), int))
        cpu = median(rows, "server_cpu_us")
        print(f"| {name} | {rate:,.0f} | {ratio:.2f} | {cpu:.1f} | {errors} |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"cluster-bench-{stamp}.json"
    out.write_text(json.dumps({"args": vars(args), "results": results}, indent=2) + "\n")
    print(f"\nJSON: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
