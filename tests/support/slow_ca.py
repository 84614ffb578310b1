"""The real local CA, made slow: it signs only once the test opens the gate (a CA that answers
after its caller — an enrollment or a renewal past its deadline — has given up)."""

from __future__ import annotations

import asyncio
from typing import Any

from ca_broker.backends import IssueRequest
from ca_broker.backends.local import LocalBackend
from fedcore import pki


class GatedBackend(LocalBackend):
    def __init__(self, hierarchy: pki.CaHierarchy) -> None:
        super().__init__(hierarchy)
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def issue(self, request: IssueRequest) -> Any:
        self.entered.set()
        await self.gate.wait()
        return await super().issue(request)
