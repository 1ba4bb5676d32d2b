"""karma.client's limit calls against a real server process: consume, check, and reserve as a
context manager (sync, and async under trio)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from karma import client as k
from karma.client import limit_calls
from tests.process.proc import Proc

pytestmark = pytest.mark.process
S = "api_requests"
TOKENS = "llm_tokens"
DAY = {"calendar": "day"}
MONTH = {"calendar": "month"}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Proc]:
    (tmp_path / "data").mkdir()
    proc = Proc(tmp_path / "data", "--wal-fsync=false")
    proc.start()
    yield proc
    proc.close()


@pytest.fixture
def karma(server: Proc) -> Iterator[k.Client]:
    with k.Client(port=server.port, timeout=5) as client:
        yield client


def held(karma: k.Client, series: str = TOKENS, key: int = 7) -> int:
    return karma.check(series, key, 0, max=50_000, window=MONTH).items[0].held


def test_consume_charges_until_the_limit_then_denies_with_a_retry_time(karma: k.Client) -> None:
    answers = [karma.consume(S, 42, max=3, window=DAY) for _ in range(4)]
    assert [a.allowed for a in answers] == [True, True, True, False]
    assert [a.items[0].used for a in answers] == [1, 2, 3, 3]
    denied = answers[-1]
    assert (denied.denied, denied.remaining) == ([0], 0)
    assert denied.retry_after_s is not None
    assert denied.items[0].retry_after_s == denied.retry_after_s
    assert karma.sum(S, 42) == 3


def test_sending_the_same_consume_call_again_replays_its_generated_key(
    karma: k.Client,
) -> None:
    call = limit_calls.consume(S, 42, 2, max=3, window=DAY)
    assert call.fields["idempotency_key"]  # generated when the call is built
    first = karma.run(call)
    assert first.allowed
    assert karma.run(call) == first  # a retry after a lost answer: charged once
    assert karma.sum(S, 42) == 2
    # a new call is a new request: 2 more do not fit, and the denial is kept for its key too
    other = limit_calls.consume(S, 42, 2, max=3, window=DAY)
    assert karma.run(other).allowed is False
    karma.decrement(S, 42, 2)
    assert karma.run(other).allowed is False
    assert karma.sum(S, 42) == 0


def test_check_reads_the_decision_without_charging(karma: k.Client) -> None:
    with pytest.raises(k.NotFound):
        karma.check(S, 42, max=3, window=DAY)  # nothing recorded for the series yet
    karma.consume(S, 42, max=3, window=DAY)
    look = karma.check(S, 42, 2, max=3, window=DAY)
    assert (look.allowed, look.items[0].used, look.remaining) == (True, 1, 2)
    assert karma.check(S, 42, 3, max=3, window=DAY).allowed is False
    assert karma.sum(S, 42) == 1


def test_items_are_charged_all_or_nothing(karma: k.Client) -> None:
    items = [
        {"series": S, "key": 42, "value": 1, "max": 10, "window": DAY},
        {"series": TOKENS, "key": 42, "value": 900, "max": 1000, "window": MONTH},
    ]
    assert karma.consume(items=items).allowed
    answer = karma.consume(items=items)
    assert (answer.allowed, answer.denied) == (False, [1])
    assert [item.allowed for item in answer.items] == [True, False]
    assert (karma.sum(S, 42), karma.sum(TOKENS, 42)) == (1, 900)


def test_a_reservation_block_commits_the_actual_amount(karma: k.Client) -> None:
    karma.increment(TOKENS, 7, 30_000)
    with karma.reserve(TOKENS, 7, 4000, max=50_000, window=MONTH) as reservation:
        assert reservation.allowed
        assert reservation.answer.status == "held"
        assert held(karma) == 4000
        assert karma.sum(TOKENS, 7) == 30_000
        reservation.actual = 612
    assert reservation.settlement == k.Settlement(
        id=reservation.id, status="committed", released=3388, value=612, over_reserved=0
    )
    assert (karma.sum(TOKENS, 7), held(karma)) == (30_612, 0)
    # without an actual amount, the block commits what it held
    with karma.reserve(TOKENS, 7, 100, max=50_000, window=MONTH) as whole:
        pass
    assert whole.settlement is not None
    assert (whole.settlement.value, whole.settlement.released) == (100, 0)
    assert karma.sum(TOKENS, 7) == 30_712


def fail_inside(reservation: k.Reservation) -> None:
    with reservation:
        raise RuntimeError("the call failed")


def test_a_reservation_block_that_raises_voids_the_hold_and_records_nothing(
    karma: k.Client,
) -> None:
    karma.increment(TOKENS, 7, 30_000)
    reservation = karma.reserve(TOKENS, 7, 4000, max=50_000, window=MONTH)
    assert held(karma) == 4000
    with pytest.raises(RuntimeError, match="the call failed"):
        fail_inside(reservation)
    assert reservation.settlement == k.Settlement(id=reservation.id, status="voided", released=4000)
    assert (karma.sum(TOKENS, 7), held(karma)) == (30_000, 0)
    # the id is settled for good: committing it now is a conflict, voiding it again replays
    with pytest.raises(k.IdempotencyConflict):
        karma.commit(reservation.id, 10)
    assert karma.void(reservation.id) == reservation.settlement
    assert karma.sum(TOKENS, 7) == 30_000


def test_a_denied_reservation_block_settles_nothing(karma: k.Client) -> None:
    karma.increment(TOKENS, 7, 49_000)
    with karma.reserve(TOKENS, 7, 4000, max=50_000, window=MONTH) as reservation:
        assert not reservation.allowed
        assert reservation.answer.status == "denied"
        assert reservation.answer.retry_after_s is not None
    assert reservation.settlement is None
    assert (karma.sum(TOKENS, 7), held(karma)) == (49_000, 0)


def test_a_reserve_call_sent_again_replays_its_generated_id(karma: k.Client) -> None:
    karma.increment(TOKENS, 7, 1)
    call = limit_calls.reserve(TOKENS, 7, 500, max=50_000, window=MONTH)
    first = karma.run(call)
    assert karma.run(call) == first
    assert held(karma) == 500
    assert first.id is not None
    settled = karma.commit(first.id)
    assert karma.commit(first.id) == settled
    assert karma.sum(TOKENS, 7) == 501


async def test_the_async_client_reserves_commits_and_voids_under_trio(server: Proc) -> None:
    async with k.AsyncClient(port=server.port, timeout=5) as karma:
        await karma.increment(TOKENS, 7, 1000)
        async with await karma.reserve(TOKENS, 7, 400, max=2000, window=MONTH) as reservation:
            assert reservation.allowed
            look = await karma.check(TOKENS, 7, 0, max=2000, window=MONTH)
            assert look.items[0].held == 400
            reservation.actual = 250
        assert reservation.settlement is not None
        assert (reservation.settlement.status, reservation.settlement.released) == (
            "committed",
            150,
        )
        with pytest.raises(ValueError, match="no answer"):
            async with await karma.reserve(TOKENS, 7, 400, max=2000, window=MONTH) as failed:
                raise ValueError("no answer")
        assert failed.settlement is not None
        assert failed.settlement.status == "voided"
        answer = await karma.consume(TOKENS, 7, 750, max=2000, window=MONTH)
        assert (answer.allowed, answer.items[0].used) == (True, 2000)
        assert (await karma.consume(TOKENS, 7, max=2000, window=MONTH)).allowed is False
        look = await karma.check(TOKENS, 7, 0, max=2000, window=MONTH)
        assert (look.items[0].used, look.items[0].held) == (2000, 0)
        assert await karma.sum(TOKENS, 7) == 2000
