"""TLS on the client port and the metrics port, with real certificates (trustme): the Python
clients over karmas://, and every way a handshake must fail: plaintext against TLS, a CA that
did not sign the server, an expired certificate, mTLS without a client certificate."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import httpx
import pytest
import trio
import trustme

from karma.client import AsyncClient, Client, ConnectionFailed
from karma.tls import client_context
from tests.helpers import LineClient, Running, start_server
from tests.process.proc import free_port
from tests.tls_certs import Certs, make


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return make(tmp_path / "certs")


async def tls_server(
    nursery: trio.Nursery, tmp_path: Path, certs: Certs, **options: object
) -> Running:
    return await start_server(
        nursery, tmp_path / "data", tls_cert=certs.cert, tls_key=certs.key, **options
    )


def url(port: int, certs: Certs, *, client_cert: bool = False) -> str:
    query = f"ca={certs.ca_file}"
    if client_cert:
        query += f"&cert={certs.client_cert}&key={certs.client_key}"
    return f"karmas://127.0.0.1:{port}?{query}"


async def test_the_clients_speak_tls_through_karmas_urls(
    nursery: trio.Nursery, tmp_path: Path, certs: Certs
) -> None:
    server = await tls_server(nursery, tmp_path, certs)

    def sync_calls() -> int:
        with Client.from_url(url(server.port, certs)) as karma:
            for _ in range(5):  # the pool reuses the one TLS connection between calls
                karma.increment("tls", 1, 2)
            return karma.sum("tls", 1)

    assert await trio.to_thread.run_sync(sync_calls) == 10
    async with AsyncClient.from_url(url(server.port, certs)) as karma:
        for _ in range(5):
            await karma.increment("tls", 1, 2)
        assert await karma.sum("tls", 1) == 20


async def test_pipelined_requests_and_a_large_answer_over_tls(
    nursery: trio.Nursery, tmp_path: Path, certs: Certs
) -> None:
    server = await tls_server(nursery, tmp_path, certs)
    stream = await trio.open_ssl_over_tcp_stream(
        "127.0.0.1", server.port, ssl_context=client_context(certs.ca_file)
    )
    client = LineClient(stream)  # type: ignore[arg-type]  # any trio stream will do
    count = 2000
    await client.send_raw(
        b"".join(
            json.dumps(
                {"v": 2, "op": "counter.increment", "series": "s", "key": k, "value": 1}
            ).encode()
            + b"\n"
            for k in range(count)
        )
    )
    for _ in range(count):
        assert (await client.reply())["success"]
    keys = await client.call("tree.keys", series="s", limit=10000)
    assert len(keys["response"]["keys"]) == count
    await client.aclose()


async def test_a_plaintext_client_against_the_tls_port_fails_at_once(
    nursery: trio.Nursery, tmp_path: Path, certs: Certs
) -> None:
    server = await tls_server(nursery, tmp_path, certs)
    client = await LineClient.connect(server.port)
    await client.send_raw(b'{"v":2,"op":"system.ping"}\n')
    with trio.fail_after(2):  # no hang: the server closes, it has nothing to answer in
        assert await client.line() is None
    await client.aclose()

    def plaintext() -> str:
        with (
            Client.from_url(f"karma://127.0.0.1:{server.port}", timeout=5) as karma,
            pytest.raises(ConnectionFailed) as raised,
        ):
            karma.ping()
        return str(raised.value)

    with trio.fail_after(3):
        message = await trio.to_thread.run_sync(plaintext)
    assert "closed the connection" in message
    assert "\n" not in message
    # and the server still serves TLS clients
    async with AsyncClient.from_url(url(server.port, certs)) as karma:
        assert await karma.ping() == "pong"


def _refused(address: str, **options: object) -> str:
    with Client.from_url(address, **options) as karma, pytest.raises(ConnectionFailed) as raised:
        karma.ping()
    return str(raised.value)


async def test_a_server_signed_by_another_ca_is_refused(
    nursery: trio.Nursery, tmp_path: Path, certs: Certs
) -> None:
    server = await tls_server(nursery, tmp_path, certs)
    stranger = tmp_path / "stranger-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(stranger))
    message = await trio.to_thread.run_sync(
        lambda: _refused(f"karmas://127.0.0.1:{server.port}?ca={stranger}")
    )
    assert "CERTIFICATE_VERIFY_FAILED" in message
    # the system store does not know the test CA either
    message = await trio.to_thread.run_sync(lambda: _refused(f"karmas://127.0.0.1:{server.port}"))
    assert "CERTIFICATE_VERIFY_FAILED" in message


async def test_an_expired_server_certificate_is_refused(
    nursery: trio.Nursery, tmp_path: Path, certs: Certs
) -> None:
    expired = certs.issue("expired", expired=True)
    server = await start_server(
        nursery,
        tmp_path / "data",
        tls_cert=str(expired),
        tls_key=str(expired.with_suffix(".key")),
    )
    message = await trio.to_thread.run_sync(lambda: _refused(url(server.port, certs)))
    assert "certificate has expired" in message


async def test_mtls_refuses_a_client_without_a_certificate_or_with_an_expired_one(
    nursery: trio.Nursery, tmp_path: Path, certs: Certs
) -> None:
    server = await tls_server(nursery, tmp_path, certs, tls_ca=certs.ca_file)

    def without() -> str:
        # TLS 1.3: the client's handshake ends before the server checks its certificate; the
        # refusal arrives instead of the first answer: the server's alert (or, if the socket
        # did not take it at once, a closed connection)
        return _refused(url(server.port, certs))

    message = await trio.to_thread.run_sync(without)
    assert "CERTIFICATE_REQUIRED" in message or "closed" in message, message
    expired = certs.issue("old-client", expired=True)
    message = await trio.to_thread.run_sync(
        lambda: _refused(
            url(server.port, certs),
            cert_file=str(expired),
            key_file=str(expired.with_suffix(".key")),
        )
    )
    assert "CERTIFICATE_EXPIRED" in message or "closed" in message, message
    other_ca = trustme.CA()
    foreign = certs.issue("foreign-client", ca=other_ca)
    message = await trio.to_thread.run_sync(
        lambda: _refused(
            url(server.port, certs),
            cert_file=str(foreign),
            key_file=str(foreign.with_suffix(".key")),
        )
    )
    assert "UNKNOWN_CA" in message or "closed" in message, message

    def with_certificate() -> str:
        with Client.from_url(url(server.port, certs, client_cert=True)) as karma:
            return str(karma.ping())

    assert await trio.to_thread.run_sync(with_certificate) == "pong"


async def test_a_tls_port_beside_the_plaintext_port(
    nursery: trio.Nursery, tmp_path: Path, certs: Certs
) -> None:
    tls_port = free_port()
    server = await tls_server(nursery, tmp_path, certs, tls_port=tls_port)
    plain = await LineClient.connect(server.port)
    assert (await plain.call("counter.increment", series="s", key=1, value=3))["success"]
    await plain.aclose()
    async with AsyncClient.from_url(url(tls_port, certs)) as karma:
        assert await karma.sum("s", 1) == 3


async def test_the_metrics_port_speaks_https(
    nursery: trio.Nursery, tmp_path: Path, certs: Certs
) -> None:
    metrics_port = free_port()
    # mTLS on the client port; the probes (kubelet, load balancers) send no certificate
    await tls_server(nursery, tmp_path, certs, metrics_port=metrics_port, tls_ca=certs.ca_file)
    context = ssl.create_default_context(cafile=certs.ca_file)
    async with httpx.AsyncClient(verify=context) as http:
        reply = await http.get(f"https://127.0.0.1:{metrics_port}/healthz")
        assert reply.status_code == 200
        reply = await http.get(f"https://127.0.0.1:{metrics_port}/metrics")
        assert "karma_" in reply.text
    with pytest.raises(httpx.HTTPError):  # plaintext scrapes get nothing
        async with httpx.AsyncClient() as http:
            await http.get(f"http://127.0.0.1:{metrics_port}/healthz")
