"""Files the broker publishes for nginx and peers, under ``pki_dir``:

- ``ca.pem``        the gateway's trust bundle (peers pin it; it verifies our TLS server)
- ``client-ca.pem`` what nginx verifies client certificates against (the signing backend's CA)
- ``crl.pem``       the CRL (local backend only; see ``ca_broker.crl``)
- ``server.pem`` / ``server.key``  nginx's TLS server certificate (+ intermediate) and key

The server key is the one private key that must be on disk in clear (nginx reads it); it is
written 0600 and is not a CA key. CA keys live only sealed in Postgres.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from fedcore import pki
from fedcore.files import write_atomically

SERVER_CERT_RENEW_BEFORE = timedelta(days=30)


@dataclass(frozen=True)
class PkiFiles:
    directory: Path
    bundle_pem: str
    client_ca_pem: str

    @property
    def bundle_path(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def client_ca_path(self) -> Path:
        return self.directory / "client-ca.pem"

    @property
    def crl_path(self) -> Path:
        return self.directory / "crl.pem"

    @property
    def server_cert_path(self) -> Path:
        return self.directory / "server.pem"

    @property
    def server_key_path(self) -> Path:
        return self.directory / "server.key"

    def write_bundles(self) -> None:
        write_atomically(self.bundle_path, self.bundle_pem)
        write_atomically(self.client_ca_path, self.client_ca_pem)

    def ensure_server_certificate(self, hierarchy: pki.CaHierarchy, hosts: list[str]) -> bool:
        """Issue nginx's server certificate if it is missing, expiring, or names other hosts."""
        if self._server_cert_current(hierarchy, hosts):
            return False
        key, cert = pki.issue_server_certificate(
            hierarchy.intermediate_key, hierarchy.intermediate_cert, hosts
        )
        write_atomically(self.server_key_path, pki.private_key_pem(key).decode(), mode=0o600)
        write_atomically(
            self.server_cert_path, pki.cert_pem(cert) + pki.cert_pem(hierarchy.intermediate_cert)
        )
        return True

    def _server_cert_current(self, hierarchy: pki.CaHierarchy, hosts: list[str]) -> bool:
        if not (self.server_cert_path.exists() and self.server_key_path.exists()):
            return False
        try:
            cert = pki.load_pem_chain(self.server_cert_path.read_bytes())[0]
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            key = pki.load_private_key(self.server_key_path.read_bytes())
            # Signed by the *current* intermediate key, and the key on disk belongs to it.
            cert.verify_directly_issued_by(hierarchy.intermediate_cert)
        except (ValueError, TypeError, x509.ExtensionNotFound, InvalidSignature):
            return False
        if key.public_key() != cert.public_key():
            return False
        names = {str(v) for v in sans.get_values_for_type(x509.IPAddress)} | set(
            sans.get_values_for_type(x509.DNSName)
        )
        return (
            cert.issuer == hierarchy.intermediate_cert.subject
            and names == set(hosts)
            and cert.not_valid_after_utc - pki.utcnow() > SERVER_CERT_RENEW_BEFORE
        )
