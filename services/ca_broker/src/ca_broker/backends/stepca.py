"""The step-ca backend: a real smallstep step-ca (0.19+) signs, with a JWK provisioner whose X.509
template (``deploy/step-ca/templates/federation-leaf.tpl``) builds the federation profile.

How a certificate is obtained, per :meth:`StepCaBackend.issue`:

1. a fresh one-time token (OTT) is minted: a JWS compact, ES256 (raw ``r || s``), header
   ``{alg, kid, typ: JWT}``, signed with the provisioner's private key. Its claims carry the peer
   name (``sub``), the audience ``<STEP_CA_URL>/1.0/sign``, a lifetime of at most five minutes
   (step-ca does not cap it, so we do), a random 128-bit ``jti`` (step-ca refuses a second use of
   a ``jti``: a stolen token is single use) and the claim
   ``mosaic = {grant_id, subject_user_id, peer_id}`` (canonical lowercase UUIDs);
2. ``POST /1.0/sign {"csr", "ott", "notAfter"}``; the template reads the ids from the *signed*
   token (``.Token.mosaic.*``), never from the unsigned ``templateData`` of the request;
3. the leaf and step-ca's chain are returned; the broker's post-issuance check
   (``ca_broker.postcheck``) then verifies them itself.

The trust anchor is ``STEP_CA_ROOT_CERT_PATH``: it pins step-ca's TLS server and is the root the
issued certificates must chain to. step-ca 0.19 has no endpoint that serves the intermediate, so
at start the backend reads it from the TLS handshake of ``GET /1.0/roots`` (step-ca's server
certificate is issued by the same intermediate as the leaves; the chain is the one OpenSSL
verified against the pinned root). If the running Python cannot expose that chain, the
intermediates are learnt from the first sign response (``certChain``) instead. Every sign
response's chain is what is returned for that certificate, and the post-check verifies it.

Secrets: the provisioner private key, the password that decrypts it and every OTT are never
logged and never put in an exception; step-ca's response bodies are neither (only the status
code is logged).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
import secrets
import ssl
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from ca_broker.backends import IssuedChain, IssueRequest
from ca_broker.profile import peer_uri
from ca_broker.settings import Settings
from fedcore import pki
from fedcore.broker_client import CaRefused, CaUnavailable

log = logging.getLogger("ca_broker.backends.stepca")

# ---------------------------------------------------------------------------------------------
# Limits and constants
# ---------------------------------------------------------------------------------------------

JWE_ALG: Final = "PBES2-HS256+A128KW"
JWE_ENC: Final = "A256GCM"
# step's default is 100 000 iterations. Below 1 000 the password is barely stretched; above
# 1 000 000 a hostile header could make start-up spend minutes in PBKDF2.
P2C_MIN: Final = 1_000
P2C_MAX: Final = 1_000_000
MAX_JWE_CHARS: Final = 16_384
MAX_JWK_CHARS: Final = 8_192

OTT_TTL_SECONDS: Final = 120
MAX_OTT_TTL_SECONDS: Final = 300
# A sign response is a few KiB; anything far larger is not step-ca speaking.
MAX_RESPONSE_BYTES: Final = 1_048_576
MAX_PROVISIONER_PAGES: Final = 50

TIMEOUT: Final = httpx.Timeout(connect=3.0, read=10.0, write=5.0, pool=5.0)
LIMITS: Final = httpx.Limits(max_connections=20, max_keepalive_connections=10)
# Only failures to *reach* step-ca are retried: the request was never sent, so a retry cannot
# issue a second certificate. Once a sign was sent it is not idempotent (and its token is burnt).
CONNECT_ERRORS: Final = (httpx.ConnectError, httpx.ConnectTimeout)
CONNECT_ATTEMPTS: Final = 3

_B64URL_RE: Final = re.compile(r"[A-Za-z0-9_-]*", re.ASCII)
_P256_COORDINATE_BYTES: Final = 32


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


class CaBadGateway(CaRefused):
    """step-ca answered with a server error or with something that is not a usable answer
    (``CaUnavailable`` / ``CaRefused`` are the broker client's, shared by every CA caller)."""

    default_code = "ca_unavailable"


class ProvisionerKeyError(ValueError):
    """The provisioner key could not be loaded. The message never contains key material or the
    password, only the rule that failed."""


class StepCaConfigError(ValueError):
    """The step-ca settings do not describe a usable CA (bad URL, root, provisioner...)."""


# ---------------------------------------------------------------------------------------------
# JOSE helpers
# ---------------------------------------------------------------------------------------------


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: object) -> bytes:
    """Strict unpadded base64url (RFC 7515 §2); the ``ValueError`` names nothing of the input."""
    if not isinstance(text, str) or _B64URL_RE.fullmatch(text) is None or len(text) % 4 == 1:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ProvisionerKeyError(f"{what} is not valid JSON") from None
    if not isinstance(value, dict):
        raise ProvisionerKeyError(f"{what} is not a JSON object")
    return value


def decrypt_provisioner_jwe(compact: str, password: bytes) -> bytes:
    """Decrypt step's password-protected JWE (a JWK provisioner's ``encryptedKey``).

    RFC 7518 §4.8 + §5.3: PBES2-HS256+A128KW key wrapping, A256GCM content encryption.
    salt = UTF8(alg) || 0x00 || p2s; PBKDF2-HMAC-SHA256(password, salt, p2c) -> 16-byte KEK;
    AES key unwrap (RFC 3394) -> 32-byte CEK; AES-256-GCM(iv, ciphertext || tag,
    aad = ASCII(protected header)). Any other ``alg``/``enc``, a ``zip`` or ``crit`` header, or
    ``p2c`` outside :data:`P2C_MIN`..:data:`P2C_MAX` is refused before any work is done.
    Raises :class:`ProvisionerKeyError`; messages never contain the password or key material.
    """
    if not isinstance(compact, str) or len(compact) > MAX_JWE_CHARS:
        raise ProvisionerKeyError("encrypted provisioner key is not a JWE compact serialization")
    parts = compact.strip().split(".")
    if len(parts) != 5:
        raise ProvisionerKeyError("encrypted provisioner key is not a JWE compact serialization")
    protected_b64, wrapped_b64, iv_b64, ciphertext_b64, tag_b64 = parts
    try:
        header_raw = b64url_decode(protected_b64)
        wrapped = b64url_decode(wrapped_b64)
        iv = b64url_decode(iv_b64)
        ciphertext = b64url_decode(ciphertext_b64)
        tag = b64url_decode(tag_b64)
    except ValueError:
        raise ProvisionerKeyError("encrypted provisioner key has a malformed part") from None
    header = _json_object(header_raw, "encrypted provisioner key header")
    if header.get("alg") != JWE_ALG or header.get("enc") != JWE_ENC:
        raise ProvisionerKeyError(
            f"encrypted provisioner key must use alg {JWE_ALG} and enc {JWE_ENC}"
        )
    if "zip" in header or "crit" in header:
        raise ProvisionerKeyError("encrypted provisioner key uses unsupported header parameters")
    if header.get("cty", "jwk+json") != "jwk+json":
        raise ProvisionerKeyError("encrypted provisioner key does not contain a JWK")
    p2c = header.get("p2c")
    if not isinstance(p2c, int) or isinstance(p2c, bool) or not P2C_MIN <= p2c <= P2C_MAX:
        raise ProvisionerKeyError(
            f"encrypted provisioner key p2c must be an integer in {P2C_MIN}..{P2C_MAX}"
        )
    try:
        p2s = b64url_decode(header.get("p2s"))
    except ValueError:
        raise ProvisionerKeyError("encrypted provisioner key has a malformed p2s") from None
    if len(p2s) < 8:  # RFC 7518 §4.8.1.1
        raise ProvisionerKeyError("encrypted provisioner key salt (p2s) is too short")
    if len(wrapped) != 40 or len(iv) != 12 or len(tag) != 16:
        raise ProvisionerKeyError("encrypted provisioner key has parts of the wrong size")
    salt = JWE_ALG.encode("ascii") + b"\x00" + p2s
    kek = PBKDF2HMAC(algorithm=hashes.SHA256(), length=16, salt=salt, iterations=p2c).derive(
        password
    )
    try:
        cek = aes_key_unwrap(kek, wrapped)
        return AESGCM(cek).decrypt(iv, ciphertext + tag, protected_b64.encode("ascii"))
    except (InvalidUnwrap, InvalidTag, ValueError):
        # A wrong password fails the key unwrap's integrity check; a tampered part fails GCM.
        raise ProvisionerKeyError(
            "could not decrypt the provisioner key: wrong password or corrupted key"
        ) from None


def _coordinate(jwk: Mapping[str, Any], name: str) -> int:
    try:
        raw = b64url_decode(jwk.get(name))
    except ValueError:
        raise ProvisionerKeyError(f"provisioner JWK member {name!r} is not base64url") from None
    if len(raw) != _P256_COORDINATE_BYTES:
        raise ProvisionerKeyError(f"provisioner JWK member {name!r} has the wrong length")
    return int.from_bytes(raw, "big")


def jwk_thumbprint(x: int, y: int) -> str:
    """RFC 7638 SHA-256 thumbprint of an EC P-256 public key (step uses it as the ``kid``)."""
    members = {
        "crv": "P-256",
        "kty": "EC",
        "x": b64url_encode(x.to_bytes(_P256_COORDINATE_BYTES, "big")),
        "y": b64url_encode(y.to_bytes(_P256_COORDINATE_BYTES, "big")),
    }
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode("ascii")
    return b64url_encode(hashlib.sha256(canonical).digest())


class ProvisionerKey:
    """The provisioner's EC P-256 private key and its ``kid``. Its repr shows the kid only."""

    __slots__ = ("_private_key", "kid")

    def __init__(self, private_key: ec.EllipticCurvePrivateKey, kid: str) -> None:
        self._private_key = private_key
        self.kid = kid

    def __repr__(self) -> str:
        return f"ProvisionerKey(kid={self.kid!r})"

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._private_key.public_key()

    def sign_es256(self, signing_input: bytes) -> bytes:
        """JWS ES256: the raw 64-byte ``r || s`` (RFC 7518 §3.4), not the DER encoding."""
        der = self._private_key.sign(signing_input, ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return r.to_bytes(_P256_COORDINATE_BYTES, "big") + s.to_bytes(_P256_COORDINATE_BYTES, "big")


def load_provisioner_jwk(source: str | bytes | Mapping[str, Any]) -> ProvisionerKey:
    """Load a private EC P-256 JWK (step's ``provisioner_key.json`` / decrypted ``encryptedKey``).

    Checks: ``kty`` EC, ``crv`` P-256, ``d``/``x``/``y`` of 32 bytes, ``d`` matches ``x``/``y``,
    ``alg`` (if present) ES256, ``use`` (if present) sig, and ``kid`` (if present) equal to the
    RFC 7638 thumbprint, which is the ``kid`` used otherwise. Raises :class:`ProvisionerKeyError`.
    """
    if isinstance(source, Mapping):
        jwk: Mapping[str, Any] = source
    else:
        if len(source) > MAX_JWK_CHARS:
            raise ProvisionerKeyError("provisioner JWK is too large")
        raw = source.encode("utf-8") if isinstance(source, str) else source
        jwk = _json_object(raw, "provisioner JWK")
    if jwk.get("kty") != "EC" or jwk.get("crv") != "P-256":
        raise ProvisionerKeyError("provisioner JWK must be an EC key on curve P-256")
    if jwk.get("alg", "ES256") != "ES256" or jwk.get("use", "sig") != "sig":
        raise ProvisionerKeyError("provisioner JWK must be an ES256 signing key")
    if "d" not in jwk:
        raise ProvisionerKeyError("provisioner JWK has no private part")
    x, y, d = _coordinate(jwk, "x"), _coordinate(jwk, "y"), _coordinate(jwk, "d")
    try:
        private_key = ec.derive_private_key(d, ec.SECP256R1())
    except ValueError:
        raise ProvisionerKeyError("provisioner JWK private part is out of range") from None
    numbers = private_key.public_key().public_numbers()
    if (numbers.x, numbers.y) != (x, y):
        raise ProvisionerKeyError("provisioner JWK private part does not match x/y")
    kid = jwk_thumbprint(x, y)
    if "kid" in jwk and jwk["kid"] != kid:
        raise ProvisionerKeyError("provisioner JWK kid is not its RFC 7638 thumbprint")
    return ProvisionerKey(private_key, kid)


def sign_jwt(key: ProvisionerKey, claims: Mapping[str, Any]) -> str:
    """A JWS compact serialization, ES256, header ``{alg, kid, typ: JWT}``."""
    header = {"alg": "ES256", "kid": key.kid, "typ": "JWT"}
    signing_input = (
        b64url_encode(json.dumps(header, separators=(",", ":")).encode("utf-8"))
        + "."
        + b64url_encode(json.dumps(claims, separators=(",", ":")).encode("utf-8"))
    )
    signature = key.sign_es256(signing_input.encode("ascii"))
    return f"{signing_input}.{b64url_encode(signature)}"


# ---------------------------------------------------------------------------------------------
# Configuration helpers
# ---------------------------------------------------------------------------------------------


def normalise_ca_url(url: str) -> str:
    """``https://host[:port]`` with no path: step-ca checks the token ``aud`` is exactly
    ``https://<its dns name>[:port]/1.0/sign``, and an OTT must never travel in clear."""
    parts = urlsplit(url.strip())
    if parts.scheme != "https" or not parts.hostname:
        raise StepCaConfigError("stepca_url must be an https:// URL")
    if parts.path.strip("/") or parts.query or parts.fragment or parts.username or parts.password:
        raise StepCaConfigError("stepca_url must be https://host[:port] without path or query")
    return f"https://{parts.netloc}"


def load_root(path: str) -> x509.Certificate:
    try:
        certs = pki.load_pem_chain(Path(path).read_bytes())
    except OSError:
        raise StepCaConfigError("stepca_root_cert_path cannot be read") from None
    except ValueError:
        raise StepCaConfigError("stepca_root_cert_path holds no PEM certificate") from None
    if len(certs) != 1:
        raise StepCaConfigError("stepca_root_cert_path must hold exactly one certificate")
    root = certs[0]
    try:
        basic = root.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise StepCaConfigError("stepca_root_cert_path is not a CA certificate") from None
    if not basic.ca or root.issuer != root.subject:
        raise StepCaConfigError("stepca_root_cert_path is not a self-signed CA certificate")
    return root


async def load_provisioner_key(settings: Settings) -> ProvisionerKey:
    """From ``stepca_provisioner_key_json`` if set, else by decrypting
    ``stepca_provisioner_encrypted_key`` with ``stepca_provisioner_password``."""
    if settings.stepca_provisioner_key_json is not None:
        return load_provisioner_jwk(settings.stepca_provisioner_key_json.get_secret_value())
    encrypted = settings.stepca_provisioner_encrypted_key
    password = settings.stepca_provisioner_password
    if encrypted is None or password is None:
        raise ProvisionerKeyError("no provisioner key configured")
    # step trims trailing whitespace from its password files, and encrypted the key with that.
    secret = password.get_secret_value().rstrip().encode("utf-8")
    # PBKDF2 with up to P2C_MAX iterations: keep it off the event loop.
    plaintext = await asyncio.to_thread(
        decrypt_provisioner_jwe, encrypted.get_secret_value(), secret
    )
    return load_provisioner_jwk(plaintext)


def _tls_verified_chain(response: httpx.Response) -> list[x509.Certificate]:
    """The chain OpenSSL verified for this response's connection (leaf first, root last), or
    ``[]`` if the Python runtime does not expose it."""
    stream = response.extensions.get("network_stream")
    ssl_object = stream.get_extra_info("ssl_object") if stream is not None else None
    if ssl_object is None:
        return []
    # Public as SSLObject.get_verified_chain() (DER bytes) from Python 3.13; in 3.10-3.12 the
    # same OpenSSL call is only reachable on the private _sslobj (returning _ssl.Certificate).
    getter = getattr(ssl_object, "get_verified_chain", None)
    if getter is None:
        getter = getattr(getattr(ssl_object, "_sslobj", None), "get_verified_chain", None)
    if getter is None:
        return []
    try:
        chain: list[x509.Certificate] = []
        for item in getter():
            if isinstance(item, bytes):
                chain.append(x509.load_der_x509_certificate(item))
            else:
                chain.extend(pki.load_pem_chain(str(item.public_bytes())))
        return chain
    except (AttributeError, TypeError, ValueError):
        return []


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except (x509.ExtensionNotFound, ValueError):
        return False


@dataclass(frozen=True)
class _Answer:
    status_code: int
    body: Any


# ---------------------------------------------------------------------------------------------
# The backend
# ---------------------------------------------------------------------------------------------


class StepCaBackend:
    name = "stepca"

    def __init__(
        self,
        *,
        ca_url: str,
        provisioner_name: str,
        key: ProvisionerKey,
        root: x509.Certificate,
        client: httpx.AsyncClient,
        token_ttl_seconds: int = OTT_TTL_SECONDS,
        allow_renewal: bool = False,
    ) -> None:
        self.allow_renewal = allow_renewal
        if not 1 <= token_ttl_seconds <= MAX_OTT_TTL_SECONDS:
            raise StepCaConfigError(f"token lifetime must be 1..{MAX_OTT_TTL_SECONDS} seconds")
        self.ca_url = ca_url
        self.sign_audience = f"{ca_url}/1.0/sign"
        self.provisioner_name = provisioner_name
        self.root = root
        self.token_ttl_seconds = token_ttl_seconds
        self._key = key
        self._client = client
        self._intermediates: list[x509.Certificate] = []

    def __repr__(self) -> str:
        return f"StepCaBackend(ca_url={self.ca_url!r}, provisioner={self.provisioner_name!r})"

    # -- construction -------------------------------------------------------------------------

    @classmethod
    async def create(cls, settings: Settings) -> StepCaBackend:
        """Load root and key, open the one HTTPS client, and check step-ca agrees with both."""
        if not (
            settings.stepca_url
            and settings.stepca_root_cert_path
            and settings.stepca_provisioner_name
        ):
            raise StepCaConfigError(
                "backend=stepca needs stepca_url, stepca_root_cert_path and stepca_provisioner_name"
            )
        ca_url = normalise_ca_url(settings.stepca_url)
        root = load_root(settings.stepca_root_cert_path)
        key = await load_provisioner_key(settings)
        client = cls.make_client(ca_url, root)
        backend = cls(
            ca_url=ca_url,
            provisioner_name=settings.stepca_provisioner_name,
            key=key,
            root=root,
            client=client,
            allow_renewal=settings.stepca_allow_renewal,
        )
        try:
            await backend.bootstrap()
        except BaseException:
            await client.aclose()
            raise
        return backend

    @staticmethod
    def make_client(ca_url: str, root: x509.Certificate) -> httpx.AsyncClient:
        # Only the pinned root is trusted (cadata given: no system store is loaded).
        context = ssl.create_default_context(cadata=pki.cert_pem(root))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return httpx.AsyncClient(
            base_url=ca_url,
            verify=context,
            timeout=TIMEOUT,
            limits=LIMITS,
            follow_redirects=False,
            trust_env=False,  # no proxy / CA bundle from the environment for the CA's traffic
            headers={"User-Agent": "mosaic-ca-broker"},
        )

    async def bootstrap(self) -> None:
        """Check step-ca serves our root, learn the intermediates, check our provisioner."""
        response, answer = await self._request("GET", "/1.0/roots", what="roots")
        # step-ca 0.19 answers GET /roots with 201 Created.
        crts = answer.body.get("crts") if isinstance(answer.body, dict) else None
        if answer.status_code not in (200, 201) or not isinstance(crts, list):
            raise CaBadGateway("step-ca did not list its roots")
        served: set[str] = set()
        for pem in crts:
            if isinstance(pem, str):
                try:
                    served.update(pki.fingerprint_sha256(c) for c in pki.load_pem_chain(pem))
                except ValueError:
                    continue
        if pki.fingerprint_sha256(self.root) not in served:
            raise StepCaConfigError("the configured step-ca root is not one of step-ca's roots")
        chain = _tls_verified_chain(response)
        if len(chain) >= 3 and chain[-1] == self.root and _chains_to(chain[1:-1], self.root):
            self._intermediates = chain[1:-1]
        else:
            log.warning("step-ca intermediates unknown until the first sign (no TLS chain)")
        await self._check_provisioner()

    async def _check_provisioner(self) -> None:
        cursor = ""
        for _ in range(MAX_PROVISIONER_PAGES):
            params = {"limit": "100", **({"cursor": cursor} if cursor else {})}
            _, answer = await self._request(
                "GET", "/1.0/provisioners", what="provisioners", params=params
            )
            body = answer.body
            if answer.status_code != 200 or not isinstance(body, dict):
                raise CaBadGateway("step-ca did not list its provisioners")
            for item in body.get("provisioners") or []:
                if (
                    isinstance(item, dict)
                    and item.get("name") == self.provisioner_name
                    and item.get("type") == "JWK"
                ):
                    self._check_provisioner_entry(item)
                    return
            cursor = body.get("nextCursor") or ""
            if not isinstance(cursor, str) or not cursor:
                break
        raise StepCaConfigError("step-ca has no JWK provisioner named by stepca_provisioner_name")

    def _check_provisioner_entry(self, item: Mapping[str, Any]) -> None:
        public = item.get("key")
        if not isinstance(public, dict) or public.get("kid") != self._key.kid:
            raise StepCaConfigError("the provisioner key's kid does not match step-ca's")
        numbers = self._key.public_key.public_numbers()
        try:
            same = (_coordinate(public, "x"), _coordinate(public, "y")) == (numbers.x, numbers.y)
        except ProvisionerKeyError:
            same = False
        if not same:
            raise StepCaConfigError("the provisioner key does not match step-ca's public key")
        claims = item.get("claims")
        if not (isinstance(claims, dict) and claims.get("disableRenewal") is True):
            # A renewal copies the extensions without a token and bypasses the broker's records
            # (the verbs would refuse the unrecorded serial, but nothing should mint it).
            if not self.allow_renewal:
                raise StepCaConfigError(
                    "the step-ca provisioner allows renewal; set claims.disableRenewal "
                    "(or FED_CA_BROKER_STEPCA_ALLOW_RENEWAL=true to accept it)"
                )
            log.warning(
                "step-ca provisioner allows renewal (accepted by configuration)",
                extra={"provisioner": self.provisioner_name},
            )

    # -- the protocol -------------------------------------------------------------------------

    def mint_sign_token(self, request: IssueRequest, *, now: int | None = None) -> str:
        """A fresh one-time token for ``POST /1.0/sign`` of this request."""
        issued_at = int(time.time()) if now is None else now
        claims: dict[str, Any] = {
            "iss": self.provisioner_name,
            # step-ca's JWK provisioner requires sub == the CSR's CN; the CN already passed our
            # CSR checks. The certificate's CN comes from the signed mosaic.peer_name instead.
            "sub": request.csr.common_name,
            "aud": self.sign_audience,
            "iat": issued_at,
            "nbf": issued_at,
            "exp": issued_at + self.token_ttl_seconds,
            "jti": secrets.token_hex(16),
            # What the certificate's SAN will be (the template builds it from mosaic.peer_id).
            "sans": [peer_uri(request.peer_id)],
            "mosaic": {
                "grant_id": _canonical(request.grant_id),
                "subject_user_id": _canonical(request.subject_user_id),
                "peer_id": _canonical(request.peer_id),
                "peer_name": request.peer_name,
            },
        }
        return sign_jwt(self._key, claims)

    async def issue(self, request: IssueRequest) -> IssuedChain:
        lifetime = max(int(request.lifetime.total_seconds()), 1)
        response_body: Any = None
        status = 0
        try:
            async for attempt in self._connect_retrying():
                with attempt:
                    # A fresh token per attempt: a token is single use once step-ca has seen it.
                    body = {
                        "csr": request.csr_pem,
                        "ott": self.mint_sign_token(request),
                        "notAfter": f"{lifetime}s",
                    }
                    response = await self._client.post("/1.0/sign", json=body)
                    status = response.status_code
                    response_body = self._parse_body(response)
        except httpx.TransportError as exc:
            log.warning("step-ca unreachable", extra={"exception_type": type(exc).__name__})
            raise CaUnavailable("the certificate authority is unreachable") from None
        if status >= 500:
            log.warning("step-ca sign failed", extra={"status_code": status})
            raise CaBadGateway(f"the certificate authority failed (HTTP {status})")
        if status >= 400:
            log.warning("step-ca refused sign", extra={"status_code": status})
            raise CaRefused(f"the certificate authority refused the request (HTTP {status})")
        if status not in (200, 201) or not isinstance(response_body, dict):
            log.warning("step-ca sign answer unusable", extra={"status_code": status})
            raise CaBadGateway("the certificate authority returned an unusable answer")
        return self._issued_chain(response_body)

    def bundle_pem(self) -> str:
        return pki.cert_pem(self.root)

    def intermediates_pem(self) -> str:
        return "".join(pki.cert_pem(cert) for cert in self._intermediates)

    async def aclose(self) -> None:
        await self._client.aclose()

    # -- internals ----------------------------------------------------------------------------

    @staticmethod
    def _connect_retrying() -> AsyncRetrying:
        return AsyncRetrying(
            retry=retry_if_exception_type(CONNECT_ERRORS),
            stop=stop_after_attempt(CONNECT_ATTEMPTS),
            wait=wait_exponential(multiplier=0.1, max=1.0),
            reraise=True,
        )

    @staticmethod
    def _parse_body(response: httpx.Response) -> Any:
        if len(response.content) > MAX_RESPONSE_BYTES:
            return None
        try:
            return response.json()
        except ValueError:
            return None

    async def _request(
        self, method: str, path: str, *, what: str, params: Mapping[str, str] | None = None
    ) -> tuple[httpx.Response, _Answer]:
        try:
            async for attempt in self._connect_retrying():
                with attempt:
                    response = await self._client.request(method, path, params=params)
        except httpx.TransportError as exc:
            log.warning(
                "step-ca unreachable", extra={"exception_type": type(exc).__name__, "call": what}
            )
            raise CaUnavailable("the certificate authority is unreachable") from None
        return response, _Answer(response.status_code, self._parse_body(response))

    def _issued_chain(self, body: Mapping[str, Any]) -> IssuedChain:
        crt = body.get("crt")
        if not isinstance(crt, str):
            raise CaBadGateway("the certificate authority returned an unusable answer")
        chain_items = body.get("certChain")
        if isinstance(chain_items, list) and len(chain_items) >= 2:
            intermediates_pem = [item for item in chain_items[1:] if isinstance(item, str)]
        elif isinstance(body.get("ca"), str):
            intermediates_pem = [body["ca"]]
        else:
            intermediates_pem = []
        chain_pem = "".join(pem if pem.endswith("\n") else pem + "\n" for pem in intermediates_pem)
        self._remember_intermediates(chain_pem)
        return IssuedChain(cert_pem=crt if crt.endswith("\n") else crt + "\n", chain_pem=chain_pem)

    def _remember_intermediates(self, chain_pem: str) -> None:
        """Keep the served intermediates current (the post-check verifies each answer anyway)."""
        try:
            served = pki.load_pem_chain(chain_pem) if chain_pem.strip() else []
        except ValueError:
            return
        if not served or served == self._intermediates or not _chains_to(served, self.root):
            return
        if self._intermediates:
            log.warning("step-ca intermediates changed; restart the broker to republish them")
        self._intermediates = served


def _canonical(value: uuid.UUID) -> str:
    """``str(UUID)`` is the canonical form the template insists on: 36 lowercase characters."""
    return str(value)


def _chains_to(intermediates: list[x509.Certificate], root: x509.Certificate) -> bool:
    """Each certificate is a CA directly issued by the next one, the last by ``root``."""
    issuers = [*intermediates[1:], root]
    for cert, issuer in zip(intermediates, issuers, strict=True):
        if not _is_ca(cert):
            return False
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            return False
    return True
