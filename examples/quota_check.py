"""A web handler's quota check: read the usage, refuse over the limit, record the request."""

from __future__ import annotations

import datetime as dt

from karma.client import Client

DAILY_LIMIT = 1000
karma = Client.from_env(retries=2)  # one pooled client per process


def handle_api_request(account_id: int) -> tuple[int, str]:
    today = dt.datetime.now(dt.UTC).date()
    used = karma.usage("api_requests", account_id, since=today, until=today)
    if used >= DAILY_LIMIT:
        return 429, f"daily limit of {DAILY_LIMIT} requests reached"
    karma.record_usage("api_requests", account_id)
    return 200, "ok"


if __name__ == "__main__":
    print(handle_api_request(42))
