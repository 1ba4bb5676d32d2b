"""Real certificates for the TLS tests, made with trustme: a CA, the server's certificate for
127.0.0.1 and localhost, a client certificate (mTLS), and certificates meant to be refused."""

from __future__ import annotations

import datetime
from pathlib import Path

import attrs
import trustme


@attrs.frozen
class Certs:
    directory: Path
    ca: trustme.CA

    @property
    def ca_file(self) -> str:
        return str(self.directory / "ca.pem")

    @property
    def cert(self) -> str:
        return str(self.directory / "server.pem")

    @property
    def key(self) -> str:
        return str(self.directory / "server.key")

    @property
    def client_cert(self) -> str:
        return str(self.directory / "client.pem")

    @property
    def client_key(self) -> str:
        return str(self.directory / "client.key")

    def server_flags(self, *, mtls: bool = False) -> list[str]:
        flags = [f"--tls-cert={self.cert}", f"--tls-key={self.key}"]
        return [*flags, f"--tls-ca={self.ca_file}"] if mtls else flags

    def issue(self, name: str, *, expired: bool = False, ca: trustme.CA | None = None) -> Path:
        """A certificate for 127.0.0.1 and localhost written as NAME.pem (chain) and NAME.key."""
        now = datetime.datetime.now(datetime.UTC)
        window = {}
        if expired:
            window = {
                "not_before": now - datetime.timedelta(days=30),
                "not_after": now - datetime.timedelta(days=1),
            }
        leaf = (ca or self.ca).issue_cert("127.0.0.1", "localhost", **window)  # type: ignore[arg-type]
        chain = self.directory / f"{name}.pem"
        chain.write_bytes(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(self.directory / f"{name}.key"))
        return chain


def make(directory: Path) -> Certs:
    directory.mkdir(parents=True, exist_ok=True)
    certs = Certs(directory, trustme.CA())
    certs.ca.cert_pem.write_to_path(certs.ca_file)
    certs.issue("server")
    certs.issue("client")
    return certs
