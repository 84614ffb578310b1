"""``python -m verbs``: start the service under uvicorn (see ``fedcore.runner``)."""

from __future__ import annotations

from fedcore.runner import run_service
from verbs.app import create_app
from verbs.settings import Settings


def main() -> None:
    run_service("verbs", Settings, create_app)


if __name__ == "__main__":
    main()
