"""The audit of token refusals: counted by token name, op and code, logged at most once a second
per token name.

Only the name of the tokens-file entry a token matched is ever written (`-` when it matched
none), never the token: a leaked log or scrape gives nothing to replay. A burst of refusals
(a scanner, a service deployed with a revoked token) costs one log line per name a second,
with the number folded into it; the counter keeps every one (karma_auth_refusals_total, and
the KarmaAuthRefusalBurst alert in ops/).
"""

from __future__ import annotations

import math
from typing import Final

import attrs

from karma.observability.logs import Logger

#: at most one `auth.refused` line this often per token name
LOG_EVERY_SECONDS: Final = 1.0


@attrs.define(eq=False)
class Audit:
    log: Logger
    #: (token name, op, code) → refusals; bounded: names come from the tokens file (or `-`),
    #: ops from the op table (or `-`), codes from two
    counts: dict[tuple[str, str, str], int] = attrs.field(factory=dict)
    _logged_at: dict[str, float] = attrs.field(factory=dict)
    _unlogged: dict[str, int] = attrs.field(factory=dict)

    def refused(self, name: str, op: str, code: str, now: float) -> None:
        key = (name, op, code)
        self.counts[key] = self.counts.get(key, 0) + 1
        self._unlogged[name] = self._unlogged.get(name, 0) + 1
        if now - self._logged_at.get(name, -math.inf) < LOG_EVERY_SECONDS:
            return
        self._logged_at[name] = now
        self.log.warning(
            "auth.refused", token=name, op=op, code=code, refusals=self._unlogged.pop(name)
        )
