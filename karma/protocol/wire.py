"""Every request the wire (and the WAL) can carry: karma 1.0's ops and the `limit.*` family."""

from __future__ import annotations

from typing import Union

from karma.protocol import limit_requests as lr
from karma.protocol import requests as r

AnyRequest = Union[r.AnyRequest, lr.AnyLimitRequest]  # noqa: UP007 - a runtime union for msgspec
