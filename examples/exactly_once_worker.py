"""A queue worker that records usage exactly once, however often a message is delivered.

The message id is the idempotency key: a redelivered message (or a retry after a lost answer)
gets the first answer back with `idempotent: true` and is not counted again.
"""

from __future__ import annotations

from karma.client import Client, ConnectionFailed

karma = Client.from_env(retries=5, timeout=2.0)


def on_message(message_id: str, account_id: int, emails: int) -> None:
    try:
        karma.record_usage("emails_sent", account_id, emails, idempotency_key=message_id)
    except ConnectionFailed:
        raise  # leave the message on the queue: its redelivery will not double count


if __name__ == "__main__":
    on_message("msg-0001", 42, 3)
    on_message("msg-0001", 42, 3)  # a redelivery
    print(karma.usage("emails_sent", 42))
