"""The embedded CA: signs with the intermediate held (unsealed) in this process's memory."""

from __future__ import annotations

from ca_broker.backends import IssuedChain, IssueRequest
from ca_broker.profile import build_federation_certificate
from fedcore import pki


class LocalBackend:
    name = "local"

    def __init__(self, hierarchy: pki.CaHierarchy) -> None:
        self.hierarchy = hierarchy

    async def issue(self, request: IssueRequest) -> IssuedChain:
        cert = build_federation_certificate(
            public_key=request.csr.public_key,
            issuer_key=self.hierarchy.intermediate_key,
            issuer_cert=self.hierarchy.intermediate_cert,
            peer_name=request.peer_name,
            peer_id=request.peer_id,
            grant_id=request.grant_id,
            subject_user_id=request.subject_user_id,
            lifetime=request.lifetime,
            now=pki.utcnow(),
        )
        return IssuedChain(cert_pem=pki.cert_pem(cert), chain_pem=self.intermediates_pem())

    def bundle_pem(self) -> str:
        return pki.cert_pem(self.hierarchy.root_cert)

    def intermediates_pem(self) -> str:
        return pki.cert_pem(self.hierarchy.intermediate_cert)

    async def aclose(self) -> None:
        return None
