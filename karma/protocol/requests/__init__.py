"""One msgspec Struct per protocol v2 op, tagged on `op`; aliases are subclasses with their own tag.

One module per op family; this package is what the rest of the code reads as
`from karma.protocol import requests as r`: every name of `base` and of the karma 1.0 families
(`r.Request`, `r.opt`, `r.Increment`, …), and `AnyRequest`, the union the decoder reads, which
also holds the `limit.*` family (reached as `from karma.protocol.requests import limits as lr`).
Which op is read, written or refused where is the op table's business (`karma.protocol.optable`).
"""

from __future__ import annotations

from typing import Union

from karma.protocol.requests import (
    counters,
    ingest,
    limits,
    recovery,
    replication,
    series,
    snapshots,
    system,
    tree,
)
from karma.protocol.requests.base import *
from karma.protocol.requests.counters import *
from karma.protocol.requests.ingest import *
from karma.protocol.requests.recovery import *
from karma.protocol.requests.replication import *
from karma.protocol.requests.series import *
from karma.protocol.requests.snapshots import *
from karma.protocol.requests.system import *
from karma.protocol.requests.tree import *

#: Every request the wire (and the WAL) can carry: karma 1.0's ops and the `limit.*` family.
AnyRequest = Union[  # noqa: UP007 - a runtime union for msgspec
    system.AnySystemRequest,
    tree.AnyTreeRequest,
    series.AnySeriesRequest,
    counters.AnyCounterRequest,
    snapshots.AnySnapshotRequest,
    recovery.AnyRecoveryRequest,
    replication.AnyReplicationRequest,
    ingest.AnyIngestRequest,
    limits.AnyLimitRequest,
]
