"""A bench-only variant of the gateway's rendered nginx config (the shipped templates are not
touched): the public server gains

- ``/bench-bare/``: the bare endpoint, behind a verbatim copy of the verbs location (client
  certificate required, the same per-certificate rate-limit zone, the same identity headers)
  and an upstream with the same keep-alive pool;
- ``= /bench-static``: the same copy answering a static 200 from nginx itself, so the load
  generator's own ceiling on this box (mTLS, kept alive) is measured too.

The gateway's nginx is reloaded (SIGHUP) with the variant; the ca-broker's own reloads (after a
CRL change) re-read the same file, so the variant stays in force for the whole run.
"""

from __future__ import annotations

from pathlib import Path

from devstack import nginx
from devstack.processes import ProcessRecord

UPSTREAM_ANCHOR = "    upstream mosaic_ca_broker"
LOCATION_ANCHOR = "        location = /pki/ca.pem {"


VERBS_LOCATION = "        location ^~ /api/federation/v1/ {\n"


def _verbs_location(conf: str) -> str:
    """The verbs location block, verbatim (so the bare endpoint gets exactly its rules)."""
    if conf.count(VERBS_LOCATION) != 1:
        raise RuntimeError("nginx.conf changed shape: the verbs location is not unique")
    start = conf.index(VERBS_LOCATION)
    end = conf.index("\n        }\n", start) + len("\n        }\n")
    block = conf[start:end]
    if block.count("proxy_pass http://mosaic_verbs;") != 1:
        raise RuntimeError("nginx.conf changed shape: the verbs location has no single proxy_pass")
    return block


def _bench_blocks(conf: str, bare_upstream: str) -> tuple[str, str]:
    upstream = f"    upstream bench_bare {{ server {bare_upstream}; keepalive 64; }}\n"
    verbs = _verbs_location(conf)
    bare = verbs.replace(VERBS_LOCATION, "        location ^~ /bench-bare/ {\n", 1).replace(
        "proxy_pass http://mosaic_verbs;", "proxy_pass http://bench_bare;"
    )
    # nginx answers itself after the same checks: the mTLS + load-generator ceiling.
    static = verbs.replace(VERBS_LOCATION, "        location = /bench-static {\n", 1).replace(
        "proxy_pass http://mosaic_verbs;", "return 200 '{\"ok\":true}';"
    )
    locations = (
        "        # ---- bench-only (tests/bench/nginx_variant.py) ----\n"
        f"{bare}{static}"
        "        # ---- end bench-only ----\n\n"
    )
    return upstream, locations


def install(conf: Path, record: ProcessRecord, bare_upstream: str) -> tuple[str, str]:
    """Rewrite ``conf`` with the bench blocks and reload nginx. Returns (original, variant)."""
    original = conf.read_text()
    if original.count(UPSTREAM_ANCHOR) != 1 or original.count(LOCATION_ANCHOR) != 1:
        raise RuntimeError("nginx.conf changed shape: the bench's anchors are not unique")
    upstream, locations = _bench_blocks(original, bare_upstream)
    variant = original.replace(UPSTREAM_ANCHOR, upstream + UPSTREAM_ANCHOR, 1).replace(
        LOCATION_ANCHOR, locations + LOCATION_ANCHOR, 1
    )
    conf.write_text(variant)
    conf.chmod(0o600)
    nginx.reload(record, conf)
    return original, variant
