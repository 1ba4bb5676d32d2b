"""Which slot a subject key lives in (spec: sharding §1).

Redis Cluster's function on the key's decimal ASCII form: CRC16/XMODEM modulo 16384. Routing
uses the key only, never the series, so every series of one subject lives in one group and a
request about one subject never crosses groups.
"""

from __future__ import annotations

from binascii import crc_hqx
from typing import Final

SLOTS: Final = 16384
LAST_SLOT: Final = SLOTS - 1


def slot_of(key: int) -> int:
    """The slot of a subject key: crc16(str(key)) mod 16384."""
    return crc_hqx(str(key).encode("ascii"), 0) % SLOTS


def slots_of(keys: list[int]) -> set[int]:
    """The distinct slots a request's keys fall in."""
    return {crc_hqx(str(key).encode("ascii"), 0) % SLOTS for key in keys}
