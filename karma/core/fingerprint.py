"""karma 1.0's request fingerprint: SHA-256 of a canonical text of the normalised command.

One line per field: `name:s:<utf-8 length>:<text>`, `name:u:<unsigned>`, `name:i:<count>` or
`name:n` (null). Computed exactly as karma 1.0 does, so the records in a karma 1.0
`karma.idempotency.json` keep matching retries after the switch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

Item = tuple[int, int, int]


class Canon:
    def __init__(self, command: str) -> None:
        self.command = command
        self.parts: list[str] = []
        self.text("command", command)

    @classmethod
    def of(cls, command: str, text: str) -> Canon:
        """A canon whose whole text (the command's line included) is built by the caller."""
        canon = cls.__new__(cls)
        canon.command = command
        canon.parts = [text]
        return canon

    def text(self, name: str, value: str | None) -> Canon:
        if value is None:
            self.parts.append(f"{name}:n\n")
        else:
            self.parts.append(f"{name}:s:{len(value.encode())}:{value}\n")
        return self

    def unsigned(self, name: str, value: int | None) -> Canon:
        self.parts.append(f"{name}:n\n" if value is None else f"{name}:u:{value}\n")
        return self

    def count(self, name: str, value: int) -> Canon:
        self.parts.append(f"{name}:i:{value}\n")
        return self

    def items(self, items: Iterable[Item]) -> Canon:
        listed = list(items)
        self.count("items_count", len(listed))
        # one f-string per item: this runs for every item of every keyed batch and chunk
        self.parts.append(
            "".join(f"item_key:u:{k}\nitem_bucket:u:{b}\nitem_value:u:{v}\n" for k, b, v in listed)
        )
        return self

    def keys(self, keys: list[int]) -> Canon:
        self.count("keys_count", len(keys))
        self.parts.append("".join(f"key_value:u:{key}\n" for key in keys))
        return self

    def digest(self) -> str:
        return hashlib.sha256("".join(self.parts).encode()).hexdigest()
