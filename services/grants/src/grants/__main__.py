"""``python -m grants``: start the service under uvicorn (see ``fedcore.runner``)."""

from __future__ import annotations

from fedcore.runner import run_service
from grants.app import create_app
from grants.settings import Settings


def main() -> None:
    run_service("grants", Settings, create_app)


if __name__ == "__main__":
    main()
