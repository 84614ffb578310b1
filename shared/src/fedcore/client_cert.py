"""Re-verifying the client certificate nginx forwards (DESIGN §5, steps 2-3).

nginx has already verified the chain, but the verbs service does not trust a header: it parses the
URL-encoded PEM from ``X-Client-Cert``, verifies it against the CA bundle with
``cryptography.x509.verification`` (chain, validity window, clientAuth) and decodes the
federation OIDs with the DER codec.

Verification costs ~50 µs-1 ms; results are cached by the SHA-256 of the forwarded header text
itself, checked before anything is parsed: a cache hit costs one hash of ~1.5 kB instead of URL
decoding, PEM/DER parsing and fingerprinting (~60 µs). The text determines the certificate, so a
different certificate can never hit another's entry (the same certificate sent as different text
only gets an entry of its own). The cache is bounded, and an entry never outlives the
certificate's ``notAfter``. Only successes are cached. Revocation is *not* decided here (it is a
database lookup on every request).
"""

from __future__ import annotations

import hashlib
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
        # SHA-256 of the forwarded text -> the verified certificate
        self._cache: OrderedDict[bytes, VerifiedClientCert] = OrderedDict()
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
        key = hashlib.sha256(escaped_pem.encode()).digest()
        cached = self._cached(key, now)
        if cached is not None:
            return cached

        pem = urllib.parse.unquote(escaped_pem)
        try:
            certs = pki.load_pem_chain(pem)
        except ValueError:
            raise ClientCertInvalid("forwarded client certificate does not parse") from None
        if len(certs) != 1:
            raise ClientCertInvalid("exactly one client certificate must be forwarded")
        cert = certs[0]
        fingerprint = pki.fingerprint_sha256(cert)

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
        self._store(key, verified)
        return verified

    def _cached(self, key: bytes, now: datetime) -> VerifiedClientCert | None:
        with self._lock:
            entry = self._cache.get(key)
            if entry is None:
                return None
            if entry.not_after <= now:  # expired since it was cached: verify (and fail) afresh
                del self._cache[key]
                return None
            self._cache.move_to_end(key)
            return entry

    def _store(self, key: bytes, verified: VerifiedClientCert) -> None:
        with self._lock:
            self._cache[key] = verified
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
