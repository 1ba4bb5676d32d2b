"""The pure parts of issue 29: TLS contexts from files (karma.tls), karmas:// URLs, and the
tokens table (karma.protocol.scopes)."""

from __future__ import annotations

import hashlib
import ssl
from pathlib import Path

import pytest

from karma.client.wire import parse_url
from karma.config import Config
from karma.protocol import optable, scopes
from karma.protocol import requests as r
from karma.protocol.requests import limits as lr
from karma.tls import (
    Reloadable,
    ServerSettings,
    TlsError,
    client_context,
    link_context,
    server_context,
    server_settings,
)
from tests.tls_certs import Certs, make


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return make(tmp_path / "certs")


def test_a_server_context_needs_client_certificates_only_with_a_ca(certs: Certs) -> None:
    plain = server_context(ServerSettings(certs.cert, certs.key))
    assert plain.verify_mode == ssl.CERT_NONE
    assert plain.minimum_version == ssl.TLSVersion.TLSv1_2
    mutual = server_context(ServerSettings(certs.cert, certs.key, certs.ca_file, "1.3"))
    assert mutual.verify_mode == ssl.CERT_REQUIRED
    assert mutual.minimum_version == ssl.TLSVersion.TLSv1_3
    probes = server_context(
        ServerSettings(certs.cert, certs.key, certs.ca_file), client_certs=False
    )
    assert probes.verify_mode == ssl.CERT_NONE


def test_bad_files_are_named(certs: Certs, tmp_path: Path) -> None:
    with pytest.raises(TlsError, match=r"missing\.pem: no such file"):
        server_context(ServerSettings(str(tmp_path / "missing.pem"), certs.key))
    with pytest.raises(TlsError, match=r"server\.pem with key .*client\.key"):
        server_context(ServerSettings(certs.cert, certs.client_key))  # not its key
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(TlsError, match="CA file"):
        client_context(str(garbage))
    with pytest.raises(TlsError, match="without its certificate"):
        client_context(certs.ca_file, None, certs.client_key)


def test_a_reload_with_a_bad_file_keeps_the_context_in_use(certs: Certs) -> None:
    contexts = Reloadable.load(ServerSettings(certs.cert, certs.key))
    before = contexts.current
    assert contexts.reload() is None
    assert contexts.current is not before
    good = contexts.current
    Path(certs.cert).write_text("broken\n")
    reason = contexts.reload()
    assert reason is not None
    assert certs.cert in reason
    assert contexts.current is good


def test_the_options_give_the_settings_and_the_link_context(certs: Certs) -> None:
    assert server_settings(Config()) is None
    assert link_context(Config()) is None
    with pytest.raises(TlsError, match="need --tls-cert"):
        server_settings(Config(tls_ca=certs.ca_file))
    config = Config(tls_cert=certs.cert, tls_key=certs.key, tls_ca=certs.ca_file)
    assert server_settings(config) == ServerSettings(certs.cert, certs.key, certs.ca_file, "1.2")
    link = link_context(config)
    assert link is not None
    assert link.check_hostname
    assert link.verify_mode == ssl.CERT_REQUIRED
    # two ports: the group's addresses are the plaintext ones, and so are the links
    assert link_context(Config(tls_cert=certs.cert, tls_key=certs.key, tls_port=9443)) is None


def test_karmas_urls() -> None:
    assert parse_url("karmas://t@h:9?ca=/a.pem&cert=/c.pem&key=/k.pem") == {
        "host": "h",
        "port": 9,
        "token": "t",
        "tls": True,
        "ca_file": "/a.pem",
        "cert_file": "/c.pem",
        "key_file": "/k.pem",
    }
    assert parse_url("karmas://h1:1,h2:2")["seeds"] == [("h1", 1), ("h2", 2)]
    assert "tls" not in parse_url("karma://h:1")
    with pytest.raises(ValueError, match="unknown karmas:// parameter"):
        parse_url("karmas://h:1?verify=no")
    with pytest.raises(ValueError, match="take no parameters"):
        parse_url("karma://h:1?ca=x")
    with pytest.raises(ValueError, match="karmas://"):
        parse_url("http://h:1")


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def test_the_table_finds_tokens_by_digest_and_keeps_the_option_tokens() -> None:
    text = (
        f'{{"tokens": [{{"name": "billing", "sha256": "{digest("b-token")}",'
        ' "rights": ["read", "write"], "series": ["billing_", "invoices"]}]}'
    )
    table = scopes.with_implicit(scopes.parse(text, "f"), "w-token", "r-token")
    assert table is not None
    billing = table.lookup("b-token")
    assert billing is not None
    assert billing.name == "billing"
    assert billing.rights == {optable.Access.READ, optable.Access.WRITE}
    assert billing.covers("billing_eu")
    assert billing.covers("invoices_2026")
    assert not billing.covers("billing")
    assert not billing.everything
    writer = table.lookup("w-token")
    assert writer is not None
    assert (writer.name, writer.everything, writer.rights) == (
        "auth-token",
        True,
        set(optable.Access),
    )
    reader = table.lookup("r-token")
    assert reader is not None
    assert (reader.name, reader.rights) == ("read-auth-token", {optable.Access.READ})
    for wrong in (None, "", 5, ["b-token"], "b-token "):
        assert table.lookup(wrong) is None
    assert table.names() == ["auth-token", "billing", "read-auth-token"]
    assert scopes.with_implicit(None, "w", None) is None  # no file: the classic gate decides


def test_touched_names_every_series_a_request_charges_or_sums() -> None:
    charge = {"key": 1, "value": 1, "max": 5, "window": {"calendar": "month"}}
    consume = lr.LimitConsume(
        v=2,
        items=[lr.LimitItem(series="a", **charge), lr.LimitItem(tree="b", series="x", **charge)],
    )
    assert scopes.touched(consume) == ("a", "b")
    single = lr.LimitCheck(v=2, series="c", **charge)
    assert scopes.touched(single) == ("c",)
    multi = r.MultiSum(v=2, items=[r.MultiSumItem("d", 1), r.MultiSumItem("e", 2)])
    assert scopes.touched(multi) == ("d", "e")
    assert scopes.touched(r.Increment(v=2, tree="f", series="g", key=1)) == ("f",)
    assert scopes.touched(r.Ping(v=2)) == ()
    assert scopes.scopable(r.TreeList)
    assert scopes.scopable(r.SeriesIncrement)  # an alias, through its base
    assert not scopes.scopable(r.Stats)
    assert not scopes.scopable(r.SnapshotCreateAll)
