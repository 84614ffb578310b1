#!/usr/bin/env python3
"""End-to-end proof (and reference client code) for the mosaic step-ca 0.19 setup.

Self-contained: Python standard library + ``cryptography`` only.

What it shows, against a real server:
  * decrypting a JWK provisioner's ``encryptedKey`` (JWE compact,
    PBES2-HS256+A128KW / A256GCM) with the CA password, and that it equals the
    plain ``provisioner_key.json`` written by ``mosaic-step-ca-init``;
  * building a one-time token (JWS compact, ES256) for ``POST /1.0/sign``;
  * signing a CSR and checking the federation profile of the returned leaf:
    CN = token sub, SAN = URI urn:mosaic:federation:peer:<peer id> only,
    KU digitalSignature, EKU clientAuth, CA:FALSE,
    1.3.6.1.4.1.99999.1 / .2 = DER UTF8String(grant id / subject user id),
    all three ids read from the signed claim ``mosaic`` of the token;
  * the ``federation-leaf-missing-oid.tpl`` provisioner drops OID .2;
  * token replay (same jti) is refused; non-UUID / missing / tampered claims
    are refused; unsigned ``templateData`` cannot supply the ids;
  * step-ca 0.19 facts: GET /roots -> 201, passive-only revocation, no CRL,
    renewal copies the custom extensions and is refused once revoked.

Usage (see README.md):
  python3 deploy/step-ca/prove.py --ca-dir /tmp/stepca-try \
      [--server-bin .cache/step-ca/mosaic-step-ca]   # start + stop the server
Without --server-bin the CA described by <ca-dir>/config/mosaic.json must
already be running.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import os
import secrets
import signal
import ssl
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

OID_GRANT_ID = x509.ObjectIdentifier("1.3.6.1.4.1.99999.1")
OID_SUBJECT_USER_ID = x509.ObjectIdentifier("1.3.6.1.4.1.99999.2")
OID_STEP_PROVISIONER = x509.ObjectIdentifier("1.3.6.1.4.1.37476.9000.64.1")

# --------------------------------------------------------------------------
# base64url / JOSE helpers (reference code for the Python backend)
# --------------------------------------------------------------------------


def b64url_decode(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def b64url_encode(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode("ascii")


def decrypt_step_jwe(compact: str, password: bytes) -> bytes:
    """Decrypt step's password-protected JWE (as in ca.json ``encryptedKey``).

    RFC 7518: PBES2-HS256+A128KW key wrapping, A256GCM content encryption.
      salt = UTF8(alg) || 0x00 || b64url_decode(p2s); PBKDF2-HMAC-SHA256(p2c)
      -> 16-byte KEK; AES key unwrap (RFC 3394) -> 32-byte CEK;
      AES-256-GCM(iv, ciphertext || tag, aad = ASCII(protected header b64)).
    """
    parts = compact.split(".")
    if len(parts) != 5:
        raise ValueError("not a JWE compact serialization")
    prot_b64, ek_b64, iv_b64, ct_b64, tag_b64 = parts
    header = json.loads(b64url_decode(prot_b64))
    alg, enc = header.get("alg"), header.get("enc")
    if alg != "PBES2-HS256+A128KW" or enc != "A256GCM":
        raise ValueError(f"unsupported JWE alg/enc {alg}/{enc}")
    p2c = int(header["p2c"])
    if not 1000 <= p2c <= 10_000_000:
        raise ValueError(f"refusing p2c={p2c}")
    salt = alg.encode("ascii") + b"\x00" + b64url_decode(header["p2s"])
    kek = PBKDF2HMAC(algorithm=hashes.SHA256(), length=16, salt=salt, iterations=p2c).derive(
        password
    )
    cek = aes_key_unwrap(kek, b64url_decode(ek_b64))
    if len(cek) != 32:
        raise ValueError("unexpected CEK length")
    return AESGCM(cek).decrypt(
        b64url_decode(iv_b64),
        b64url_decode(ct_b64) + b64url_decode(tag_b64),
        prot_b64.encode("ascii"),
    )


def jwk_thumbprint(jwk: dict) -> str:
    """RFC 7638 SHA-256 thumbprint of an EC JWK (step uses it as the kid)."""
    canon = json.dumps(
        {k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True
    )
    return b64url_encode(hashlib.sha256(canon.encode()).digest())


def ec_private_key_from_jwk(jwk: dict) -> ec.EllipticCurvePrivateKey:
    if jwk.get("kty") != "EC" or jwk.get("crv") != "P-256":
        raise ValueError("expected an EC P-256 JWK")
    key = ec.derive_private_key(int.from_bytes(b64url_decode(jwk["d"]), "big"), ec.SECP256R1())
    nums = key.public_key().public_numbers()
    if (nums.x, nums.y) != (
        int.from_bytes(b64url_decode(jwk["x"]), "big"),
        int.from_bytes(b64url_decode(jwk["y"]), "big"),
    ):
        raise ValueError("JWK d does not match x/y")
    return key


def make_ott(
    key: ec.EllipticCurvePrivateKey,
    kid: str,
    *,
    issuer: str,
    subject: str,
    audience: str,
    sans: list[str] | None = None,
    extra: dict | None = None,
    ttl: int = 300,
    jti: str | None = None,
) -> str:
    """One-time token for step-ca's JWK provisioner: JWS compact, ES256."""
    now = int(time.time())
    header = {"alg": "ES256", "kid": kid, "typ": "JWT"}
    claims = {
        "iss": issuer,
        "sub": subject,
        "aud": audience,
        "iat": now,
        "nbf": now,
        "exp": now + min(ttl, 300),
        "jti": jti or secrets.token_hex(32),
    }
    if sans is not None:
        claims["sans"] = sans
    if extra:
        claims.update(extra)
    signing_input = (
        b64url_encode(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + b64url_encode(json.dumps(claims, separators=(",", ":")).encode())
    )
    der = key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return signing_input + "." + b64url_encode(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


def make_csr(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    return key, csr.public_bytes(serialization.Encoding.PEM).decode()


def der_utf8string(value: bytes) -> str:
    """Strictly parse a short-form DER UTF8String (tag 0x0C)."""
    if len(value) < 2 or value[0] != 0x0C or value[1] >= 0x80 or len(value) != 2 + value[1]:
        raise ValueError(f"not a short DER UTF8String: {value!r}")
    return value[2:].decode("utf-8")


def ext_utf8(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> str | None:
    try:
        ext = cert.extensions.get_extension_for_oid(oid)
    except x509.ExtensionNotFound:
        return None
    assert not ext.critical, f"{oid.dotted_string} must be non-critical"
    return der_utf8string(ext.value.value)


# --------------------------------------------------------------------------
# HTTP client (persistent HTTPS connection, CA root pinned)
# --------------------------------------------------------------------------


class CA:
    def __init__(self, host: str, port: int, root_pem_file: str):
        self.host, self.port = host, port
        self.ctx = ssl.create_default_context(cafile=root_pem_file)
        self.conn = http.client.HTTPSConnection(host, port, context=self.ctx, timeout=10)

    def request(
        self, method: str, path: str, body: dict | None = None, ctx: ssl.SSLContext | None = None
    ):
        conn = self.conn
        if ctx is not None:  # one-off connection (e.g. client certificate)
            conn = http.client.HTTPSConnection(self.host, self.port, context=ctx, timeout=10)
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data else {}
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except (http.client.HTTPException, OSError):
            if ctx is not None:
                raise
            self.conn.close()
            self.conn = conn = http.client.HTTPSConnection(
                self.host, self.port, context=self.ctx, timeout=10
            )
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            if ctx is not None:
                conn.close()
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = raw.decode(errors="replace")
        return resp.status, payload


# --------------------------------------------------------------------------
# the proof
# --------------------------------------------------------------------------


@dataclass
class Prov:
    name: str
    kid: str
    key: ec.EllipticCurvePrivateKey


RESULTS: list[tuple[bool, str]] = []


def check(cond: bool, what: str) -> None:
    RESULTS.append((bool(cond), what))
    print(("  PASS  " if cond else "  FAIL  ") + what)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--ca-dir", default="/tmp/stepca-try")
    ap.add_argument(
        "--server-bin", help="start this mosaic-step-ca binary for the run, stop it at the end"
    )
    ap.add_argument("--missing-oid-provisioner", default="mosaic-federation-missing-oid")
    ap.add_argument("--latency-n", type=int, default=30)
    args = ap.parse_args()

    summary = json.load(open(os.path.join(args.ca_dir, "config", "mosaic.json")))
    ca_json = json.load(open(summary["ca_config"]))
    password = open(summary["password_file"], "rb").read().rstrip()  # step trims trailing space
    host, port = summary["address"].rsplit(":", 1)
    base = summary["ca_url"]

    # ---- 1. provisioner keys: decrypt encryptedKey, compare with plain JSON
    print("== provisioner keys (JWE encryptedKey vs provisioner_key*.json)")
    provs: dict[str, Prov] = {}
    plain_files = {p["name"]: p["key_file"] for p in summary["provisioners"]}
    for p in ca_json["authority"]["provisioners"]:
        t0 = time.perf_counter()
        jwk = json.loads(decrypt_step_jwe(p["encryptedKey"], password))
        dt = (time.perf_counter() - t0) * 1000
        hdr = json.loads(b64url_decode(p["encryptedKey"].split(".")[0]))
        plain = json.load(open(plain_files[p["name"]]))
        check(
            jwk == plain,
            f"{p['name']}: decrypted JWE == {os.path.basename(plain_files[p['name']])} "
            f"(alg={hdr['alg']} enc={hdr['enc']} cty={hdr.get('cty')} p2c={hdr['p2c']}, {dt:.0f} ms)",
        )
        check(
            jwk["kid"] == p["key"]["kid"] == jwk_thumbprint(jwk),
            f"{p['name']}: kid == RFC 7638 thumbprint",
        )
        check(
            oct(os.stat(plain_files[p["name"]]).st_mode & 0o777) == "0o600",
            f"{p['name']}: plain key file is 0600",
        )
        provs[p["name"]] = Prov(p["name"], jwk["kid"], ec_private_key_from_jwk(jwk))
    main_prov = provs[summary["provisioners"][0]["name"]]

    server = None
    if args.server_bin:
        env = dict(os.environ, STEPPATH=args.ca_dir)
        log = open(os.path.join(args.ca_dir, "server.log"), "ab")
        t0 = time.perf_counter()
        server = subprocess.Popen(
            [args.server_bin, summary["ca_config"], "--password-file", summary["password_file"]],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        ca = CA(host, int(port), summary["root"])
        # wait for /health
        deadline = time.time() + 20
        while True:
            try:
                st, body = CA(host, int(port), summary["root"]).request("GET", "/health")
                if st == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline or (server and server.poll() is not None):
                raise SystemExit(f"server did not come up; see {args.ca_dir}/server.log")
            time.sleep(0.05)
        if server:
            print(f"== server up in {(time.perf_counter() - t0) * 1000:.0f} ms (pid {server.pid})")

        print("== 0.19 endpoints")
        st, body = ca.request("GET", "/health")
        check(st == 200 and body == {"status": "ok"}, f"GET /health -> {st} {body}")
        st, body = ca.request("GET", "/version")
        check(st == 200, f"GET /version -> {st} {body}")
        st, body = ca.request("GET", "/roots")
        check(
            st == 201 and len(body.get("crts", [])) == 1,
            f"GET /roots -> {st} (201 Created, body {{'crts': [...]}})",
        )
        st, _ = ca.request("GET", "/1.0/roots")
        check(st == 201, f"GET /1.0/roots -> {st}")
        st, _ = ca.request("GET", "/roots.pem")
        check(st == 200, f"GET /roots.pem -> {st}")
        for path in ("/crl", "/1.0/crl", "/ocsp", "/1.0/ocsp"):
            st, _ = ca.request("GET", path)
            check(st == 404, f"GET {path} -> {st} (no CRL/OCSP in 0.19)")

        root = x509.load_pem_x509_certificate(open(summary["root"], "rb").read())
        inter = x509.load_pem_x509_certificate(open(summary["intermediate"], "rb").read())
        aud_sign = f"{base}/1.0/sign"

        def sign(
            prov: Prov,
            cn: str,
            mosaic,
            *,
            csr_cn: str | None = None,
            token: str | None = None,
            body_extra: dict | None = None,
        ):
            extra = {} if mosaic is None else {"mosaic": mosaic}
            tok = token or make_ott(
                prov.key,
                prov.kid,
                issuer=prov.name,
                subject=cn,
                audience=aud_sign,
                sans=[cn],
                extra=extra,
            )
            _, csr_pem = make_csr(cn if csr_cn is None else csr_cn)
            body = {"csr": csr_pem, "ott": tok}
            body.update(body_extra or {})
            st, resp = ca.request("POST", "/1.0/sign", body)
            return st, resp, tok

        # ---- 2. happy path
        print("== sign (federation-leaf.tpl)")
        gid, uid, pid = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
        ids = {"grant_id": gid, "subject_user_id": uid, "peer_id": pid}
        peer = "peer-a.federation.test"
        st, resp, tok = sign(main_prov, peer, ids)
        check(
            st == 201,
            f"POST /1.0/sign -> {st} (response keys {sorted(resp) if isinstance(resp, dict) else resp})",
        )
        if st != 201:
            return 1
        leaf = x509.load_pem_x509_certificate(resp["crt"].encode())
        check(
            resp["ca"] == resp["certChain"][1]
            and len(resp["certChain"]) == 2
            and x509.load_pem_x509_certificate(resp["ca"].encode()) == inter,
            "response: crt = leaf, ca = intermediate, certChain = [leaf, intermediate]",
        )
        leaf.verify_directly_issued_by(inter)
        inter.verify_directly_issued_by(root)
        check(True, "leaf <- intermediate <- root signatures verify")
        check(
            leaf.subject.rfc4514_string() == f"CN={peer}",
            f"subject = {leaf.subject.rfc4514_string()}",
        )
        oids = [e.oid.dotted_string for e in leaf.extensions]
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        want_uri = f"urn:mosaic:federation:peer:{pid}"
        check(
            not san.critical and list(san.value) == [x509.UniformResourceIdentifier(want_uri)],
            f"subjectAltName = URI {want_uri} only (non-critical)",
        )
        ku = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
        check(
            ku.digital_signature
            and not (
                ku.key_encipherment
                or ku.key_cert_sign
                or ku.crl_sign
                or ku.content_commitment
                or ku.key_agreement
            ),
            "keyUsage = digitalSignature only",
        )
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        check(list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH], "extKeyUsage = clientAuth only")
        bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
        check(bc.value.ca is False, f"basicConstraints CA:FALSE (critical={bc.critical})")
        check(ext_utf8(leaf, OID_GRANT_ID) == gid, f"1.3.6.1.4.1.99999.1 = UTF8String({gid})")
        check(
            ext_utf8(leaf, OID_SUBJECT_USER_ID) == uid, f"1.3.6.1.4.1.99999.2 = UTF8String({uid})"
        )
        raw1 = leaf.extensions.get_extension_for_oid(OID_GRANT_ID).value.value
        check(
            raw1 == b"\x0c\x24" + gid.encode(), f"DER bytes = 0c 24 || uuid ({raw1[:4].hex()}...)"
        )
        print(f"     extensions: {oids}")
        print(f"     validity: {leaf.not_valid_before_utc} .. {leaf.not_valid_after_utc}")

        # ---- 3. replay
        print("== replay / token checks")
        st2, resp2, _ = sign(main_prov, peer, None, token=tok)
        check(
            st2 == 401,
            f"same OTT again -> {st2} {resp2.get('message') if isinstance(resp2, dict) else resp2}",
        )
        # same jti, new signature/iat -> still refused (reuse key is the jti)
        jti = json.loads(b64url_decode(tok.split(".")[1]))["jti"]
        tok_same_jti = make_ott(
            main_prov.key,
            main_prov.kid,
            issuer=main_prov.name,
            subject=peer,
            audience=aud_sign,
            sans=[peer],
            jti=jti,
            extra={"mosaic": ids},
        )
        st3, resp3, _ = sign(main_prov, peer, None, token=tok_same_jti)
        check(
            st3 == 401,
            f"new token, same jti -> {st3} {resp3.get('message') if isinstance(resp3, dict) else ''}",
        )

        # ---- 4. malformed / missing / unsigned claims are refused
        good = str(uuid.uuid4())
        bad_cases = {
            "grant_id not a UUID": {
                "grant_id": "not-a-uuid",
                "subject_user_id": good,
                "peer_id": good,
            },
            "grant_id uppercase UUID": {
                "grant_id": good.upper(),
                "subject_user_id": good,
                "peer_id": good,
            },
            "grant_id UUID + JSON injection": {
                "grant_id": good + '"}],"x":"',
                "subject_user_id": good,
                "peer_id": good,
            },
            "grant_id UUID + newline": {
                "grant_id": good + "\n",
                "subject_user_id": good,
                "peer_id": good,
            },
            "subject_user_id 37 chars": {
                "grant_id": good,
                "subject_user_id": good + "0",
                "peer_id": good,
            },
            "grant_id is a number": {"grant_id": 12345, "subject_user_id": good, "peer_id": good},
            "subject_user_id missing": {"grant_id": good, "peer_id": good},
            "peer_id missing": {"grant_id": good, "subject_user_id": good},
            "peer_id not a UUID": {"grant_id": good, "subject_user_id": good, "peer_id": "peer-a"},
            "peer_id uppercase UUID": {
                "grant_id": good,
                "subject_user_id": good,
                "peer_id": good.upper(),
            },
            "peer_id UUID + extra URI": {
                "grant_id": good,
                "subject_user_id": good,
                "peer_id": good + '","urn:x:y',
            },
            "peer_id is a list": {"grant_id": good, "subject_user_id": good, "peer_id": [good]},
            "mosaic is a string": "x",
            "mosaic claim absent": None,
        }
        for what, mosaic in bad_cases.items():
            st, resp, tok_bad = sign(main_prov, peer, mosaic)
            msg = resp.get("message") if isinstance(resp, dict) else resp
            check(st == 400, f"{what} -> {st} {msg!r}")
        # refused-by-template tokens are burned anyway (jti stored at authorize time)
        st, resp, _ = sign(main_prov, peer, None, token=tok_bad)
        check(st == 401, f"retry of a template-refused token -> {st} {resp.get('message')!r}")
        # unsigned templateData in the request body cannot provide the ids
        st, resp, _ = sign(
            main_prov,
            peer,
            None,
            body_extra={
                "templateData": {
                    "mosaic": {"grant_id": good, "subject_user_id": good, "peer_id": good}
                }
            },
        )
        check(
            st == 400, f"ids only in unsigned request templateData -> {st} {resp.get('message')!r}"
        )
        # tampered payload (claims changed after signing) -> signature check fails
        t = make_ott(
            main_prov.key,
            main_prov.kid,
            issuer=main_prov.name,
            subject=peer,
            audience=aud_sign,
            sans=[peer],
            extra={"mosaic": {"grant_id": good, "subject_user_id": good, "peer_id": good}},
        )
        h, p, s = t.split(".")
        claims = json.loads(b64url_decode(p))
        claims["mosaic"]["grant_id"] = str(uuid.uuid4())
        st, resp, _ = sign(
            main_prov, peer, None, token=f"{h}.{b64url_encode(json.dumps(claims).encode())}.{s}"
        )
        check(st == 401, f"tampered claims -> {st} {resp.get('message')!r}")
        # CSR CN must equal token sub (or be empty)
        st, resp, _ = sign(
            main_prov,
            peer,
            {"grant_id": good, "subject_user_id": good, "peer_id": good},
            csr_cn="someone-else",
        )
        check(st == 403, f"CSR CN != sub -> {st} {resp.get('message')!r}")
        # wrong audience
        t = make_ott(
            main_prov.key,
            main_prov.kid,
            issuer=main_prov.name,
            subject=peer,
            audience=f"{base}/1.0/revoke",
            extra={"mosaic": {"grant_id": good, "subject_user_id": good, "peer_id": good}},
        )
        st, resp, _ = sign(main_prov, peer, None, token=t)
        check(st == 401, f"aud=/1.0/revoke used for sign -> {st}")

        # ---- 5. missing-oid template
        if args.missing_oid_provisioner in provs:
            print("== sign (federation-leaf-missing-oid.tpl)")
            mp = provs[args.missing_oid_provisioner]
            st, resp, _ = sign(mp, peer, ids)
            check(st == 201, f"POST /1.0/sign via {mp.name} -> {st}")
            c = x509.load_pem_x509_certificate(resp["crt"].encode())
            check(
                ext_utf8(c, OID_GRANT_ID) == gid and ext_utf8(c, OID_SUBJECT_USER_ID) is None,
                "cert has OID .1 but NOT OID .2",
            )

        # ---- 6. revoke (passive only), renew
        print("== revoke / renew")
        st, resp, _ = sign(main_prov, peer, ids)
        ckey_pem = None
        # build a cert + key we hold, to exercise mTLS renew
        ckey, csr_pem = make_csr(peer)
        t = make_ott(
            main_prov.key,
            main_prov.kid,
            issuer=main_prov.name,
            subject=peer,
            audience=aud_sign,
            sans=[peer],
            extra={"mosaic": ids},
        )
        st, resp = ca.request("POST", "/1.0/sign", {"csr": csr_pem, "ott": t})
        held = x509.load_pem_x509_certificate(resp["crt"].encode())
        ckey_pem = ckey.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        cert_file = os.path.join(args.ca_dir, "prove-leaf.pem")
        key_file = os.path.join(args.ca_dir, "prove-leaf.key")
        with open(cert_file, "w") as f:
            f.write(resp["crt"] + resp["ca"])
        with os.fdopen(os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            f.write(ckey_pem)
        mtls = ssl.create_default_context(cafile=summary["root"])
        mtls.load_cert_chain(cert_file, key_file)
        st, resp = ca.request("POST", "/1.0/renew", {}, ctx=mtls)
        main_claims = (
            next(
                p for p in ca_json["authority"]["provisioners"] if p["name"] == main_prov.name
            ).get("claims")
            or {}
        )
        if main_claims.get("disableRenewal"):
            check(
                st == 401,
                f"POST /1.0/renew with disableRenewal=true -> {st} {resp.get('message')!r}",
            )
        else:
            renewed = x509.load_pem_x509_certificate(resp["crt"].encode()) if st == 201 else None
            check(
                st == 201
                and renewed is not None
                and ext_utf8(renewed, OID_GRANT_ID) == gid
                and ext_utf8(renewed, OID_SUBJECT_USER_ID) == uid,
                f"POST /1.0/renew (mTLS, no token) -> {st}; new cert keeps both custom OIDs",
            )

        serial = str(held.serial_number)
        aud_revoke = f"{base}/1.0/revoke"
        t = make_ott(
            main_prov.key, main_prov.kid, issuer=main_prov.name, subject=serial, audience=aud_revoke
        )
        st, resp = ca.request(
            "POST", "/1.0/revoke", {"serial": serial, "ott": t, "reasonCode": 0, "passive": False}
        )
        check(st == 501, f"revoke passive=false -> {st} {resp.get('message')!r}")
        t = make_ott(
            main_prov.key, main_prov.kid, issuer=main_prov.name, subject=serial, audience=aud_revoke
        )
        st, resp = ca.request(
            "POST",
            "/1.0/revoke",
            {"serial": serial, "ott": t, "reasonCode": 0, "reason": "prove.py", "passive": True},
        )
        check(st == 200 and resp == {"status": "ok"}, f"revoke passive=true -> {st} {resp}")
        t = make_ott(
            main_prov.key, main_prov.kid, issuer=main_prov.name, subject=serial, audience=aud_revoke
        )
        st, resp = ca.request("POST", "/1.0/revoke", {"serial": serial, "ott": t, "passive": True})
        check(st == 400, f"revoke same serial again -> {st} {resp.get('message')!r}")
        st, resp = ca.request("POST", "/1.0/renew", {}, ctx=mtls)
        check(st == 401, f"renew with the revoked cert -> {st} {resp.get('message')!r}")
        # revocation token's sub is not matched against the serial in 0.19
        other = str(uuid.uuid4().int)
        t = make_ott(
            main_prov.key,
            main_prov.kid,
            issuer=main_prov.name,
            subject="anything",
            audience=aud_revoke,
        )
        st, resp = ca.request("POST", "/1.0/revoke", {"serial": other, "ott": t, "passive": True})
        check(
            st == 200,
            f"revoke with token sub != serial (unknown serial) -> {st} (0.19 does not bind sub to serial)",
        )
        for f in (cert_file, key_file):
            os.unlink(f)

        # ---- 7. latency
        print(
            f"== latency ({args.latency_n} signs, persistent HTTPS connection, fresh key+CSR+OTT each)"
        )
        total, server_side = [], []
        for i in range(args.latency_n):
            t0 = time.perf_counter()
            _, csr_pem = make_csr(peer)
            t = make_ott(
                main_prov.key,
                main_prov.kid,
                issuer=main_prov.name,
                subject=peer,
                audience=aud_sign,
                sans=[peer],
                extra={"mosaic": ids},
            )
            t1 = time.perf_counter()
            st, resp = ca.request("POST", "/1.0/sign", {"csr": csr_pem, "ott": t})
            t2 = time.perf_counter()
            assert st == 201, (st, resp)
            total.append((t2 - t0) * 1000)
            server_side.append((t2 - t1) * 1000)
        q = lambda xs, p: sorted(xs)[min(len(xs) - 1, int(round(p * (len(xs) - 1))))]
        print(
            f"     POST /1.0/sign round trip: median {statistics.median(server_side):.1f} ms, "
            f"p95 {q(server_side, 0.95):.1f} ms, max {max(server_side):.1f} ms"
        )
        print(f"     incl. client keygen+CSR+OTT: median {statistics.median(total):.1f} ms")
    finally:
        if server is not None:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)
                server.wait(timeout=10)
            print(f"== server stopped (rc={server.returncode})")

    failed = sum(1 for ok, _ in RESULTS if not ok)
    print(f"{len(RESULTS) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
