"""Side-by-side throughput: karma-trio against a previous commit, trio_min and karma 1.0, one run.

Uses the C load generator `kbench` (built from ../shared/bench/kbench.c, or $KBENCH_SRC) so that
the client is not the bottleneck. Prints a table and writes JSON to benchmarks/results/.

    .venv/bin/python benchmarks/bench.py --rounds 3                        # issue 14's table
    .venv/bin/python benchmarks/bench.py --rounds 3 --karma1 /path/to/karma --previous main
    .venv/bin/python benchmarks/bench.py --quick         # fewer requests
    .venv/bin/python benchmarks/bench.py --only wal-off,trio_min            # the full matrix
    .venv/bin/python benchmarks/bench.py --only wal-on,wal-on+scrape      # metrics overhead
    .venv/bin/python benchmarks/bench.py --only trio_min,wal-off,wal-off@HEAD~1  # vs a commit
    .venv/bin/python benchmarks/bench.py --only wal-fsync,karma1:wal-fsync --karma1 PATH
    .venv/bin/python benchmarks/bench.py --rounds 5 --workloads sum --only wal-off,wal-off@HEAD

Server names: `trio_min` (../shared/bench/trio_min.py; `baseline` is the old name), `MODE` (this
tree), `MODE@REV` (a git worktree of REV), `karma1:MODE` (the karma 1.0 binary given with
`--karma1`; never built or fetched here). MODE is wal-off, wal-on, wal-fsync or wal-on+scrape.

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
from dataclasses import dataclass
from pathlib import Path

import issue_table

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
    "wal-off": ["--wal=false"],
    "wal-on": ["--wal=true", "--wal-fsync=false"],
    "wal-fsync": ["--wal=true", "--wal-fsync=true"],
    # the same as wal-on, with a Prometheus-like scraper on /metrics every 100 ms
    "wal-on+scrape": ["--wal=true", "--wal-fsync=false"],
}
DEFAULT_SERVERS = ["trio_min", "wal-off", "wal-on", "wal-fsync"]
TRIO_MIN = ("trio_min", "baseline")  # the second: its name before issue 14


@dataclass(frozen=True)
class Options:
    kbench: Path
    single: int  # requests per client, single-op workloads
    batches: int  # requests per client, batch workloads
    karma1: Path | None = None  # a karma 1.0 binary, for `karma1:MODE` servers


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
        # issue 25: keyed writes and limit decisions beside plain increments, two shapes
        *(
            (
                f"{op} pipeline=32",
                [f"--op={op}", "--clients=4", f"--requests={single}", "--pipeline=32"],
            )
            for op in KEYED
        ),
        *(
            (f"{op} 32 clients", [f"--op={op}", "--clients=32", f"--requests={single // 8}"])
            for op in ("increment", *KEYED)
        ),
    ]


#: kbench ops that send a unique idempotency key per request ("c<client>-<n>", "i<client>-<n>")
KEYED = ("increment_key", "consume")


def forget_keys(port: int) -> None:
    """Drop every idempotency record, so the next keyed workload's keys (kbench numbers them
    per client from 0 again) are new, not replays of the previous workload's."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(b'{"v":2,"op":"idempotency.prune","before":4102444800}\n')
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk


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


def server_command(
    name: str, port: int, directory: Path, options: Options
) -> tuple[list[str], Path | None, dict[str, str] | None]:
    """(command, working directory, environment) that starts server `name` on `port`."""
    if name in TRIO_MIN:
        return [sys.executable, str(SHARED_BENCH / "trio_min.py"), str(port)], None, None
    flags = [*COMMON, f"--port={port}", f"--directory={directory}"]
    if name.startswith("karma1:"):
        if options.karma1 is None:
            raise SystemExit(f"{name}: give the karma 1.0 binary with --karma1 PATH")
        return [str(options.karma1), *flags, *SERVERS[name.removeprefix("karma1:")]], None, None
    mode, _, rev = name.partition("@")
    if not rev:
        return [*KARMA, *flags, *SERVERS[mode]], None, None
    # `python -m` puts the working directory first on sys.path, ahead of PYTHONPATH: without
    # running inside the checkout, this tree would be measured under the old name
    tree = checkout(rev)
    return [*KARMA, *flags, *SERVERS[mode]], tree, {**os.environ, "PYTHONPATH": str(tree)}


def run_server(
    name: str, options: Options, chosen: set[str] | None = None
) -> list[dict[str, object]]:
    """Start `name`, run the workloads (all, or those in `chosen`) in order, stop it."""
    name = name.split("#")[0]
    port = free_port()
    directory = Path(tempfile.mkdtemp(prefix="kbench-"))
    command, cwd, env = server_command(name, port, directory, options)
    scraper = None
    if name.endswith("+scrape"):
        metrics_port = free_port()
        command.append(f"--metrics-port={metrics_port}")
        scraper = Scraper(metrics_port)
    metrics_port = 0
    if name.partition("@")[0] == "wal-fsync":  # entries per fdatasync (karma_wal_batch_entries)
        metrics_port = free_port()
        command.append(f"--metrics-port={metrics_port}")
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=cwd
    )
    rows: list[dict[str, object]] = []
    try:
        wait_listening(port, process)
        if scraper is not None:
            scraper.start()
        setup = True  # the first workload creates the series (kbench --setup)
        for workload, args in workloads(options.single, options.batches):
            if chosen is not None and workload not in chosen:
                continue
            args = [a for a in args if a != "--setup"] + (["--setup"] if setup else [])
            setup = False
            if any(a.removeprefix("--op=") in KEYED for a in args) and not name.startswith(
                ("trio_min", "baseline", "karma1:")
            ):
                forget_keys(port)
            before = wal_batches(metrics_port)
            result = run_kbench(options.kbench, port, args, process.pid)
            after = wal_batches(metrics_port)
            if before is not None and after is not None and after[0] > before[0]:
                result["entries_per_fsync"] = round(
                    (after[1] - before[1]) / (after[0] - before[0]), 2
                )
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


def run_kbench(kbench: Path, port: int, args: list[str], pid: int) -> dict[str, object]:
    """One kbench run against `port`: its JSON, plus the server's CPU µs per request."""
    generator = [str(kbench)]
    if kbench == LOADGEN:
        generator = [sys.executable, str(LOADGEN)]
        args = [a for a in args if a != "--setup"]
    cpu_before = cpu_seconds(pid)
    done = subprocess.run(
        [*generator, f"--port={port}", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    try:
        result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"error": done.stderr.strip()[-200:]}
    requests = result.get("requests")
    if isinstance(requests, int) and requests:
        cpu = cpu_seconds(pid) - cpu_before
        result["server_cpu_us"] = round(cpu / requests * 1e6, 2)
    return result


def wal_batches(metrics_port: int) -> tuple[float, float] | None:
    """(batches, entries) from karma_wal_batch_entries on /metrics, or None."""
    if not metrics_port:
        return None
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{metrics_port}/metrics", timeout=5
        ) as answer:
            text = answer.read().decode()
    except OSError:
        return None
    found = {}
    for line in text.splitlines():
        for suffix in ("_count", "_sum"):
            if line.startswith(f"karma_wal_batch_entries{suffix} "):
                found[suffix] = float(line.split()[1])
    if len(found) < 2:
        return None
    return found["_count"], found["_sum"]


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
    parser.add_argument(
        "--only", default="", help="comma-separated servers: the full matrix instead of the table"
    )
    parser.add_argument(
        "--workloads", default="", help="comma-separated workloads (names as in the table)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every server this many times, alternating; the table shows medians",
    )
    parser.add_argument(
        "--karma1",
        type=Path,
        help="a karma 1.0 binary: adds its column (never built or fetched by this script)",
    )
    parser.add_argument(
        "--tls",
        choices=("with", "only", "none"),
        default="with",
        help="the TLS rows (increment p1 and p32, with and without TLS): after the table"
        " (default), alone, or not at all",
    )
    parser.add_argument(
        "--previous",
        default="HEAD~1",
        help="the revision of the table's 'previous' column (default HEAD~1; 'none' omits it)",
    )
    args = parser.parse_args()
    single, batches = (3000, 40) if args.quick else (10000, 100)
    if args.karma1 is not None and not os.access(args.karma1, os.X_OK):
        raise SystemExit(f"--karma1 {args.karma1}: not an executable file")
    options = Options(build_kbench(), single, batches, args.karma1)
    if args.tls == "only":
        rows = run_tls_cost(args.rounds, single // 4)
    elif args.only:
        rows = run_matrix(args.only.split(","), args.workloads, args.rounds, options)
    else:
        previous = None if args.previous == "none" else args.previous
        plan = issue_table.Plan(previous, karma1=args.karma1 is not None)
        rows = run_plan(plan, args.rounds, options)
        issue_table.print_table(plan, rows, args.rounds)
        if args.tls == "with":
            rows.extend(run_tls_cost(args.rounds, single // 4))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"bench-{stamp}.json"
    out.write_text(json.dumps(rows, indent=1))
    print(f"\nJSON written to {out}")


#: the TLS rows (issue 29): plaintext and TLS side by side, both driven by loadgen.py
TLS_WORKLOADS = (
    ("increment p1", ["--op=increment", "--clients=4"]),
    ("increment p32", ["--op=increment", "--clients=4", "--pipeline=32"]),
)
TLS_SERVERS = ("wal-on", "wal-on+tls")


def run_tls_cost(rounds: int, requests: int) -> list[dict[str, object]]:
    """The cost of TLS, measured in one run: the same server with and without --tls-cert,
    alternating, each driven by benchmarks/loadgen.py (kbench speaks no TLS, so both columns
    use the Python generator: compare them with each other, not with the kbench table)."""
    import trustme  # a test dependency (pyproject.toml): `make install` brings it

    rows: list[dict[str, object]] = []
    for round_ in range(1, rounds + 1):
        for server in TLS_SERVERS:
            directory = Path(tempfile.mkdtemp(prefix="kbench-tls-"))
            port = free_port()
            flags = [*COMMON, f"--port={port}", f"--directory={directory}", *SERVERS["wal-on"]]
            extra: list[str] = []
            if server.endswith("+tls"):
                ca = trustme.CA()
                leaf = ca.issue_cert("127.0.0.1")
                ca.cert_pem.write_to_path(str(directory / "ca.pem"))
                leaf.private_key_and_cert_chain_pem.write_to_path(str(directory / "server.pem"))
                flags.append(f"--tls-cert={directory / 'server.pem'}")
                extra = [f"--tls-ca={directory / 'ca.pem'}"]
            process = subprocess.Popen(
                [*KARMA, *flags], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            try:
                wait_listening(port, process)
                for workload, args in TLS_WORKLOADS:
                    result = run_kbench(
                        LOADGEN, port, [*args, f"--requests={requests}", *extra], process.pid
                    )
                    rows.append({"server": server, "workload": workload, "round": round_, **result})
            finally:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                shutil.rmtree(directory, ignore_errors=True)
    print()
    print("TLS cost (both columns driven by benchmarks/loadgen.py, 4 clients):")
    print_table(rows, list(TLS_SERVERS))
    return rows


def run_plan(plan: issue_table.Plan, rounds: int, options: Options) -> list[dict[str, object]]:
    """Every server of the table's plan, with only the workloads its cells need, alternating."""
    rows: list[dict[str, object]] = []
    for round_ in range(1, rounds + 1):
        for server, chosen in plan.servers():
            print(f"round {round_}/{rounds}: {server} ({', '.join(sorted(chosen))})", flush=True)
            rows.extend({**row, "round": round_} for row in run_server(server, options, chosen))
    return rows


def run_matrix(
    servers: list[str], workload_names: str, rounds: int, options: Options
) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    labels: list[str] = []
    seen: dict[str, int] = {}
    for server in servers:
        seen[server] = seen.get(server, 0) + 1
        labels.append(server if seen[server] == 1 else f"{server}#{seen[server]}")
    # the single increments always run first: they fill the keys that sum and batch_sum read
    chosen = {"increment", *workload_names.split(",")} if workload_names else None
    for round_ in range(1, rounds + 1):
        for server, label in zip(servers, labels, strict=True):
            rows.extend(
                {**row, "server": label, "round": round_}
                for row in run_server(server, options, chosen)
            )
    print_table(rows, labels)
    print(json.dumps(rows))
    return rows


if __name__ == "__main__":
    main()
