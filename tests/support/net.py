"""Loopback addresses for one test session.

All of 127.0.0.0/8 is loopback on Linux. Each pytest session picks its own 127.N.M.0/24 so two
sessions (a developer's and an agent's, or two CI jobs) never fight over an address:port, and
none touches 127.0.0.2/.3, where `make up` runs. Set MOSAIC_TEST_NET=127.N.M to pin it.
"""

from __future__ import annotations

import functools
import os
import random


@functools.cache
def test_net() -> str:
    pinned = os.environ.get("MOSAIC_TEST_NET")
    if pinned:
        return pinned
    rng = random.SystemRandom()
    return f"127.{rng.randint(100, 199)}.{rng.randint(1, 254)}"


def host(last_octet: int) -> str:
    return f"{test_net()}.{last_octet}"
