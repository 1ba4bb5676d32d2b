"""The table of issue 14: karma-trio's production modes against karma 1.0, side by side.

Which servers and workloads `make bench` runs, and how their medians are printed: one markdown
table of rates (with the ratio to karma 1.0 and the issue's target when a karma 1.0 binary is
given), one of server CPU time per request, and entries per fdatasync where they are known.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from dataclasses import dataclass

#: (workload as in the table, mode, bench.py's workload name, target: karma-trio / karma 1.0)
ROWS = [
    ("increment, 1 in flight", "wal-fsync", "increment", 1.0),
    ("increment, 32 in flight", "wal-fsync", "increment pipeline=32", 3.0),
    ("increment, 1 in flight", "wal-on", "increment", 1.0),
    ("increment, 32 in flight", "wal-off", "increment pipeline=32", 2.0),
    ("sum, 1 in flight", "wal-off", "sum", 0.6),
    ("batch_add 1000 items", "wal-off", "batch_add x1000", 1.0),
    ("batch_add 1000 items", "wal-on", "batch_add x1000", 1.0),
    ("batch_sum 1000 keys", "wal-off", "batch_sum x1000", 1.0),
]
#: issue 25: keyed writes and decisions against plain increments, WAL + fsync, one run
#: (label, workload, the plain workload of the same shape); target: each keyed row >= 0.8x
KEYED_ROWS = [
    ("increment, 4 x 32 in flight", "increment pipeline=32", "increment pipeline=32"),
    ("keyed increment, 4 x 32", "increment_key pipeline=32", "increment pipeline=32"),
    ("limit.consume keyed, 4 x 32", "consume pipeline=32", "increment pipeline=32"),
    ("increment, 32 x 1", "increment 32 clients", "increment 32 clients"),
    ("keyed increment, 32 x 1", "increment_key 32 clients", "increment 32 clients"),
    ("limit.consume keyed, 32 x 1", "consume 32 clients", "increment 32 clients"),
]
KEYED_TARGET = 0.8
MODE_NAMES = {"wal-fsync": "WAL + fsync", "wal-on": "WAL, no fsync", "wal-off": "WAL off"}
BATCH_WORKLOADS = {"batch_add x1000", "batch_sum x1000"}
Row = dict[str, object]


@dataclass(frozen=True)
class Plan:
    previous: str | None  # a git revision, or None
    karma1: bool

    def columns(self) -> list[tuple[str, str]]:
        """(heading, server name pattern; {mode} is replaced by the row's mode)."""
        columns = [("karma-trio", "{mode}")]
        if self.previous is not None:
            columns.append((f"previous ({self.previous})", "{mode}@" + self.previous))
        columns.append(("trio_min", "trio_min"))
        if self.karma1:
            columns.append(("karma 1.0", "karma1:{mode}"))
        return columns

    def servers(self) -> Iterator[tuple[str, set[str]]]:
        """Each server to start once per round, with the workloads its cells need.

        Alternating by mode, the implementations side by side: wal-fsync of each, then wal-on
        of each, and so on; trio_min (no WAL) once with every workload.
        """
        for mode in MODE_NAMES:
            needed = {workload for _, row_mode, workload, _ in ROWS if row_mode == mode}
            if mode == "wal-fsync":
                needed |= {workload for _, workload, _ in KEYED_ROWS}
            for _, pattern in self.columns():
                if pattern != "trio_min":
                    yield pattern.format(mode=mode), needed
        yield "trio_min", {workload for _, _, workload, _ in ROWS}

    def keyed_columns(self) -> list[tuple[str, str]]:
        """The columns of the keyed table: this tree and the previous revision, WAL + fsync."""
        return [(n, p.format(mode="wal-fsync")) for n, p in self.columns() if "{mode}" in p]


def rate(row: Row) -> float:
    for field in ("items_per_sec", "ops_per_sec"):
        value = row.get(field)
        if isinstance(value, int | float) and value:
            return float(value)
    return 0.0


def cells(rows: list[Row], server: str, workload: str) -> list[Row]:
    return [r for r in rows if r.get("server") == server and r.get("workload") == workload]


def median_of(rows: list[Row], field: str) -> float | None:
    values = [float(v) for r in rows if isinstance(v := r.get(field), int | float)]
    return statistics.median(values) if values else None


def show_rate(value: float | None, workload: str) -> str:
    if not value:
        return "-"
    if workload in BATCH_WORKLOADS:
        return f"{value / 1e6:.2f} M" if value >= 1e6 else f"{value / 1e3:.0f} k"
    return f"{value:,.0f}/s"


def print_table(plan: Plan, rows: list[Row], rounds: int) -> None:
    columns = plan.columns()
    headings = ["workload", "mode", *(name for name, _ in columns)]
    if plan.karma1:
        headings += ["ratio", "target", "met"]
    print()
    print(f"Rates: median of {rounds} alternating round(s); items/s for batches, ops/s otherwise.")
    print("| " + " | ".join(headings) + " |")
    print("|" + "---|" * len(headings))
    any_errors = False
    for label, mode, workload, target in ROWS:
        line = [label, MODE_NAMES[mode]]
        rates = {}
        for name, pattern in columns:
            server = pattern.format(mode=mode)
            found = cells(rows, server, workload)
            rates[name] = median_of(found, "items_per_sec") or median_of(found, "ops_per_sec")
            errors = any(r.get("errors") or r.get("error") for r in found)
            any_errors = any_errors or errors
            line.append(show_rate(rates[name], workload) + (" (!)" if errors else ""))
        if plan.karma1:
            ours, theirs = rates.get("karma-trio"), rates.get("karma 1.0")
            ratio = ours / theirs if ours and theirs else None
            line.append(f"{ratio:.2f}" if ratio is not None else "-")
            line.append(f"≥ {target:.1f}")
            line.append("-" if ratio is None else "yes" if ratio >= target else "no")
        print("| " + " | ".join(line) + " |")
    if any_errors:
        print("(!) some answers were errors")
    print()
    print("Server CPU time per request, µs (per batch for batches; all threads, from /proc):")
    print("| workload | mode | " + " | ".join(name for name, _ in columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for label, mode, workload, _ in ROWS:
        line = [label, MODE_NAMES[mode]]
        for _, pattern in columns:
            value = median_of(cells(rows, pattern.format(mode=mode), workload), "server_cpu_us")
            line.append("-" if value is None else f"{value:,.1f}")
        print("| " + " | ".join(line) + " |")
    print()
    for label, mode, workload, _ in ROWS:
        entries = median_of(cells(rows, mode, workload), "entries_per_fsync")
        if mode == "wal-fsync" and entries is not None:
            print(f"karma-trio, {label}, WAL + fsync: {entries:.2f} entries per fdatasync (median)")
    print_keyed_table(plan, rows)


def print_keyed_table(plan: Plan, rows: list[Row]) -> None:
    """Issue 25: keyed increments and limit.consume beside plain increments of the same shape,
    WAL + fsync: rate, ratio to plain (target >= 0.8) and entries per fdatasync, per column."""
    columns = plan.keyed_columns()
    print()
    print(f"Keyed writes and decisions, WAL + fsync (x plain: target >= {KEYED_TARGET}):")
    print(
        "| workload | "
        + " | ".join(f"{name} | x plain | entries/fdatasync" for name, _ in columns)
        + " |"
    )
    print("|---|" + "---|---|---|" * len(columns))
    for label, workload, plain in KEYED_ROWS:
        line = [label]
        for _, server in columns:
            found = cells(rows, server, workload)
            value = median_of(found, "ops_per_sec")
            base = median_of(cells(rows, server, plain), "ops_per_sec")
            entries = median_of(found, "entries_per_fsync")
            errors = any(r.get("errors") or r.get("error") for r in found)
            line.append(show_rate(value, workload) + (" (!)" if errors else ""))
            line.append(f"{value / base:.2f}" if value and base else "-")
            line.append("-" if entries is None else f"{entries:.1f}")
        print("| " + " | ".join(line) + " |")
