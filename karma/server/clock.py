"""The node's clocks: the UTC day it writes to, Unix seconds, and monotonic time for holds.

Wall clocks step (NTP corrects a drifting host, a VM resumes from a snapshot, a machine boots
with a wrong RTC and is fixed later). Two rules keep a step from granting or holding anything
twice (docs/limits.md, "When the clock steps"):

- The day never goes backwards: once the node has handed out day D (to a write without a
  bucket, a window, a `limit.*` decision), a wall clock that says an earlier day still gets D.
  Otherwise a step back over midnight would open yesterday's daily window again, and a daily
  limit already spent today would be granted a second time. Forward steps are followed. While
  the wall clock is behind, `clock.behind` is logged once, with the gap, and the gap is a metric
  (`karma_clock_behind_seconds`) that an alert watches.
- Holds expire on the monotonic clock (`core/limits.py`, `Limits.bound_expiries`).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

import attrs

from karma import days
from karma.observability.logs import Logger

SECONDS_PER_DAY = 86_400
_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()


def day_start_unix(day: int) -> int:
    """The Unix time at 00:00 UTC of a YYYYMMDD day."""
    date = days.to_date(day)
    assert date is not None  # only days the clock handed out come here
    return (date.toordinal() - _EPOCH_ORDINAL) * SECONDS_PER_DAY


@attrs.define(eq=False)
class NodeClock:
    log: Logger
    wall: Callable[[], float] = time.time
    monotonic_ns: Callable[[], int] = time.monotonic_ns
    #: the latest day handed out (0: none yet)
    day: int = 0
    #: the wall clock said an earlier day than `day` at its last reading
    behind: bool = False
    _second: int = -1

    def today(self) -> tuple[int, int]:
        """(the UTC day bucket to write to, Unix seconds); the day is worked out once per
        second of the wall clock."""
        now = int(self.wall())
        if now != self._second:
            self._second = now
            self._follow(days.today_from_unix(now), now)
        return self.day, now

    def _follow(self, wall_day: int, now: int) -> None:
        if wall_day >= self.day:
            if self.behind:
                self.behind = False
                self.log.info("clock.caught_up", day=wall_day)
            self.day = wall_day
        elif not self.behind:
            self.behind = True
            self.log.warning(
                "clock.behind",
                day=self.day,
                wall_day=wall_day,
                gap_s=day_start_unix(self.day) - now,
            )

    def behind_s(self) -> float:
        """How far the wall clock is behind the start of the day the node writes to (0 when
        it is not): how long the node will go on writing to that day."""
        if not self.day:
            return 0.0
        return max(0.0, day_start_unix(self.day) - self.wall())

    def wall_ms(self) -> int:
        return int(self.wall() * 1000)

    def mono_ms(self) -> int:
        return self.monotonic_ns() // 1_000_000
