"""``python -m enrollment``: start the service under uvicorn (see ``fedcore.runner``)."""

from __future__ import annotations

from enrollment.app import create_app
from enrollment.settings import Settings
from fedcore.runner import run_service


def main() -> None:
    run_service("enrollment", Settings, create_app)


if __name__ == "__main__":
    main()
