"""``python -m fedcore.cli`` is the same as the ``mosaic`` console script."""

from __future__ import annotations

import sys

from fedcore.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
