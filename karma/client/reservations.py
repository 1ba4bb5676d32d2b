"""A reservation as a context manager: commit the actual amount on success, void on error.

    with karma.reserve("llm_tokens", user, 4000, max=50_000, window={"calendar": "month"}) as r:
        if not r.allowed:
            raise BudgetExceeded(r.answer.retry_after_s)
        r.actual = run_the_call()          # committed when the block ends (default: all held)

An exception in the block voids the hold, so nothing is charged for work that did not happen.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

from karma.client import limit_calls
from karma.client.call import Call
from karma.client.limit_calls import LimitAnswer, Settlement

T = TypeVar("T")


# What a reservation needs of its client: `Client` and `AsyncClient` satisfy these, and this
# module imports neither (they import it, to hand out reservations).
class Runs(Protocol):
    def run(self, call: Call[T]) -> T: ...


class RunsAsync(Protocol):
    async def run(self, call: Call[T]) -> T: ...


class _Held:
    def __init__(self, answer: LimitAnswer) -> None:
        self.answer = answer
        #: the amount to commit when the block ends; None commits what was held
        self.actual: int | None = None
        self.settlement: Settlement | None = None

    @property
    def id(self) -> str:
        assert self.answer.id is not None
        return self.answer.id

    @property
    def allowed(self) -> bool:
        return self.answer.allowed

    def _open(self) -> bool:
        return self.answer.allowed and self.settlement is None


class Reservation(_Held):
    def __init__(self, answer: LimitAnswer, client: Runs) -> None:
        super().__init__(answer)
        self._client = client

    def commit(self, value: int | None = None) -> Settlement:
        self.settlement = self._client.run(limit_calls.commit(self.id, value))
        return self.settlement

    def void(self) -> Settlement:
        self.settlement = self._client.run(limit_calls.void(self.id))
        return self.settlement

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: Any) -> None:
        if not self._open():
            return
        if kind is None:
            self.commit(self.actual)
        else:
            self.void()


class AsyncReservation(_Held):
    def __init__(self, answer: LimitAnswer, client: RunsAsync) -> None:
        super().__init__(answer)
        self._client = client

    async def commit(self, value: int | None = None) -> Settlement:
        self.settlement = await self._client.run(limit_calls.commit(self.id, value))
        return self.settlement

    async def void(self) -> Settlement:
        self.settlement = await self._client.run(limit_calls.void(self.id))
        return self.settlement

    async def __aenter__(self) -> AsyncReservation:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, *rest: Any) -> None:
        if not self._open():
            return
        if kind is None:
            await self.commit(self.actual)
        else:
            await self.void()
