"""The checker: what a finished run's history and the nodes' logs must satisfy (spec/ha.md §4).

Pure functions over the history (tests.process.jepsen.history), the nodes' JSON log lines, the
nemesis' events and the final reads; no process is touched here, so the unit tests feed it
made-up histories.

Checks, for keyed `counter.increment` of 1 (Maelstrom's pn_counter, grow-only):
- per key, Σok ≤ final ≤ Σok + Σinfo. Above the upper bound a write counted twice or appeared
  from nowhere: always a failure. Below Σok acknowledged writes were lost: a failure in
  `replicated:N` mode; in async mode it is reported against spec §3's bound (what the master
  acknowledged in its last poll interval before it died or froze).
- one acking node per term (the term an answer carries, or, where answers carry none, the
  term the acking node last logged `ha.promoted` for);
- no ack after its node's deadline: an ack by node N in term T was sent (client clock) before
  the latest `deadline_unix` N logged (`ha.renewed`) for T at or before the ack came back, and
  came back no later than ACK_SLACK_S after it (a first answer or an `idempotent` replay alike:
  a copy that waited for another copy of its key still in flight must not be acked late);
- overlapping copies (two connections, one key, one node): in the op's first send, one copy
  answered `not_leader` and the other a `success` replay is a violation whenever it happens
  (the replay can only have replayed the refused copy's write: it must answer what that got);
- fencing order: every ack of term T was sent before the first ack of any later term came back
  (the old master's gate closes before the new leader can exist);
- no idempotency_conflict: a retry sends the same payload under the same key;
- after convergence every node's sums equal the leader's, and every node's term history
  (`karma.history`) is the same; it names each acked term with the node that acked in it, and
  each ack's `lsn` lies past that term's start.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence

import attrs

from tests.process.jepsen.history import Attempt, Op

#: nemesis events after which another node must take over (failover times are measured for these)
MASTER_FAULTS = frozenset({"kill_master", "pause_master", "slow_disk"})
#: an ack may come back this long after its node's deadline and still have left before it: the
#: answer crosses loopback in microseconds, the rest is the client threads' scheduling on a busy
#: machine (answers are stamped as they arrive, late ones by a watcher thread)
ACK_SLACK_S = 0.25


@attrs.frozen
class LogEvent:
    node: str
    #: wall clock of the line (its `timestamp`, millisecond precision, truncated)
    at: float
    event: str
    fields: Mapping[str, object]


@attrs.frozen
class NemesisEvent:
    kind: str
    target: str
    start: float
    end: float


def parse_log(node: str, text: str) -> list[LogEvent]:
    """A node's stderr: JSON lines (other lines, e.g. a traceback, are skipped)."""
    events = []
    for line in text.splitlines():
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
            at = dt.datetime.fromisoformat(record["timestamp"]).timestamp()
        except (ValueError, KeyError, TypeError):
            continue
        events.append(LogEvent(node, at, str(record.get("event")), record))
    return events


@attrs.frozen
class Ack:
    op: Op
    attempt: Attempt
    term: int


@attrs.define
class Report:
    mode: str
    seed: int
    ops: Counter[str]
    events: Counter[str]
    #: per key: (Σok, Σinfo, final)
    keys: dict[int, tuple[int, int, int]]
    lost: int
    #: acks the dying or frozen master sent in its last poll-window before each master fault
    loss_bound: int
    terms: dict[int, list[str]]
    #: per master fault (and any other fault that caused a new term): its kind, then seconds
    #: from it to the new term's `ha.promoted` and to the first ack of the new term
    failovers: list[tuple[str, float | None, float | None]]
    deadline_checked: int
    term_source: str
    #: answers that came after the client had timed out: (all, successes)
    late: tuple[int, int] = (0, 0)
    #: ops sent more than once, and acks that replayed an earlier attempt (`idempotent`)
    retries: tuple[int, int] = (0, 0)
    #: ops sent as two overlapping copies (of which both at once), copies acked, copy acks
    #: that were replays
    overlaps: tuple[int, int, int, int] = (0, 0, 0, 0)
    violations: list[str] = attrs.field(factory=list)
    notes: list[str] = attrs.field(factory=list)

    def table(self) -> str:
        failovers = ", ".join(
            f"{kind} {_seconds(promoted)}/{_seconds(acked)}"
            for kind, promoted, acked in self.failovers
        )
        rows = [
            ("seed", str(self.seed)),
            ("mode", self.mode),
            ("events", ", ".join(f"{k} {n}" for k, n in sorted(self.events.items()))),
            ("ops", ", ".join(f"{k} {self.ops[k]}" for k in ("ok", "fail", "info"))),
            (
                "keys (ok/info/final)",
                "; ".join(
                    f"{k}: {ok}/{info}/{final}" for k, (ok, info, final) in self.keys.items()
                ),
            ),
            (
                "lost acked writes",
                f"{self.lost} (async bound estimate {self.loss_bound})"
                if self.mode != "replicated:1"
                else str(self.lost),
            ),
            ("failovers (promoted/acked)", failovers or "-"),
            (
                "terms (acking node)",
                ", ".join(f"{t}:{'+'.join(ns)}" for t, ns in sorted(self.terms.items())),
            ),
            ("term from", self.term_source),
            ("late answers (acks)", f"{self.late[0]} ({self.late[1]})"),
            ("retried ops, replayed acks", f"{self.retries[0]}, {self.retries[1]}"),
            (
                "overlapping ops (at once), copies acked (replays)",
                f"{self.overlaps[0]} ({self.overlaps[1]}), {self.overlaps[2]} ({self.overlaps[3]})",
            ),
            ("acks checked vs deadline", str(self.deadline_checked)),
            ("notes", "; ".join(self.notes) or "-"),
            ("violations", "; ".join(self.violations) or "none"),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)

    def line(self) -> str:
        return "JEPSEN " + json.dumps(
            {
                "seed": self.seed,
                "mode": self.mode,
                "events": dict(self.events),
                "ops": {k: self.ops[k] for k in ("ok", "fail", "info")},
                "lost": self.lost,
                "late_answers": list(self.late),
                "retried_replayed": list(self.retries),
                "overlapping": list(self.overlaps),
                "loss_bound": self.loss_bound,
                "failover_s": [
                    [kind, _round(promoted), _round(acked)]
                    for kind, promoted, acked in self.failovers
                ],
                "terms": {str(t): ns for t, ns in sorted(self.terms.items())},
                "violations": self.violations,
            },
            sort_keys=True,
        )


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def promotions(logs: Iterable[LogEvent]) -> dict[str, list[tuple[float, int]]]:
    found: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for e in logs:
        if e.event == "ha.promoted" and isinstance(e.fields.get("term"), int):
            found[e.node].append((e.at, int(str(e.fields["term"]))))
    return found


def renewals(logs: Iterable[LogEvent]) -> dict[tuple[str, int], list[tuple[float, float]]]:
    """(node, term) -> [(logged at, deadline_unix)] in log order."""
    found: dict[tuple[str, int], list[tuple[float, float]]] = defaultdict(list)
    for e in logs:
        term, deadline = e.fields.get("term"), e.fields.get("deadline_unix")
        if isinstance(term, int) and isinstance(deadline, int | float) and term:
            found[(e.node, term)].append((e.at, float(deadline)))
    return found


def acks(ops: Sequence[Op], logs: Sequence[LogEvent]) -> tuple[list[Ack], str]:
    """Every successful answer (an op may have several: a late one, a replay) with its term: the
    answer's own, else the node's last promotion before it came back."""
    promoted = promotions(logs)
    found = []
    sources = set()
    for op in ops:
        for attempt in op.acks:
            if attempt.term is not None:
                term = attempt.term
                sources.add("answers")
            else:
                starts = [t for at, t in promoted.get(attempt.node, []) if at <= attempt.done]
                term = starts[-1] if starts else 0
                sources.add("ha.promoted logs")
            found.append(Ack(op, attempt, term))
    return found, " and ".join(sorted(sources)) or "-"


def check_terms(found: Sequence[Ack]) -> tuple[dict[int, list[str]], list[str]]:
    nodes: dict[int, set[str]] = defaultdict(set)
    for ack in found:
        nodes[ack.term].add(ack.attempt.node)
    violations = [
        f"term {term} acked by {len(ns)} nodes: {sorted(ns)}"
        for term, ns in sorted(nodes.items())
        if len(ns) > 1
    ]
    if 0 in nodes:
        violations.append(f"{sum(a.term == 0 for a in found)} acks with no known term")
    return {t: sorted(ns) for t, ns in nodes.items()}, violations


def check_deadlines(
    found: Sequence[Ack], logs: Sequence[LogEvent], slack_s: float = ACK_SLACK_S
) -> tuple[int, list[str]]:
    """Each ack was sent before the deadline its node had logged for its term by then, and
    came back no later than `slack_s` after it."""
    renewed = renewals(logs)
    checked = 0
    violations = []
    for ack in found:
        a = ack.attempt
        known = [deadline for at, deadline in renewed.get((a.node, ack.term), []) if at <= a.done]
        checked += 1
        what = f"{a.node} acked {ack.op.idempotency_key}{_copy(ack.op, a)} in term {ack.term}"
        if not known:
            violations.append(f"{what} with no deadline logged for that term before {a.done:.3f}")
        elif a.sent >= known[-1]:
            violations.append(f"{what}, sent at {a.sent:.3f}, after its deadline {known[-1]:.3f}")
        elif a.done > known[-1] + slack_s:
            violations.append(
                f"{what}, sent at {a.sent:.3f}, came back {a.done - known[-1]:.3f} s after its"
                f" deadline {known[-1]:.3f}"
            )
    return checked, violations


def _copy(op: Op, attempt: Attempt) -> str:
    """How a message names an attempt of an overlapping op (its copy, and a replay)."""
    if op.overlap is None:
        return ""
    return f" (copy {attempt.copy}{', replay' if attempt.replayed else ''})"


def check_copies(ops: Sequence[Op]) -> list[str]:
    """In an overlapping op's first send, a copy refused `not_leader` and the other copy acked
    as a replay: the replay answered from the refused write's record."""
    violations = []
    for op in ops:
        if op.overlap is None:
            continue
        first = [a for a in op.attempts if a.send == 0]
        refused = [a for a in first if a.outcome == "error" and a.code == "not_leader"]
        replays = [a for a in first if a.outcome == "ok" and a.replayed]
        violations += [
            f"{replay.node} answered copy {other.copy} of {op.idempotency_key} not_leader at"
            f" {other.done:.3f} and acked copy {replay.copy} as a replay at {replay.done:.3f}"
            for replay in replays
            for other in refused
            if other.node == replay.node and other.copy != replay.copy
        ]
    return violations


def check_fencing_order(found: Sequence[Ack]) -> list[str]:
    """No ack of a term was sent after an ack of a later term had come back."""
    first_done: dict[int, float] = {}
    for ack in found:
        first_done[ack.term] = min(first_done.get(ack.term, ack.attempt.done), ack.attempt.done)
    later_min: dict[int, float] = {}
    running = float("inf")
    for term in sorted(first_done, reverse=True):
        later_min[term] = running
        running = min(running, first_done[term])
    return [
        f"{ack.attempt.node} acked {ack.op.idempotency_key} in term {ack.term}, sent at"
        f" {ack.attempt.sent:.3f}, after a later term's first ack at {later_min[ack.term]:.3f}"
        for ack in found
        if ack.attempt.sent >= later_min[ack.term]
    ]


def check_histories(
    found: Sequence[Ack], histories: Mapping[str, Sequence[Sequence[object]]]
) -> list[str]:
    """Identical term histories on every node, and the acks agree with them."""
    violations = []
    distinct = {json.dumps(h) for h in histories.values()}
    if len(distinct) > 1:
        tails = {node: [list(row) for row in h[-2:]] for node, h in sorted(histories.items())}
        violations.append(f"the nodes' karma.history differ (last rows: {tails})")
    longest = max(histories.values(), key=len, default=[])
    starts = {int(str(term)): (int(str(lsn)), str(node)) for term, lsn, node in longest}
    if sorted(starts) != [int(str(row[0])) for row in longest]:
        violations.append(f"karma.history terms are not increasing: {longest}")
    for ack in found:
        if ack.term not in starts:
            violations.append(
                f"term {ack.term} (acked by {ack.attempt.node}) is not in the history"
            )
            continue
        start, node = starts[ack.term]
        lsn = ack.attempt.lsn
        if node != ack.attempt.node:
            violations.append(f"term {ack.term} was {node}'s, but {ack.attempt.node} acked in it")
        elif lsn is not None and lsn < start + (0 if ack.attempt.replayed else 1):
            violations.append(
                f"{ack.op.idempotency_key} acked at lsn {lsn} in term {ack.term}, which"
                f" started after lsn {start}"
            )
    return violations


def failover_times(
    found: Sequence[Ack], events: Sequence[NemesisEvent], logs: Sequence[LogEvent]
) -> list[tuple[str, float | None, float | None]]:
    """From each master fault to the promotion of a newer term, and to its first ack (None:
    none before the run ended); other faults are listed only when a newer term acked before
    the next fault began. The ack time is what clients see: it includes their own detours
    (a 2 s timeout on a frozen master, a stale `not_leader` hint)."""
    by_done = sorted(found, key=lambda a: a.attempt.done)
    promoted = sorted((at, term) for starts in promotions(logs).values() for at, term in starts)
    times: list[tuple[str, float | None, float | None]] = []
    for i, event in enumerate(events):
        until = events[i + 1].start if i + 1 < len(events) else float("inf")
        term = max((a.term for a in by_done if a.attempt.done <= event.start), default=0)
        after = next((a for a in by_done if a.attempt.done > event.start and a.term > term), None)
        acked = None if after is None else after.attempt.done - event.start
        won = next((at for at, t in promoted if at > event.start and t > term), None)
        caused = after is not None and after.attempt.done < until
        if event.kind in MASTER_FAULTS or caused:
            times.append((event.kind, None if won is None else won - event.start, acked))
    return times


def loss_bound(found: Sequence[Ack], events: Sequence[NemesisEvent], window_s: float) -> int:
    """spec §3's async bound, estimated: what the faulted master acked in its last `window_s`."""
    total = 0
    for event in events:
        if event.kind in MASTER_FAULTS:
            total += sum(
                1
                for a in found
                if a.attempt.node == event.target
                and event.start - window_s <= a.attempt.done <= event.start
            )
    return total


def check(
    *,
    mode: str,
    seed: int,
    ops: Sequence[Op],
    logs: Sequence[LogEvent],
    events: Sequence[NemesisEvent],
    final: Mapping[int, int],
    replicas: Mapping[str, Mapping[int, int]],
    histories: Mapping[str, Sequence[Sequence[object]]] | None,
    poll_window_s: float,
    replicated_keys: Collection[int] | None = None,
) -> Report:
    """Judge a run. Keys in `replicated_keys` were written with `durability:"replicated:N"`
    (any acknowledged write missing fails); the others asynchronously (a shortfall is
    reported against the bound). None: every key is of `mode`."""
    if replicated_keys is None:
        replicated_keys = () if mode == "async" else frozenset(final) | {op.key for op in ops}
    found, term_source = acks(ops, logs)
    terms, violations = check_terms(found)
    notes = []
    if any(e.event == "ha.renewed" for e in logs):
        deadline_checked, late = check_deadlines(found, logs)
        violations += late
    else:
        deadline_checked = 0
        notes.append("no ha.renewed lines in the nodes' logs: deadline check not run")
    violations += check_fencing_order(found)
    violations += check_copies(ops)
    if histories is None:
        notes.append("no karma.history files: history check not run")
    else:
        violations += check_histories(found, histories)

    ok: Counter[int] = Counter(op.key for op in ops if op.type == "ok")
    info: Counter[int] = Counter(op.key for op in ops if op.type == "info")
    keys = {}
    lost = lost_replicated = 0
    for key in sorted(set(ok) | set(info) | set(final)):
        value = final.get(key, 0)
        keys[key] = (ok[key], info[key], value)
        if value > ok[key] + info[key]:
            violations.append(f"key {key}: final {value} > Σok {ok[key]} + Σinfo {info[key]}")
        if key in replicated_keys:
            lost_replicated += max(0, ok[key] - value)
        else:
            lost += max(0, ok[key] - value)
    if lost_replicated:
        violations.append(f"{lost_replicated} acknowledged replicated writes lost")
    bound = loss_bound(found, events, poll_window_s)
    if lost:
        notes.append(
            f"{lost} acked async writes lost "
            f"({'within' if lost <= bound else 'ABOVE'} the bound estimate {bound})"
        )
    lost += lost_replicated
    conflicts = sum(
        a.code == "idempotency_conflict" for op in ops for a in op.attempts if a.outcome == "error"
    )
    if conflicts:
        violations.append(f"{conflicts} retries answered idempotency_conflict")
    for node, sums in sorted(replicas.items()):
        differ = {k: (sums.get(k, 0), v) for k, v in final.items() if sums.get(k, 0) != v}
        if differ:
            violations.append(f"{node}'s sums differ from the leader's: {differ}")
    return Report(
        mode=mode,
        seed=seed,
        ops=Counter(op.type for op in ops),
        events=Counter(e.kind for e in events),
        keys=keys,
        lost=lost,
        loss_bound=bound,
        terms=terms,
        failovers=failover_times(found, events, logs),
        deadline_checked=deadline_checked,
        term_source=term_source,
        late=(
            sum(a.late for op in ops for a in op.attempts),
            sum(a.late for op in ops for a in op.acks),
        ),
        retries=(
            sum(len({a.send for a in op.attempts}) > 1 for op in ops),
            sum(a.replayed for op in ops for a in op.acks),
        ),
        overlaps=(
            sum(op.overlap is not None for op in ops),
            sum(op.overlap == 0.0 for op in ops),
            sum(len(op.acks) for op in ops if op.overlap is not None),
            sum(a.replayed for op in ops if op.overlap is not None for a in op.acks),
        ),
        violations=violations,
        notes=notes,
    )
