"""What every request shares: the envelope fields and validation of `Request`, the series name of
`SeriesRequest`, and the `opt()` and `op_tag()` helpers the families and their readers use.

Field annotations carry the parse-phase rules (types, unsigned); each class's `check()` carries
karma 1.0's validate-phase rules and messages. Field order is karma 1.0's parse order, which
is the order the slow decoder reports problems in.
"""

from __future__ import annotations

from typing import Literal, TypeVar

import msgspec
from msgspec import UNSET, UnsetType

from karma.errors import KarmaError
from karma.protocol import fields as f
from karma.protocol.fields import U64

__all__ = [
    "MAX_REPLICAS",
    "Request",
    "SeriesRequest",
    "op_tag",
    "opt",
]


T = TypeVar("T")


def opt(value: T | UnsetType) -> T | None:
    """A field that may be absent (UNSET) but, as in karma 1.0, never `null`."""
    return None if isinstance(value, UnsetType) else value


def op_tag(cls: type[msgspec.Struct]) -> str:
    """The wire `op` of a request class."""
    return str(cls.__struct_config__.tag)


#: the most replicas a write may wait for (`durability:"replicated:N"`)
MAX_REPLICAS = 16


class Request(msgspec.Struct, tag_field="op", frozen=True, kw_only=True, gc=False):
    v: Literal[2]
    token: str | None = None
    # accepted on every op (karma 1.0 type-checks them everywhere, uses them on eligible writes)
    idempotency_key: str | int | UnsetType = UNSET
    fingerprint: str | int | UnsetType = UNSET
    idempotency_created_at_unix: U64 | UnsetType = UNSET
    # karma-trio's, for HA (docs/ha.md): the highest term the client has seen (a lower-term
    # master refuses its writes; the answer then carries `term` and `lsn`), and how many
    # replicas must hold a write before it is acknowledged
    term: U64 | UnsetType = UNSET
    durability: str | UnsetType = UNSET

    @property
    def asks_term(self) -> bool:
        return not isinstance(self.term, UnsetType) or not isinstance(self.durability, UnsetType)

    @property
    def replicas_required(self) -> int:
        """N of `durability:"replicated:N"`; 0 for `"local"` or no field."""
        durability = self.durability
        if isinstance(durability, UnsetType) or durability == "local":
            return 0
        kind, _, count = durability.partition(":")
        if kind == "replicated" and count.isdigit() and 1 <= int(count) <= MAX_REPLICAS:
            return int(count)
        raise KarmaError.validation(
            f'Field durability must be "local" or "replicated:N" with N from 1 to {MAX_REPLICAS}'
        )

    @property
    def key_text(self) -> str | None:
        """The idempotency key as text (karma 1.0 turns integer keys into strings)."""
        key = self.idempotency_key
        return None if isinstance(key, UnsetType) else str(key)

    def check(self) -> None:
        """Validate-phase rules; the default is none."""


class SeriesRequest(Request, frozen=True, kw_only=True):
    """Names a series as `series` or, in karma 1.0's older spelling, `tree` (which wins)."""

    tree: str | None = None
    series: str | None = None

    @property
    def name(self) -> str:
        name = self.tree if self.tree is not None else self.series
        if name is None:
            raise KarmaError.validation("Field tree or series is required")
        return name

    def check(self) -> None:
        f.check_series_name("tree" if self.tree is not None else "series", self.name)
