"""Side-by-side throughput matrix: karma-trio (WAL off / on / fsync) against a baseline, one run.

Uses the C load generator `kbench` (built from ../shared/bench/kbench.c, or $KBENCH_SRC) so that
the client is not the bottleneck. Prints a table and writes JSON to benchmarks/results/.

    .venv/bin/python benchmarks/bench.py                 # full matrix
    .venv/bin/python benchmarks/bench.py --quick         # fewer requests
    .venv/bin/python benchmarks/bench.py --only wal-off,baseline
    .venv/bin/python benchmarks/bench.py --only wal-on,wal-on+scrape      # metrics overhead
    .venv/bin/python benchmarks/bench.py --only baseline,wal-off,wal-off@HEAD~1  # vs a commit
    .venv/bin/python benchmarks/bench.py --rounds 5 --workloads sum --only wal-off,wal-off@HEAD

Numbers from one machine vary run to run: compare columns of the same run, not runs, and prefer
several alternating rounds (the table shows each cell's median) to one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_BENCH = Path(os.environ.get("KARMA_SHARED_BENCH", ROOT.parent / "shared" / "bench"))
BUILD = ROOT / "benchmarks" / ".build"
RESULTS = ROOT / "benchmarks" / "results"
LOADGEN = ROOT / "benchmarks" / "loadgen.py"
KARMA = [sys.executable, "-m", "karma"]
COMMON = [
    "--bind=127.0.0.1",
    "--log=false",
    "--max-request-bytes=1048576",
    "--max-response-bytes=0",
    "--read-timeout=0",
]

SERVERS: dict[str, list[str]] = {
    "baseline": [],  # trio_min.py, filled in main()
    "wal-off": ["--wal=false"],
    "wal-on": ["--wal=true", "--wal-fsync=false"],
    "wal-fsync": ["--wal=true", "--wal-fsync=true"],
    # the same as wal-on, with a Prometheus-like scraper on /metrics every 100 ms
    "wal-on+scrape": ["--wal=true", "--wal-fsync=false"],
}
DEFAULT_SERVERS = ["baseline", "wal-off", "wal-on", "wal-fsync"]


class Scraper(threading.Thread):
    def __init__(self, port: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.port, self.interval, self.scrapes = port, interval, 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5):
                    self.scrapes += 1
            except OSError:
                pass


def workloads(single: int, batches: int) -> list[tuple[str, list[str]]]:
    return [
        ("increment", ["--op=increment", "--clients=4", f"--requests={single}", "--setup"]),
        ("sum", ["--op=sum", "--clients=4", f"--requests={single}"]),
        (
            "batch_add x1000",
            ["--op=batch_add", "--clients=4", f"--requests={batches}", "--batch=1000"],
        ),
        (
            "batch_sum x1000",
            ["--op=batch_sum", "--clients=4", f"--requests={batches}", "--batch=1000"],
        ),
        (
            "increment pipeline=32",
            ["--op=increment", "--clients=4", f"--requests={single}", "--pipeline=32"],
        ),
    ]


def build_kbench() -> Path:
    """The C load generator when its source is at hand, else benchmarks/loadgen.py."""
    source = SHARED_BENCH / "kbench.c"
    binary = BUILD / "kbench"
    if not source.exists() or shutil.which("gcc") is None:
        return LOADGEN
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        BUILD.mkdir(parents=True, exist_ok=True)
        subprocess.run(["gcc", "-O2", "-pthread", "-o", str(binary), str(source)], check=True)
    return binary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_karma(port: int, directory: Path, *flags: str) -> subprocess.Popen[bytes]:
    """karma-trio on 127.0.0.1:port, logs off, waited for until its port accepts."""
    process = subprocess.Popen(
        [
            *KARMA,
            "--bind=127.0.0.1",
            f"--port={port}",
            f"--directory={directory}",
            "--log=false",
            *flags,
        ]
    )
    wait_listening(port, process)
    return process


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not listen")


def checkout(rev: str) -> Path:
    """A worktree of `rev` (e.g. HEAD~1), so an older build runs next to this one.

    Named by the commit `rev` resolves to now: `HEAD` after a new commit is a new tree.
    """
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{rev}^{{commit}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    tree = BUILD / f"rev-{commit[:12]}"
    if not tree.exists():
        BUILD.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), commit],
            check=True,
            capture_output=True,
        )
    return tree


def run_server(
    name: str, kbench: Path, single: int, batches: int, chosen: set[str] | None = None
) -> list[dict[str, object]]:
    name = name.split("#")[0]
    mode, _, rev = name.partition("@")
    port = free_port()
    directory = Path(tempfile.mkdtemp(prefix="kbench-"))
    env = None
    if name == "baseline":
        command = [sys.executable, str(SHARED_BENCH / "trio_min.py"), str(port)]
    else:
        command = [*KARMA, *COMMON, f"--port={port}", f"--directory={directory}", *SERVERS[mode]]
    cwd = None
    if rev:
        # `python -m` puts the working directory first on sys.path, ahead of PYTHONPATH: without
        # running inside the checkout, this tree would be measured under the old name
        cwd = checkout(rev)
        env = {**os.environ, "PYTHONPATH": str(cwd)}
    scraper = None
    if name.endswith("+scrape"):
        metrics_port = free_port()
        command.append(f"--metrics-port={metrics_port}")
        scraper = Scraper(metrics_port)
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=cwd
    )
    rows: list[dict[str, object]] = []
    try:
        wait_listening(port, process)
        if scraper is not None:
            scraper.start()
        for workload, args in workloads(single, batches):
            if chosen is not None and workload not in chosen and "--setup" not in args:
                continue
            generator = [str(kbench)]
            if kbench == LOADGEN:
                generator = [sys.executable, str(LOADGEN)]
                args = [a for a in args if a != "--setup"]
            cpu_before = cpu_seconds(process.pid)
            done = subprocess.run(
                [*generator, f"--port={port}", *args],
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            try:
                result = json.loads(done.stdout.strip().splitlines()[-1])
            except (IndexError, ValueError):
                result = {"error": done.stderr.strip()[-200:]}
            requests = result.get("requests")
            if isinstance(requests, int) and requests:
                cpu = cpu_seconds(process.pid) - cpu_before
                result["server_cpu_us"] = round(cpu / requests * 1e6, 2)
            rows.append({"server": name, "workload": workload, **result})
    finally:
        if scraper is not None:
            scraper.stop.set()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(directory, ignore_errors=True)
    return rows


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used (all its threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # after the command name: state is field 3, utime 14 and stime 15 (1-based, man proc)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rate(row: dict[str, object]) -> float:
    for field in ("items_per_sec", "ops_per_sec"):
        value = row.get(field)
        if isinstance(value, int | float) and value:
            return float(value)
    return 0.0


def median_row(rows: list[dict[str, object]], server: str, workload: str) -> dict[str, object]:
    """The run of `server` on `workload` with the median rate, over its rounds."""
    runs = sorted(
        (r for r in rows if r["server"] == server and r["workload"] == workload), key=rate
    )
    return runs[len(runs) // 2] if runs else {}


def print_table(rows: list[dict[str, object]], servers: list[str]) -> None:
    names = list(dict.fromkeys(str(r["workload"]) for r in rows))
    print(f"{'workload':24}" + "".join(f"{s:>16}" for s in servers))
    for workload in names:
        cells = []
        for server in servers:
            row = median_row(rows, server, workload)
            errors = row.get("errors", 0)
            mark = "!" if errors else ""
            cells.append(f"{rate(row):>15,.0f}{mark or ' '}")
        print(f"{workload:24}" + "".join(cells))
    print("(ops/s, or items/s for batches; median of the rounds; ! = some answers were errors)")
    print()
    reference = servers[0]
    print(f"{'ratio to ' + reference:24}" + "".join(f"{s:>16}" for s in servers))
    for workload in names:
        base = rate(median_row(rows, reference, workload))
        cells = []
        for server in servers:
            row = median_row(rows, server, workload)
            cells.append(f"{rate(row) / base:>15.2f}x" if base else f"{'-':>16}")
        print(f"{workload:24}" + "".join(cells))
    print()
    print(f"{'server CPU us/request':24}" + "".join(f"{s:>16}" for s in servers))
    for workload in names:
        cells = []
        for server in servers:
            runs = sorted(
                float(r.get("server_cpu_us", 0))  # type: ignore[arg-type]
                for r in rows
                if r["server"] == server and r["workload"] == workload
            )
            cells.append(f"{runs[len(runs) // 2]:>16.1f}" if runs else f"{'-':>16}")
        print(f"{workload:24}" + "".join(cells))
    print("(CPU time of the server process per request, all threads: less noisy than ops/s)")
    print()
    print(f"{'p50/p95/p99 ms':24}" + "".join(f"{s:>16}" for s in servers))
    for workload in names[:2]:
        cells = []
        for server in servers:
            row = median_row(rows, server, workload)
            cells.append(
                f" {row.get('p50_ms', 0)}/{row.get('p95_ms', 0)}/{row.get('p99_ms', 0)}".rjust(16)
            )
        print(f"{workload:24}" + "".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests per workload")
    parser.add_argument("--only", default="", help="comma-separated servers to run")
    parser.add_argument(
        "--workloads", default="", help="comma-separated workloads (names as in the table)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every server this many times, alternating; the table shows medians",
    )
    args = parser.parse_args()
    single, batches = (3000, 40) if args.quick else (10000, 100)
    servers = args.only.split(",") if args.only else DEFAULT_SERVERS
    kbench = build_kbench()
    rows: list[dict[str, object]] = []
    labels: list[str] = []
    seen: dict[str, int] = {}
    for server in servers:
        seen[server] = seen.get(server, 0) + 1
        labels.append(server if seen[server] == 1 else f"{server}#{seen[server]}")
    chosen = set(args.workloads.split(",")) if args.workloads else None
    for round_ in range(1, args.rounds + 1):
        for server, label in zip(servers, labels, strict=True):
            rows.extend(
                {**row, "server": label, "round": round_}
                for row in run_server(server, kbench, single, batches, chosen)
            )
    print_table(rows, labels)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"bench-{stamp}.json"
    out.write_text(json.dumps(rows, indent=1))
    print(json.dumps(rows))
    print(f"\nJSON written to {out}")


if __name__ == "__main__":
    main()
