"""karma.wal lines: `{"v":2,"lsn":N,"entry":{…}}\\n`, one per mutation.

`parse` reads a buffer into complete entries and tells where the last complete line ends, so
a torn tail (a crash mid-write) can be told apart from damage in the middle.
"""

from __future__ import annotations

from typing import Final

import attrs
import msgspec


class Envelope(msgspec.Struct, gc=False):
    lsn: int | None = None
    entry: msgspec.Raw = msgspec.Raw(b"")  # Raw cannot be Optional: empty means missing


_decoder: Final = msgspec.json.Decoder(Envelope)


def encode_line(lsn: int, entry: bytes) -> bytes:
    return b'{"v":2,"lsn":%d,"entry":%b}\n' % (lsn, entry)


@attrs.frozen
class Line:
    offset: int
    lsn: int | None
    entry: bytes


@attrs.frozen
class Damage:
    offset: int
    reason: str


def parse(data: bytes) -> tuple[list[Line], int, Damage | None]:
    """Complete, valid lines; the end offset of the last good line; the first bad line, if any.

    A line is bad when it is not JSON or has no `entry`. Blank lines are skipped. The bytes
    after the returned end offset are either a partial last line or start at the damage.
    """
    lines: list[Line] = []
    offset = good_end = 0
    size = len(data)
    while offset < size:
        newline = data.find(b"\n", offset)
        if newline < 0:
            return lines, good_end, None  # partial last line: torn, not damage
        raw = data[offset:newline]
        if raw.strip():
            try:
                envelope = _decoder.decode(raw)
            except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
                return lines, good_end, Damage(offset, f"not a WAL record ({exc})")
            if not envelope.entry:
                return lines, good_end, Damage(offset, "WAL record without an entry")
            lines.append(Line(offset, envelope.lsn, bytes(envelope.entry)))
        offset = good_end = newline + 1
    return lines, good_end, None
