"""``python -m verbs``: start the service under uvicorn, one worker process per core by
default (see ``fedcore.runner``; ``FED_VERBS_WORKERS``)."""

from __future__ import annotations

from fedcore.runner import run_service
from verbs.app import create_app
from verbs.settings import Settings


def main() -> None:
    run_service(
        "verbs",
        Settings,
        create_app,
        workers=lambda settings: settings.workers,
        worker_factory="verbs.app:create_worker_app",
    )


if __name__ == "__main__":
    main()
