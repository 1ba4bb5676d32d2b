"""A plan's part: which group gets which JSON object, carrying which of the caller's items."""

from __future__ import annotations

import attrs

from karma.cluster.reply import Json

JsonObject = dict[str, Json]


@attrs.frozen
class Part:
    group: str
    #: the JSON object to send to the group's leader
    request: JsonObject
    #: the caller's item positions this part carries (split ops), in the caller's order
    positions: tuple[int, ...] = ()
    #: the caller's request unchanged: a router may forward the original line as it is
    whole: bool = False
    #: MultiSum parts are per (group, series): the series this part reads
    series: str | None = None
