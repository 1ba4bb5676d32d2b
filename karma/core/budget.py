"""A time budget for large reads (`--query-timeout-ms`), without reading a clock here.

The shell hands in a clock and a deadline; the core calls `tick()` as it walks counters and
only every `EVERY` ticks is the clock consulted, so the check costs almost nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import attrs

from karma.errors import ErrorCode, KarmaError

EVERY: Final = 4096


@attrs.define(eq=False)
class Budget:
    clock: Callable[[], float]
    deadline: float
    _count: int = 0

    def tick(self) -> None:
        self._count += 1
        if self._count % EVERY == 0 and self.clock() > self.deadline:
            raise KarmaError(ErrorCode.QUERY_TIMEOUT, "Query timeout exceeded")


@attrs.define(eq=False)
class Unlimited:
    def tick(self) -> None:
        pass


AnyBudget = Budget | Unlimited
