"""The forwarded-certificate verifier's cache (fedcore.client_cert): keyed by the forwarded text,
it never lets one certificate's text stand for another, never outlives a certificate, and never
remembers a refusal."""

from __future__ import annotations

import urllib.parse
from datetime import timedelta

import pytest

from fedcore import pki
from fedcore.client_cert import ClientCertInvalid, ForwardedCertVerifier
from tests.support.test_pki import issue_client

HIERARCHY = pki.generate_ca_hierarchy("cache-test")
FOREIGN = pki.generate_ca_hierarchy("someone-else")


def forwarded(cert_pem: str) -> str:
    """As nginx sends it: ``$ssl_client_escaped_cert``."""
    return urllib.parse.quote(cert_pem)


def verifier(cache_size: int = 8) -> ForwardedCertVerifier:
    return ForwardedCertVerifier(
        [HIERARCHY.root_cert], [HIERARCHY.intermediate_cert], cache_size=cache_size
    )


def test_a_hit_returns_the_same_certificate_without_parsing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    checker = verifier()
    client = issue_client(HIERARCHY)
    text = forwarded(pki.cert_pem(client.cert))
    first = checker.verify(text)
    assert first.fingerprint_sha256 == pki.fingerprint_sha256(client.cert)
    assert first.serial == pki.serial_hex(client.cert)

    def no_parsing(_: object) -> None:
        raise AssertionError("a cache hit must not parse")

    monkeypatch.setattr(pki, "load_pem_chain", no_parsing)
    assert checker.verify(text) is first


def test_another_certificate_never_hits_an_entry() -> None:
    checker = verifier()
    one, two = issue_client(HIERARCHY), issue_client(HIERARCHY)
    first = checker.verify(forwarded(pki.cert_pem(one.cert)))
    second = checker.verify(forwarded(pki.cert_pem(two.cert)))
    assert second.fingerprint_sha256 == pki.fingerprint_sha256(two.cert)
    assert second.identity != first.identity
    # A certificate of a foreign CA is refused even after a good one was cached.
    foreign = issue_client(FOREIGN)
    with pytest.raises(ClientCertInvalid):
        checker.verify(forwarded(pki.cert_pem(foreign.cert)))


def test_the_same_certificate_as_other_text_is_verified_on_its_own() -> None:
    checker = verifier()
    client = issue_client(HIERARCHY)
    pem = pki.cert_pem(client.cert)
    a = checker.verify(forwarded(pem))
    b = checker.verify(forwarded(pem.replace("\n", "\r\n")))  # still the same certificate
    assert a.fingerprint_sha256 == b.fingerprint_sha256


def test_an_entry_never_outlives_its_certificate() -> None:
    checker = verifier()
    client = issue_client(HIERARCHY, lifetime=timedelta(minutes=5))
    text = forwarded(pki.cert_pem(client.cert))
    checker.verify(text)
    later = client.cert.not_valid_after_utc + timedelta(seconds=1)
    with pytest.raises(ClientCertInvalid) as refused:
        checker.verify(text, now=later)
    assert refused.value.code == "client_cert_invalid"


def test_refusals_are_not_cached() -> None:
    checker = verifier()
    not_yet = issue_client(HIERARCHY, now=pki.utcnow() + timedelta(hours=2))
    text = forwarded(pki.cert_pem(not_yet.cert))
    with pytest.raises(ClientCertInvalid):
        checker.verify(text)  # not valid yet
    assert checker.verify(text, now=pki.utcnow() + timedelta(hours=2, minutes=1)).serial


def test_the_cache_is_bounded() -> None:
    checker = verifier(cache_size=2)
    texts = [forwarded(pki.cert_pem(issue_client(HIERARCHY).cert)) for _ in range(3)]
    for text in texts:
        checker.verify(text)
    assert len(checker._cache) == 2
