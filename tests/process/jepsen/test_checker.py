"""The Jepsen checker on made-up histories: each safety check catches the fault it names."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import pytest

from tests.process.jepsen.checker import LogEvent, NemesisEvent, Report, check, parse_log
from tests.process.jepsen.history import Attempt, Op

T0 = 1_800_000_000.0
HISTORY: list[list[object]] = [[5, 0, "a"], [7, 40, "b"], [9, 60, "a"]]


def op(n: int, node: str, sent: float, *, term: int | None = 5, key: int = 1) -> Op:
    done = Op(client=0, key=key, idempotency_key=f"k{n}", invoked=T0 + sent)
    done.attempts.append(Attempt(node, T0 + sent, T0 + sent + 0.01, "ok", term=term, lsn=100 + n))
    done.finish(T0 + sent + 0.01)
    return done


def renewed(node: str, at: float, term: int, deadline: float) -> LogEvent:
    fields = {"term": term, "deadline_unix": T0 + deadline}
    return LogEvent(node, T0 + at, "ha.renewed", fields)


def run(
    ops: Sequence[Op],
    logs: Sequence[LogEvent] = (),
    *,
    final: dict[int, int] | None = None,
    mode: str = "async",
    replicas: dict[str, dict[int, int]] | None = None,
    histories: dict[str, list[list[object]]] | None = None,
    replicated_keys: set[int] | None = None,
) -> Report:
    logs = list(logs) or [renewed("a", 0, 5, 100), renewed("b", 0, 7, 100)]
    return check(
        mode=mode,
        seed=1,
        ops=ops,
        logs=logs,
        events=[NemesisEvent("kill_master", "a", T0 + 50, T0 + 52)],
        final=final if final is not None else {1: len(ops)},
        replicas=replicas or {},
        histories=histories or {"a": HISTORY, "b": HISTORY},
        poll_window_s=0.5,
        replicated_keys=replicated_keys,
    )


def test_a_clean_history_has_no_violation() -> None:
    report = run([op(1, "a", 1), op(2, "a", 2), op(3, "b", 60, term=7)])
    assert report.violations == []
    assert report.terms == {5: ["a"], 7: ["b"]}
    [(kind, promoted, acked)] = report.failovers
    assert kind == "kill_master"
    assert promoted is None  # no ha.promoted line in these logs
    assert acked == pytest.approx(10.01)
    logs = [
        renewed("a", 0, 5, 100),
        renewed("b", 0, 7, 100),
        LogEvent("b", T0 + 53, "ha.promoted", {"term": 7}),
    ]
    [(_, promoted, _)] = run([op(1, "a", 1), op(3, "b", 60, term=7)], logs).failovers
    assert promoted == pytest.approx(3)
    assert "JEPSEN" in report.line()
    assert "kill_master 1" in report.table()


def test_two_nodes_acking_in_one_term_is_a_violation() -> None:
    report = run([op(1, "a", 1), op(2, "b", 2)], [renewed("a", 0, 5, 100), renewed("b", 0, 5, 9)])
    assert report.violations == [
        "term 5 acked by 2 nodes: ['a', 'b']",
        "term 5 was a's, but b acked in it",  # the history names one
    ]


def test_an_ack_sent_after_the_nodes_deadline_is_a_violation() -> None:
    late = op(1, "a", 10)
    report = run([late], [renewed("a", 0, 5, 10)])
    assert len(report.violations) == 1
    assert "after its deadline" in report.violations[0]


def test_only_deadlines_logged_before_the_ack_came_back_count() -> None:
    # renewed at 20 (to 30) after an ack sent at 10 came back: the deadline then was 10
    report = run([op(1, "a", 10)], [renewed("a", 0, 5, 10), renewed("a", 20, 5, 30)])
    assert "after its deadline" in report.violations[0]
    report = run([op(1, "a", 10)], [renewed("a", 12, 5, 30)])
    assert "no deadline logged" in report.violations[0]


def test_an_ack_of_an_older_term_sent_after_a_newer_terms_ack_is_a_violation() -> None:
    report = run([op(1, "b", 5, term=7), op(2, "a", 6, term=5)])
    assert len(report.violations) == 1
    assert "after a later term's first ack" in report.violations[0]


def test_without_terms_in_answers_the_term_is_the_nodes_last_promotion() -> None:
    logs = [
        LogEvent("a", T0, "ha.promoted", {"term": 5}),
        LogEvent("a", T0 + 20, "ha.promoted", {"term": 9}),
        renewed("a", 0, 5, 100),
        renewed("a", 20, 9, 100),
    ]
    report = run([op(1, "a", 1, term=None), op(2, "a", 30, term=None)], logs)
    assert report.terms == {5: ["a"], 9: ["a"]}
    assert report.failovers == [("kill_master", None, None)]  # term 9 began before the fault
    assert report.term_source == "ha.promoted logs"
    assert report.violations == []


def test_more_than_ok_plus_info_fails_and_a_shortfall_fails_only_in_sync_mode() -> None:
    unsure = Op(client=1, key=1, idempotency_key="u", invoked=T0)
    unsure.attempts.append(Attempt("a", T0, T0 + 2, "timeout"))
    unsure.finish(T0 + 2)
    assert unsure.type == "info"
    history = [op(1, "a", 1), op(2, "a", 2), unsure]
    assert run(history, final={1: 3}).violations == []
    assert run(history, final={1: 4}).violations == ["key 1: final 4 > Σok 2 + Σinfo 1"]
    lossy = run(history, final={1: 1})
    assert (lossy.lost, lossy.violations) == (1, [])
    assert "1 acked async writes lost" in lossy.notes[0]
    assert run(history, final={1: 1}, mode="replicated:1").violations == [
        "1 acknowledged replicated writes lost"
    ]
    # both modes in one run: only the replicated keys' shortfall fails
    both = [*history, op(3, "a", 2, key=2), op(4, "a", 2, key=2)]
    mixed = run(both, final={1: 1, 2: 1}, mode="mixed", replicated_keys={2})
    assert mixed.violations == ["1 acknowledged replicated writes lost"]
    assert "1 acked async writes lost" in mixed.notes[0]


def test_an_op_is_ok_if_any_attempt_was_and_fail_only_if_none_can_have_been_applied() -> None:
    refused = Op(client=0, key=1, idempotency_key="r", invoked=T0)
    refused.attempts += [
        Attempt("a", T0, T0, "refused"),
        Attempt("b", T0, T0, "error", code="storage_unavailable"),
    ]
    refused.finish(T0 + 1)
    assert refused.type == "fail"
    fenced = Op(client=0, key=1, idempotency_key="f", invoked=T0)
    fenced.attempts.append(Attempt("a", T0, T0, "error", code="not_leader"))
    fenced.finish(T0 + 1)
    assert fenced.type == "info"  # a fenced master may have written it before refusing
    fenced.attempts.append(Attempt("b", T0 + 1, T0 + 1, "ok", term=7, replayed=True))
    fenced.finish(T0 + 1)
    assert fenced.type == "ok"


def test_a_replica_that_differs_from_the_master_is_a_violation() -> None:
    report = run([op(1, "a", 1)], final={1: 1}, replicas={"b": {1: 1}, "c": {1: 0}})
    assert report.violations == ["c's sums differ from the leader's: {1: (0, 1)}"]


def test_log_lines_that_are_not_json_are_skipped() -> None:
    text = (
        '{"timestamp":"2027-01-15T08:00:00.250+00:00","level":"debug","event":"ha.renewed",'
        '"term":3,"deadline_unix":1800000002.5}\nTraceback (most recent call last):\n{"x":1}\n'
    )
    [event] = parse_log("a", text)
    assert event.event == "ha.renewed"
    assert event.fields["term"] == 3
    assert event.at == dt.datetime(2027, 1, 15, 8, 0, 0, 250_000, tzinfo=dt.UTC).timestamp()


def test_histories_must_be_identical_and_name_the_node_that_acked_each_term() -> None:
    history = [op(1, "a", 1), op(2, "b", 60, term=7)]
    assert run(history).violations == []
    stale = {"a": HISTORY, "b": HISTORY[:2]}
    assert run(history, histories=stale).violations == [
        "the nodes' karma.history differ (last rows: {'a': [[7, 40, 'b'], [9, 60, 'a']],"
        " 'b': [[5, 0, 'a'], [7, 40, 'b']]})"
    ]
    other = {"a": [[5, 0, "a"], [7, 40, "c"]]}
    assert run(history, histories=other).violations == ["term 7 was c's, but b acked in it"]
    late = {"a": [[5, 0, "a"], [7, 500, "b"]]}
    assert run(history, histories=late).violations == [
        "k2 acked at lsn 102 in term 7, which started after lsn 500"
    ]
    assert run([op(3, "a", 1, term=6)], [renewed("a", 0, 6, 100)]).violations == [
        "term 6 (acked by a) is not in the history"
    ]


def pair(
    n: int,
    sent: float,
    answers: Sequence[tuple[str, str | None, bool, float]],
    *,
    node: str = "a",
    overlap: float = 0.0,
) -> Op:
    """An overlapping op: copy i answered `answers[i]` = (outcome, code, replayed, back at)."""
    done = Op(client=0, key=1, idempotency_key=f"k{n}", invoked=T0 + sent, overlap=overlap)
    for copy, (outcome, code, replayed, back) in enumerate(answers):
        ok = outcome == "ok"
        done.attempts.append(
            Attempt(
                node,
                T0 + sent + copy * overlap,
                T0 + back,
                outcome,
                code=code,
                term=5 if ok else None,
                lsn=100 + n if ok else None,
                replayed=replayed,
                copy=copy,
            )
        )
    done.finish(T0 + max(back for *_, back in answers))
    return done


def test_a_replay_of_a_copy_that_waited_past_the_deadline_is_a_violation() -> None:
    # issue 22: both copies reached a before its deadline (10); the first was refused as late
    # after its slow flush, the second was answered from the first one's record at 12.1
    late = pair(1, 9.7, [("error", "not_leader", False, 12.1), ("ok", None, True, 12.1)])
    report = run([late], [renewed("a", 0, 5, 10)], final={1: 0})
    assert report.violations == [
        "a acked k1 (copy 1, replay) in term 5, sent at 1800000009.700, came back 2.100 s"
        " after its deadline 1800000010.000",
        "a answered copy 0 of k1 not_leader at 1800000012.100 and acked copy 1 as a replay"
        " at 1800000012.100",
    ]
    assert report.overlaps == (1, 1, 1, 1)
    assert report.ops["ok"] == 1  # counted once: Σok 1, so final 0 is a loss (async: a note)
    assert report.lost == 1


def test_a_refused_copy_with_a_replay_is_caught_even_within_the_slack() -> None:
    # the ~1 ms race: back just after the deadline, within what a client's clock may lag
    race = pair(2, 9.9, [("error", "not_leader", False, 10.001), ("ok", None, True, 10.001)])
    report = run([race], [renewed("a", 0, 5, 10)])
    assert len(report.violations) == 1
    assert "acked copy 1 as a replay" in report.violations[0]


def test_overlapping_copies_answered_alike_or_in_time_are_clean_and_count_once() -> None:
    both = pair(3, 1, [("ok", None, False, 1.01), ("ok", None, True, 1.01)])
    # the second copy was read after the deadline and refused up front; the first was acked
    split = pair(4, 9.9, [("ok", None, False, 9.91), ("error", "not_leader", False, 10.2)])
    refused = pair(
        5, 11, [("error", "not_leader", False, 11.0), ("error", "not_leader", False, 11.05)]
    )
    delayed = pair(6, 2, [("ok", None, False, 2.01), ("ok", None, True, 2.06)], overlap=0.05)
    report = run([both, split, refused, delayed], [renewed("a", 0, 5, 10)], final={1: 3})
    assert report.violations == []
    assert report.keys == {1: (3, 1, 3)}  # four ops, eight copies: Σok 3, Σinfo 1
    assert report.overlaps == (4, 3, 5, 2)


def test_an_ack_that_came_back_well_after_the_deadline_is_a_violation_within_slack_is_not() -> None:
    slow = op(1, "a", 9.5)
    slow.attempts[0].done = T0 + 10.5  # sent before the deadline, back 0.5 s after it
    assert (
        "came back 0.500 s after its deadline"
        in run([slow], [renewed("a", 0, 5, 10)]).violations[0]
    )
    slow.attempts[0].done = T0 + 10.1
    assert run([slow], [renewed("a", 0, 5, 10)]).violations == []
