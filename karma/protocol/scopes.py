"""Scoped tokens: a pure table of who may run what on which series (`--tokens-file`).

A token is known by its SHA-256 only: the file never holds a token, and neither does memory
past the request being admitted. Each entry grants a set of rights (`read`, `write`, `admin`:
the op table's access classes) on the series whose names start with one of its prefixes
(`*`: every series, and the ops that touch no one series or all of them).

Which series a request touches (`touched`):
- a series op (`series`/`tree`), a multi-series sum (`items[].series`), a limit charge
  (every charged series): each must be within the prefixes;
- `system.ping`, `system.health`, `cluster.topology` (clients' liveness and failover), and the
  ops on a reservation id (`limit.commit`, `limit.void`, `limit.reservation`: the id is a random
  capability that only the reserving client knows) need only the right;
- `tree.list` needs only the right and answers only the series in scope (the node filters it);
- everything else (stats, snapshots of all series or of files, replication, recovery, ingest
  streams, the idempotency table, `limit.status`) needs the right on `*`.
"""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Mapping
from typing import Final

import attrs
from msgspec import UnsetType

from karma.protocol import requests as r
from karma.protocol.optable import Access
from karma.protocol.requests import limits as lr

RIGHTS: Final[dict[str, Access]] = {
    "read": Access.READ,
    "write": Access.WRITE,
    "admin": Access.ADMIN,
}
EVERY_SERIES: Final = "*"
#: the names `--auth-token` and `--read-auth-token` go by in the table, logs and metrics
AUTH_TOKEN_NAME: Final = "auth-token"
READ_AUTH_TOKEN_NAME: Final = "read-auth-token"
#: the name a refused request is counted under when its token matches no entry
UNKNOWN: Final = "-"
_HEX: Final = frozenset(string.hexdigits.lower())


class TokensFileError(ValueError):
    """The tokens file cannot be used: the message names the line or entry and the reason."""


@attrs.frozen
class Scope:
    name: str
    rights: frozenset[Access]
    prefixes: tuple[str, ...]
    #: `*` among the series: every series, and the ops over all of them
    everything: bool

    def covers(self, series: str) -> bool:
        return self.everything or series.startswith(self.prefixes)


@attrs.frozen
class TokenTable:
    by_digest: Mapping[bytes, Scope]

    def lookup(self, token: object) -> Scope | None:
        """The entry `token` proves, or None (no token, not a string, or unknown).

        Looked up by the token's SHA-256: the time a lookup takes depends on the digest, which
        an attacker cannot steer toward a stored one, not on how much of a token was right."""
        if not isinstance(token, str) or not token:
            return None
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        return self.by_digest.get(digest)

    def names(self) -> list[str]:
        return sorted({scope.name for scope in self.by_digest.values()})


#: ops that touch no series' data, allowed to any token holding their right (aliases too)
UNSCOPED: Final[tuple[type[r.Request], ...]] = (
    r.Ping,
    r.Health,
    r.ClusterTopology,
    r.TreeList,
    lr.LimitCommit,
    lr.LimitVoid,
    lr.LimitReservation,
)


#: ops a token scoped to some series may run at all (the others need `*`)
SCOPABLE: Final[tuple[type[r.Request], ...]] = (
    r.SeriesRequest,
    r.MultiSum,
    lr.ChargeRequest,
    *UNSCOPED,
)


def scopable(op: type[r.Request]) -> bool:
    """May a token scoped to some series prefixes run `op`? (Decided before the request's
    fields are checked: an op over every series is refused as such, whatever it was sent.)"""
    return issubclass(op, SCOPABLE)


def touched(request: r.Request) -> tuple[str, ...]:
    """The series a scopable `request` names (none for the UNSCOPED ops)."""
    if isinstance(request, r.SeriesRequest):
        return (request.name,)
    if isinstance(request, r.MultiSum):
        return tuple(item.series for item in request.items)
    if isinstance(request, lr.ChargeRequest):
        return tuple(_charged(item) for item in request.charges())
    return ()


def _charged(item: lr.LimitItem) -> str:
    name = item.tree if not isinstance(item.tree, UnsetType) else item.series
    return name if isinstance(name, str) else ""


def parse(text: str, source: str) -> TokenTable:
    """The table in a tokens file's text; TokensFileError naming where and why otherwise.

    Shape: {"tokens": [{"name": ..., "sha256": ..., "rights": [...], "series": [...]}]}."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TokensFileError(f"{source} line {exc.lineno}: {exc.msg}") from None
    entries = document.get("tokens") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise TokensFileError(f'{source}: expected {{"tokens": [...]}}')
    table: dict[bytes, Scope] = {}
    names: set[str] = set()
    for index, entry in enumerate(entries):
        where = f"{source} tokens[{index}]"
        scope, digest = _entry(entry, where)
        if scope.name in names:
            raise TokensFileError(f"{where}: the name {scope.name!r} is used twice")
        if digest in table:
            raise TokensFileError(f"{where}: the same sha256 as {table[digest].name!r}")
        names.add(scope.name)
        table[digest] = scope
    return TokenTable(table)


def _entry(entry: object, where: str) -> tuple[Scope, bytes]:
    if not isinstance(entry, dict):
        raise TokensFileError(f"{where}: expected an object")
    unknown = set(entry) - {"name", "sha256", "rights", "series"}
    if unknown:
        raise TokensFileError(f"{where}: unknown field {sorted(unknown)[0]!r}")
    name = entry.get("name")
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_." for c in name):
        raise TokensFileError(f"{where}: name must be letters, digits, '-', '_' or '.'")
    if name in (UNKNOWN, AUTH_TOKEN_NAME, READ_AUTH_TOKEN_NAME):
        raise TokensFileError(f"{where}: the name {name!r} is reserved")
    where = f"{where} ({name})"
    digest_text = entry.get("sha256")
    if (
        not isinstance(digest_text, str)
        or len(digest_text) != 64
        or not set(digest_text.lower()) <= _HEX
    ):
        raise TokensFileError(f"{where}: sha256 must be 64 hex digits (the token's SHA-256)")
    rights = entry.get("rights")
    if not isinstance(rights, list) or not rights:
        raise TokensFileError(f"{where}: rights must be a non-empty list of read/write/admin")
    for right in rights:
        if right not in RIGHTS:
            raise TokensFileError(f"{where}: unknown right {right!r} (read, write, admin)")
    series = entry.get("series")
    if not isinstance(series, list) or not series:
        raise TokensFileError(f"{where}: series must be a non-empty list of prefixes or '*'")
    for prefix in series:
        if not isinstance(prefix, str) or not prefix:
            raise TokensFileError(f"{where}: each series prefix must be a non-empty string")
    scope = Scope(
        name,
        frozenset(RIGHTS[right] for right in rights),
        tuple(p for p in series if p != EVERY_SERIES),
        EVERY_SERIES in series,
    )
    return scope, bytes.fromhex(digest_text)


def with_implicit(
    table: TokenTable | None, auth_token: str | None, read_token: str | None
) -> TokenTable | None:
    """`table` plus `--auth-token` (every right on `*`) and `--read-auth-token` (read on `*`);
    None when there is neither a file nor a token (the gate stays open)."""
    if table is None:
        return None
    entries = dict(table.by_digest)
    implicit = (
        (read_token, READ_AUTH_TOKEN_NAME, frozenset({Access.READ})),
        (auth_token, AUTH_TOKEN_NAME, frozenset(Access)),
    )
    for token, name, rights in implicit:
        if token is not None:
            digest = hashlib.sha256(token.encode()).digest()
            entries[digest] = Scope(name, rights, (), True)
    return TokenTable(entries)
