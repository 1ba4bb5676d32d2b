"""TLS contexts, built in one place for every part that speaks TLS (stdlib `ssl` only).

- `server_context(settings)`: what a listening side wraps accepted streams with (the client
  port, the metrics port; a router's listener the same way). A CA makes client certificates
  required (mTLS).
- `client_context(ca, cert, key, min_version)`: what a connecting side wraps its streams with
  (replication links, the Python client, the CLI and `backup`; a router's links to its groups).
  Without a CA the system's trust store is used; server names are always checked.
- `Reloadable`: the server context of the moment. `reload()` builds a new one from the same
  files (SIGHUP); a bad file keeps the old context and returns why. An open connection keeps the
  context it was accepted with (its `SSLObject` holds it), so reloading drops nothing.

Nothing here imports trio or the server: the client package uses it too.
"""

from __future__ import annotations

import os
import ssl
from typing import Final

import attrs

from karma.config import Config

#: `--tls-min-version` values → the ssl module's versions
VERSIONS: Final[dict[str, ssl.TLSVersion]] = {
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}


class TlsError(Exception):
    """A certificate, key or CA file cannot be used (missing, unreadable, not matching)."""


@attrs.frozen
class ServerSettings:
    cert: str
    key: str
    #: given: clients must present a certificate signed by it (mTLS)
    ca: str | None = None
    min_version: str = "1.2"


def server_context(settings: ServerSettings, *, client_certs: bool = True) -> ssl.SSLContext:
    """A server-side context from the files named in `settings`; TlsError when one is bad.

    `client_certs=False`: never ask for a client certificate, CA or not (the metrics port:
    kubelet's and load balancers' https probes cannot present one)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = VERSIONS[settings.min_version]
    # no TLS 1.3 session tickets: karma's clients never resume, and a ticket arriving after
    # the handshake would sit unread on an idle pooled connection, which the pool's check
    # (nothing unasked may be waiting) would then take for a broken one
    context.num_tickets = 0
    _load_chain(context, settings.cert, settings.key)
    if settings.ca is not None and client_certs:
        _load_ca(context, settings.ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(
    ca: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    min_version: str = "1.2",
) -> ssl.SSLContext:
    """A client-side context: trust `ca` (else the system store), present `cert` if given."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = VERSIONS[min_version]
    if ca is not None:
        context.load_default_certs()  # keep create_default_context's behaviour, plus `ca`
        _load_ca(context, ca)
    if cert is not None:
        _load_chain(context, cert, key)
    elif key is not None:
        raise TlsError("a client key was given without its certificate")
    return context


def _load_chain(context: ssl.SSLContext, cert: str, key: str | None) -> None:
    try:
        context.load_cert_chain(cert, key)
    except FileNotFoundError:
        # the ssl module does not say which of the two is missing
        missing = next((p for p in (cert, key) if p is not None and not os.path.exists(p)), cert)
        raise TlsError(f"{missing}: no such file") from None
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "reason", None) or exc.strerror or str(exc)
        raise TlsError(f"certificate {cert} with key {key or cert}: {reason}") from None


def _load_ca(context: ssl.SSLContext, ca: str) -> None:
    try:
        context.load_verify_locations(cafile=ca)
    except FileNotFoundError:
        raise TlsError(f"{ca}: no such file") from None
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "reason", None) or exc.strerror or str(exc)
        raise TlsError(f"CA file {ca}: {reason}") from None


@attrs.define(eq=False)
class Reloadable:
    """The server context of the moment; `reload()` swaps in one built from the files again."""

    settings: ServerSettings
    current: ssl.SSLContext
    #: the same certificate, asking no client certificate (the metrics port's probes)
    without_client_certs: ssl.SSLContext

    @classmethod
    def load(cls, settings: ServerSettings) -> Reloadable:
        return cls(settings, server_context(settings), server_context(settings, client_certs=False))

    def reload(self) -> str | None:
        """Build the contexts again; on failure keep the old ones and return the reason."""
        try:
            current = server_context(self.settings)
            probes = server_context(self.settings, client_certs=False)
        except TlsError as exc:
            return str(exc)
        self.current, self.without_client_certs = current, probes
        return None


def server_settings(config: Config) -> ServerSettings | None:
    """The node's TLS files from the options; None when --tls-cert is unset (plaintext)."""
    if config.tls_cert is None:
        if config.tls_key is not None or config.tls_ca is not None or config.tls_port is not None:
            raise TlsError("--tls-key, --tls-ca and --tls-port need --tls-cert")
        return None
    return ServerSettings(
        config.tls_cert, config.tls_key or config.tls_cert, config.tls_ca, config.tls_min_version
    )


def link_context(config: Config) -> ssl.SSLContext | None:
    """What this node connects to others with (its master, HA members): None in plaintext.

    The node's own certificate is its client certificate (the master may require one), and
    --tls-ca is trusted for theirs (else the system store). With --tls-port the group's
    addresses (--port, HA's advertised one) are the plaintext ports: links stay plaintext."""
    settings = server_settings(config)
    if settings is None or config.tls_port is not None:
        return None
    return client_context(settings.ca, settings.cert, settings.key, settings.min_version)
