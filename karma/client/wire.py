"""The client's half of the wire, shared by `Client` and `AsyncClient`: no I/O here.

Requests go out as one JSON line each; answers come back as lines, in order. What the two
clients share beyond that is the rule for *keeping* a connection: it goes back to the pool only
when every answer it was asked for came back and none of them ends the connection.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Sequence
from typing import Any, Final, TypeVar
from urllib.parse import parse_qs, urlsplit

import msgspec

from karma.client.call import Call
from karma.client.errors import ConnectionFailed, KarmaError, from_answer
from karma.tls import client_context

T = TypeVar("T")

#: Error answers after which the server closes the connection. karma-trio (like karma 1.0)
#: cannot find the next request in a line it stopped reading, so it answers and hangs up.
CLOSING_CODES: Final = frozenset({"request_too_large"})


class Answer(msgspec.Struct):
    success: bool
    response: msgspec.Raw = msgspec.Raw(b"null")
    error_code: str | None = None
    idempotent: bool | None = None
    #: HA: the node's leading term and the write's LSN, on answers to requests carrying `term`
    #: (absent from servers that do not track terms)
    term: int | None = None
    lsn: int | None = None

    @property
    def closes_connection(self) -> bool:
        return not self.success and self.error_code in CLOSING_CODES


_decode_answer = msgspec.json.Decoder(Answer).decode
_encode = msgspec.json.Encoder().encode


def encode_call(call: Call[Any], token: str | None, term: int | None = None) -> bytes:
    request: dict[str, Any] = {"v": 2, "op": call.op, **call.fields}
    if token is not None:
        request["token"] = token
    if term is not None:
        request["term"] = term
    return _encode(request) + b"\n"


def decode_answers(lines: Sequence[bytes]) -> list[Answer]:
    """The envelopes of `lines`; a line that is not one means the stream is out of step."""
    answers = []
    for line in lines:
        try:
            answers.append(_decode_answer(line))
        except msgspec.DecodeError as exc:
            raise ConnectionFailed(f"unreadable answer: {line[:200]!r}") from exc
    return answers


def read_answer(call: Call[T], answer: Answer) -> T:
    """The call's result, or its error raised."""
    response = msgspec.json.decode(answer.response)
    if not answer.success:
        if answer.error_code == "not_found" and call.if_missing is not None:
            return call.if_missing()
        raise from_answer(answer.error_code, str(response))
    return call.read(response)


def results(queued: Sequence[Call[Any]], answers: Sequence[Answer]) -> list[Any]:
    """A pipeline's results in order: a refused call's place holds its KarmaError.

    Calls after an answer that closed the connection were never read by the server (it stops at
    the line it refused), so they were not applied: their places hold a ConnectionFailed.
    """
    out: list[Any] = []
    for call, answer in zip(queued, answers, strict=False):
        try:
            out.append(read_answer(call, answer))
        except KarmaError as exc:
            out.append(exc)
    out.extend(
        ConnectionFailed(f"{call.op}: not answered, the server closed the connection")
        for call in queued[len(answers) :]
    )
    return out


def is_quiet(sock: socket.socket) -> bool:
    """True when an idle connection can be reused: the server has neither closed it nor sent
    anything unasked (which would put answers out of step). `sock` must be non-blocking.

    A peek rather than `select`: select fails on descriptors above FD_SETSIZE (1024), which a
    busy process reaches.
    """
    try:
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False  # end of stream, or unsolicited bytes


#: `karmas://` query parameters → Client keyword arguments (PEM file paths)
TLS_PARAMETERS: Final = {"ca": "ca_file", "cert": "cert_file", "key": "key_file"}


def parse_url(url: str) -> dict[str, Any]:
    """`karma://[token@]host[:port]` (or `karmas://`, TLS) → Client keyword arguments.

    Several comma-separated hosts (`karma://token@h1:p1,h2:p2`) are a seed list: `seeds` holds
    them all, and `host` and `port` the first one. `karmas://...?ca=PATH&cert=PATH&key=PATH`
    names the CA to trust (else the system's) and a client certificate (mTLS).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("karma", "karmas"):
        raise ValueError(f"not a karma:// or karmas:// URL: {url}")
    token = parts.username or None
    hosts = parts.netloc.rpartition("@")[2]
    options: dict[str, Any] = {"token": token}
    if parts.scheme == "karmas":
        options["tls"] = True
        for name, values in parse_qs(parts.query).items():
            if name not in TLS_PARAMETERS:
                raise ValueError(f"unknown karmas:// parameter {name!r} (ca, cert, key)")
            options[TLS_PARAMETERS[name]] = values[-1]
    elif parts.query:
        raise ValueError(f"karma:// URLs take no parameters (karmas:// does): {url}")
    if "," not in hosts:
        return {"host": parts.hostname or "127.0.0.1", "port": parts.port or 8080, **options}
    seeds = [_seed(url, text) for text in hosts.split(",")]
    return {"host": seeds[0][0], "port": seeds[0][1], **options, "seeds": seeds}


def tls_context(
    tls: bool | ssl.SSLContext,
    ca_file: str | None,
    cert_file: str | None,
    key_file: str | None,
) -> ssl.SSLContext | None:
    """The clients' `tls` argument as a context: None for plaintext; True (or any of the
    files) builds one with karma.tls.client_context; a context is used as given."""
    if isinstance(tls, ssl.SSLContext):
        return tls
    if not tls and ca_file is None and cert_file is None:
        return None
    return client_context(ca_file, cert_file, key_file)


def is_tls_quiet(sock: ssl.SSLSocket) -> bool:
    """`is_quiet` for a TLS connection: no decrypted bytes waiting, and the socket under it
    quiet (peeked through a socket object borrowed on the same descriptor)."""
    if sock.pending():
        return False
    borrowed = socket.socket(sock.family, sock.type, sock.proto, fileno=sock.fileno())
    try:
        borrowed.setblocking(False)
        return is_quiet(borrowed)
    finally:
        borrowed.detach()


def _seed(url: str, text: str) -> tuple[str, int]:
    parts = urlsplit(f"//{text}")
    if not parts.hostname:
        raise ValueError(f"a seed without a host in {url}")
    return parts.hostname, parts.port or 8080
