"""What an option's text may be: one parser per kind of value, each raising ValueError with
what it expected, and the choices some options take (`Role`, `LOG_LEVELS`).

The option table (karma.config) names a parser per option; karma.config_cli turns their
ValueError into a ConfigError naming the option.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Final


class Role(StrEnum):
    MASTER = "master"
    SLAVE = "slave"


def parse_bool(text: str) -> bool:
    if text == "true":
        return True
    if text == "false":
        return False
    raise ValueError("expected true or false")


def parse_port(text: str) -> int:
    port = _parse_int(text)
    if not 0 <= port <= 65535:
        raise ValueError("expected a TCP port number (0-65535)")
    return port


def _parse_int(text: str) -> int:
    stripped = text.strip()
    if not stripped or not (stripped.isdigit() or (stripped[0] in "+-" and stripped[1:].isdigit())):
        raise ValueError("expected an integer")
    return int(stripped)


def parse_count(text: str) -> int:
    value = _parse_int(text)
    if value < 0:
        raise ValueError("expected an integer >= 0")
    return value


def parse_positive(text: str) -> int:
    value = _parse_int(text)
    if value < 1:
        raise ValueError("expected an integer >= 1")
    return value


def parse_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("expected a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError("expected a number of seconds >= 0")
    return value


def parse_role(text: str) -> Role:
    try:
        return Role(text)
    except ValueError:
        raise ValueError("expected master or slave") from None


def parse_text(text: str) -> str:
    return text


def parse_token(text: str) -> str:
    if not text:
        raise ValueError("a token must not be empty")
    return text


def parse_tls_version(text: str) -> str:
    if text not in ("1.2", "1.3"):
        raise ValueError("expected 1.2 or 1.3")
    return text


def parse_log_level(text: str) -> str:
    if text not in LOG_LEVELS:
        raise ValueError("expected one of " + ", ".join(LOG_LEVELS))
    return text


def parse_urls(text: str) -> str:
    urls = [url.strip() for url in text.split(",")]
    for url in urls:
        if not url.startswith(("http://", "https://")) or len(url) <= len("http://"):
            raise ValueError("expected comma-separated http:// or https:// URLs")
    return ",".join(url.rstrip("/") for url in urls)


def parse_name(text: str) -> str:
    if not text or not all(c.isalnum() or c in "-_." for c in text):
        raise ValueError("expected letters, digits, '-', '_' or '.'")
    return text


def parse_ttl(text: str) -> int:
    value = _parse_int(text)
    if value < 2:  # etcd refuses shorter leases; a margin must fit inside the TTL
        raise ValueError("expected an integer number of seconds >= 2")
    return value


def parse_positive_seconds(text: str) -> float:
    value = parse_seconds(text)
    if value <= 0:
        raise ValueError("expected a number of seconds > 0")
    return value


LOG_LEVELS: Final = ("debug", "info", "warning", "error")
