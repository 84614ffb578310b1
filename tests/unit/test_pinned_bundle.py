"""A CA pin vouches for exactly one root and what it issued; anything appended is refused
(the attack: A's genuine root first, the attacker's root behind it)."""

from __future__ import annotations

import pytest
from cryptography import x509

from fedcore import pki

GENUINE = pki.generate_ca_hierarchy("genuine")
FOREIGN = pki.generate_ca_hierarchy("foreign")
PIN = pki.fingerprint_sha256(GENUINE.root_cert)


def _pem(*certs: x509.Certificate) -> str:
    return "".join(pki.cert_pem(c) for c in certs)


def test_the_pinned_root_and_its_intermediate_are_kept() -> None:
    kept = pki.pinned_bundle(_pem(GENUINE.root_cert, GENUINE.intermediate_cert), PIN)
    assert pki.load_pem_chain(kept) == [GENUINE.root_cert, GENUINE.intermediate_cert]
    reordered = pki.pinned_bundle(_pem(GENUINE.intermediate_cert, GENUINE.root_cert), PIN)
    assert pki.load_pem_chain(reordered)[0] == GENUINE.root_cert


@pytest.mark.parametrize(
    ("bundle", "why"),
    [
        (_pem(GENUINE.root_cert, FOREIGN.root_cert), "another root appended"),
        (_pem(FOREIGN.root_cert, GENUINE.root_cert), "another root in front"),
        (_pem(GENUINE.root_cert, FOREIGN.intermediate_cert), "an intermediate of another CA"),
        (_pem(FOREIGN.root_cert, FOREIGN.intermediate_cert), "the wrong CA altogether"),
        ("not pem", "garbage"),
    ],
)
def test_anything_beyond_the_pinned_set_is_refused(bundle: str, why: str) -> None:
    with pytest.raises(pki.PinMismatch):
        pki.pinned_bundle(bundle, PIN)
