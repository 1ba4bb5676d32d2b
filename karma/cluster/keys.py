"""Which subject keys a request names: what a node's owner check and a router's split route by.

One pure function, `keys_of`, for every op: the keys of a keyed request in the order the request
gives them (repeats kept), or None for a request that names no subject key (series-wide ops,
node ops, and the reservation-id ops `limit.commit/void/reservation`, which are routed by the
reservation the caller keeps: spec/sharding.md §4). The table is built once over the request
classes, aliases included, so a lookup is one dict access.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from karma.protocol import optable
from karma.protocol import requests as r
from karma.protocol.requests import limits as lr


def _one(request: r.KeyRequest) -> list[int]:
    return [request.key]


def _keys(request: r.KeysRequest) -> list[int]:
    return list(request.keys)


def _items(request: r.BatchAdd | r.BatchSet | r.IngestChunk) -> list[int]:
    return [item[0] for item in request.items]


def _multi(request: r.MultiSum) -> list[int]:
    return [item.key for item in request.items]


def _charges(request: lr.ChargeRequest) -> list[int]:
    # a checked request's charges all carry a key; an unchecked one may not (left out)
    return [key for item in request.charges() if isinstance(key := item.key, int)]


#: by the base class that defines where the keys are; aliases follow their base (by_class)
_BY_BASE: Final[dict[type, Callable[[Any], list[int]]]] = {
    r.KeyRequest: _one,
    r.KeysRequest: _keys,
    r.BatchAdd: _items,
    r.BatchSet: _items,
    r.IngestChunk: _items,
    r.MultiSum: _multi,
    lr.ChargeRequest: _charges,
}

#: request class → its keys' reader, for every keyed class of the wire union
KEYED: Final[dict[type[r.Request], Callable[[Any], list[int]]]] = optable.by_class(_BY_BASE)


def keys_of(request: r.Request) -> list[int] | None:
    """The subject keys `request` names, in its order; None when it names none."""
    read = KEYED.get(type(request))
    return None if read is None else read(request)
