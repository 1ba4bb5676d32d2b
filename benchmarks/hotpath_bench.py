"""CPU per request on the server's hot path, in-process (no sockets): this tree vs a git revision.

Socket benchmarks on a shared 2-core machine swing by ±50 % between runs; the Python work per
request does not. This times `Node.handle_line` (decode, validate, apply, encode; WAL off) for
the kbench workloads, plus increments logged to a real WAL file (no fsync), alternating between
the trees, and keeps each tree's best of several runs.

    .venv/bin/python benchmarks/hotpath_bench.py [--rev HEAD~1] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import checkout

PROBE = r"""
import json, time
from karma.config import Config
from karma.core.engine import Engine
from karma.core.counters import NodeStatus
from karma.observability.logs import Logger
from karma.server.node import Node
def make_node(config, engine, status, log, writer):
    try:  # a Node built from its Context (since issue 24), or from the parts before that
        from karma.server.context import Context
    except ImportError:
        return Node(config, engine, status, log, writer)
    from pathlib import Path
    return Node(Context(config, engine, status, log, Path(config.directory).resolve(), writer))
node = make_node(Config(wal=False), Engine(), NodeStatus(), Logger(enabled=False), None)
def line(obj): return json.dumps(obj).encode()
inc = line({"v":2,"op":"counter.increment","series":"links","key":42,"bucket":20260505,"value":1})
s = line({"v":2,"op":"counter.sum","series":"links","key":42})
items = [[k, 20260505, 1] for k in range(1000)]
add = line({"v":2,"op":"series.batch_add","series":"links","items":items})
bsum = line({"v":2,"op":"counter.batch_sum","series":"links","keys":list(range(1000))})
out = {}
for name, data, n in (("increment", inc, 50000), ("sum", s, 50000), ("batch_add x1000", add, 300),
                      ("batch_sum x1000", bsum, 300)):
    node.handle_line(data)
    t = time.perf_counter()
    for _ in range(n):
        node.handle_line(data)
    out[name] = (time.perf_counter() - t) / n * 1e6
# the WAL-on write path (no fsync): log to a real karma.wal in a temp dir, then apply
import shutil, tempfile
from pathlib import Path
from karma.server.wal_writer import WalWriter
from karma.storage.wal_files import ActiveWal
directory = Path(tempfile.mkdtemp())
try:
    wal = ActiveWal(directory, fsync=False, segment_bytes=0)
    wal.open([])
    engine, status, log = Engine(), NodeStatus(), Logger(enabled=False)
    logged = make_node(Config(wal=True, wal_fsync=False), engine, status, log,
                       WalWriter(engine, wal, status, log))
    logged.handle_line(inc)
    t = time.perf_counter()
    for _ in range(50000):
        logged.handle_line(inc)
    out["increment, WAL on"] = (time.perf_counter() - t) / 50000 * 1e6
finally:
    shutil.rmtree(directory)
print(json.dumps(out))
"""


def measure(tree: Path | None) -> dict[str, float]:
    # `python -c` puts the working directory first on sys.path: run inside the tree measured
    root = tree if tree is not None else Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        check=True,
    )
    result: dict[str, float] = json.loads(done.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", default="HEAD~1")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    old_tree = checkout(args.rev)
    best: dict[str, dict[str, float]] = {"this tree": {}, args.rev: {}}
    for round_ in range(args.rounds):
        order = [("this tree", None), (args.rev, old_tree)]
        for label, tree in order if round_ % 2 == 0 else order[::-1]:
            for workload, micros in measure(tree).items():
                best[label][workload] = min(micros, best[label].get(workload, float("inf")))
    print(
        f"{'µs per request (best of ' + str(args.rounds) + ')':30}{'this tree':>12}"
        f"{args.rev:>14}{'speed-up':>10}"
    )
    for workload, micros in best["this tree"].items():
        old = best[args.rev][workload]
        print(f"{workload:30}{micros:>12.2f}{old:>14.2f}{old / micros:>9.2f}x")
    print(json.dumps(best))


if __name__ == "__main__":
    main()
