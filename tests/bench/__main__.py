"""``python -m tests.bench`` (``make bench``): see :mod:`tests.bench.main`."""

from __future__ import annotations

from tests.bench.main import main

raise SystemExit(main())
