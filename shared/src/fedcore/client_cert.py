"""Re-verifying the client certificate nginx forwards (DESIGN §5, steps 2-3).

nginx has already verified the chain, but the verbs service does not trust a header: it parses the
URL-encoded PEM from ``X-Client-Cert``, verifies it against the CA bundle with
``cryptography.x509.verification`` (chain, validity window, clientAuth) and decodes the
federation OIDs with the DER codec.

Verification costs ~50 µs-1 ms; results are cached by the certificate's SHA-256 fingerprint (the
hash of its whole DER, so a different certificate can never hit another's entry). The cache is
bounded, and an entry never outlives the certificate's ``notAfter``. Only successes are cached.
Revocation is *not* decided here (it is a database lookup on every request).
"""

from __future__ import annotations

import threading
import urllib.parse
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509

from fedcore import pki
from fedcore.errors import Unauthorized
from fedcore.federation_oids import FederationIdentity, extract_federation_identity

MAX_FORWARDED_CERT_BYTES = 16_384


class ClientCertInvalid(Unauthorized):
    default_code = "client_cert_invalid"


@dataclass(frozen=True)
class VerifiedClientCert:
    fingerprint_sha256: str
    serial: str
    not_after: datetime
    identity: FederationIdentity


class ForwardedCertVerifier:
    def __init__(
        self,
        roots: list[x509.Certificate],
        intermediates: list[x509.Certificate],
        cache_size: int = 4096,
    ) -> None:
        if not roots:
            raise ValueError("no trusted roots")
        self.roots = roots
        self.intermediates = intermediates
        self.cache_size = cache_size
        self._cache: OrderedDict[str, VerifiedClientCert] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def from_bundle_file(cls, path: str | Path, cache_size: int = 4096) -> ForwardedCertVerifier:
        """The bundle holds self-signed roots and the intermediates that chain to them."""
        certs = pki.load_pem_chain(Path(path).read_bytes())
        roots = [c for c in certs if c.issuer == c.subject]
        intermediates = [c for c in certs if c.issuer != c.subject]
        return cls(roots, intermediates, cache_size)

    def verify(self, escaped_pem: str | None, now: datetime | None = None) -> VerifiedClientCert:
        now = now or pki.utcnow()
        if not escaped_pem:
            raise ClientCertInvalid("no client certificate was forwarded")
        if len(escaped_pem) > MAX_FORWARDED_CERT_BYTES:
            raise ClientCertInvalid("forwarded client certificate is too large")
        pem = urllib.parse.unquote(escaped_pem)
        try:
            certs = pki.load_pem_chain(pem)
        except ValueError:
            raise ClientCertInvalid("forwarded client certificate does not parse") from None
        if len(certs) != 1:
            raise ClientCertInvalid("exactly one client certificate must be forwarded")
        cert = certs[0]
        fingerprint = pki.fingerprint_sha256(cert)

        cached = self._cached(fingerprint, now)
        if cached is not None:
            return cached

        # The OIDs are decoded first (a pure parse): the chain verifier also refuses a doubled
        # extension, and "malformed" is the more precise answer for it. Both are 401.
        identity = extract_federation_identity(cert)  # 401 client_cert_malformed
        try:
            pki.verify_client_certificate(cert, self.intermediates, self.roots, at=now)
        except pki.ChainVerificationError:
            raise ClientCertInvalid("client certificate failed verification") from None
        verified = VerifiedClientCert(
            fingerprint_sha256=fingerprint,
            serial=pki.serial_hex(cert),
            not_after=cert.not_valid_after_utc,
            identity=identity,
        )
        self._store(verified)
        return verified

    def _cached(self, fingerprint: str, now: datetime) -> VerifiedClientCert | None:
        with self._lock:
            entry = self._cache.get(fingerprint)
            if entry is None:
                return None
            if entry.not_after <= now:  # expired since it was cached: verify (and fail) afresh
                del self._cache[fingerprint]
                return None
            self._cache.move_to_end(fingerprint)
            return entry

    def _store(self, verified: VerifiedClientCert) -> None:
        with self._lock:
            self._cache[verified.fingerprint_sha256] = verified
            self._cache.move_to_end(verified.fingerprint_sha256)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
