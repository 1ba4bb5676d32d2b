"""Line framing: bytes in, complete request lines out, with the request size limit.

`feed(b"")` means end of input, as in h11. A line longer than `max_request_bytes` (without
its newline) ends the stream: the caller answers request_too_large and closes.
"""

from __future__ import annotations

import attrs


@attrs.define(eq=False)
class LineBuffer:
    max_request_bytes: int
    _partial: bytes = b""
    too_large: bool = False

    @property
    def pending(self) -> bool:
        """A request line has begun and is not complete yet."""
        return bool(self._partial)

    def feed(self, data: bytes) -> list[bytes]:
        """Complete lines in `data` (plus what was buffered), without `\\n` or a trailing `\\r`.

        Blank lines are skipped. After an oversized line, `too_large` is set and no later
        line is returned.
        """
        if self.too_large:
            return []
        buffer = self._partial + data if self._partial else data
        parts = buffer.split(b"\n")
        self._partial = parts.pop()
        lines: list[bytes] = []
        limit = self.max_request_bytes
        for part in parts:
            line = part[:-1] if part.endswith(b"\r") else part
            if len(line) > limit:
                self.too_large = True
                self._partial = b""
                return lines
            if line and not line.isspace():  # blank lines are skipped (isspace: no copy)
                lines.append(line)
        if len(self._partial) > limit:
            self.too_large = True
            self._partial = b""
        return lines
