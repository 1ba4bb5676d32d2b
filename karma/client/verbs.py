"""Every call in `karma.client.calls`, as a method, declared once for clients and pipelines.

A `Verb` wraps a Call builder; what calling it does depends on the object it is read from:
a `Client` sends the call and returns the result, an `AsyncClient` returns an awaitable of the
result, and a pipeline queues the call and returns itself, so that every method of the client
exists in its pipelines too, with the same parameters, without a second list to keep in step.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Generic, ParamSpec, Self, TypeVar, overload

from karma.client import calls, limit_calls
from karma.client.call import Call

P = ParamSpec("P")
T = TypeVar("T")
Q = TypeVar("Q", bound="Queues")


class Verb(Generic[P, T]):
    """A method built from a Call builder (same parameters, same docstring)."""

    def __init__(self, build: Callable[P, Call[T]]) -> None:
        self.build = build
        self.__doc__ = build.__doc__

    # One overload per kind of holder: static types see `int` from Client.sum, an awaitable
    # from AsyncClient.sum and the pipeline itself from Pipeline.sum.
    @overload
    def __get__(self, holder: None, owner: type[object]) -> Verb[P, T]: ...
    @overload
    def __get__(self, holder: Sends, owner: type[object]) -> Callable[P, T]: ...
    @overload
    def __get__(
        self, holder: SendsAsync, owner: type[object]
    ) -> Callable[P, Coroutine[Any, Any, T]]: ...
    @overload
    def __get__(self, holder: Q, owner: type[object]) -> Callable[P, Q]: ...
    def __get__(self, holder: Verbs | None, owner: type[object]) -> Any:
        if holder is None:
            return self
        take, build = holder._take, self.build

        def method(*args: P.args, **kwargs: P.kwargs) -> Any:
            return take(build(*args, **kwargs))

        method.__name__ = build.__name__
        method.__doc__ = build.__doc__
        return method


class Verbs:
    """The table: every op and domain verb. Subclasses say what taking a Call means."""

    def _take(self, call: Call[Any]) -> Any:
        raise NotImplementedError

    ping = Verb(calls.ping)
    health = Verb(calls.health)
    stats = Verb(calls.stats)
    metrics = Verb(calls.metrics)
    topology = Verb(calls.topology)
    request = Verb(calls.request)
    increment = Verb(calls.increment)
    decrement = Verb(calls.decrement)
    sum = Verb(calls.sum)
    series = Verb(calls.series)
    batch_sum = Verb(calls.batch_sum)
    multi_sum = Verb(calls.multi_sum)
    batch_add = Verb(calls.batch_add)
    batch_set = Verb(calls.batch_set)
    reset = Verb(calls.reset)
    batch_reset = Verb(calls.batch_reset)
    delete_range = Verb(calls.delete_range)
    batch_delete_range = Verb(calls.batch_delete_range)
    tree_create = Verb(calls.tree_create)
    tree_drop = Verb(calls.tree_drop)
    tree_list = Verb(calls.tree_list)
    tree_info = Verb(calls.tree_info)
    tree_keys = Verb(calls.tree_keys)
    tree_top = Verb(calls.tree_top)
    tree_summary = Verb(calls.tree_summary)
    tree_series = Verb(calls.tree_series)
    delete_before = Verb(calls.delete_before)
    compact = Verb(calls.compact)
    ingest_begin = Verb(calls.ingest_begin)
    ingest_chunk = Verb(calls.ingest_chunk)
    ingest_commit = Verb(calls.ingest_commit)
    ingest_abort = Verb(calls.ingest_abort)
    snapshot_create_all = Verb(calls.snapshot_create_all)
    snapshot_list = Verb(calls.snapshot_list)
    snapshot_info = Verb(calls.snapshot_info)
    snapshot_verify = Verb(calls.snapshot_verify)
    record_usage = Verb(calls.record_usage)
    usage = Verb(calls.usage)
    usages = Verb(calls.usages)
    consume = Verb(limit_calls.consume)
    check = Verb(limit_calls.check)
    #: the plain call; `Client.reserve` / `AsyncClient.reserve` wrap it in a context manager
    limit_reserve = Verb(limit_calls.reserve)
    commit = Verb(limit_calls.commit)
    void = Verb(limit_calls.void)


class Sends(Verbs):
    """A client whose methods send at once and return the result."""


class SendsAsync(Verbs):
    """A client whose methods return an awaitable of the result."""


class Queues(Verbs):
    """A pipeline: methods queue their call and return the pipeline, to be sent together."""

    def __init__(self) -> None:
        self.calls: list[Call[Any]] = []

    def add(self, call: Call[Any]) -> Self:
        self.calls.append(call)
        return self

    def _take(self, call: Call[Any]) -> Self:
        return self.add(call)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.calls.clear()
