"""``python -m devstack up|down|status [--gateways N]``: the native launcher.
``python -m devstack demo``: two gateways and the federation story, narrated (``make demo``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from devstack import stack


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="devstack", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status", "demo"])
    parser.add_argument(
        "--gateways", type=int, default=int(os.environ.get("GATEWAYS", "1")), choices=range(1, 9)
    )
    parser.add_argument(
        "--state-root",
        type=Path,
        default=Path(os.environ.get("MOSAIC_STATE_ROOT", stack.DEFAULT_STATE_ROOT)),
    )
    parser.add_argument(
        "--first-host",
        default=os.environ.get("MOSAIC_FIRST_HOST", "127.0.0.2"),
        help="loopback address of gateway a; b gets the next one",
    )
    args = parser.parse_args(argv)
    state_root: Path = args.state_root.resolve()
    if args.command == "demo":
        from devstack.demo import run_demo

        raise SystemExit(run_demo(state_root, args.first_host))
    specs = stack.gateway_specs(args.gateways, state_root, args.first_host)
    if args.command == "down":
        # Stop every gateway that has state, not only the first N: `make down` after
        # `GATEWAYS=2 make up` must not leave b running.
        specs = [
            stack.spec_from_state(path.parent) for path in sorted(state_root.glob("*/state.json"))
        ]
    try:
        for spec in specs:
            if args.command == "up":
                state = stack.up(spec)
                print(
                    f"gateway {spec.name}: up — public {state['public_url']}, "
                    f"admin {state['admin_url']}; state written to {spec.state_file}"
                )
            elif args.command == "down":
                stopped = stack.down(spec)
                print(
                    f"gateway {spec.name}: stopped {', '.join(stopped) or 'nothing (not running)'}"
                )
            else:
                state = json.loads(spec.state_file.read_text()) if spec.state_file.exists() else {}
                alive = {name: rec.is_alive() for name, rec in stack.records_of(state).items()}
                print(json.dumps({"gateway": spec.name, "processes": alive}))
    except RuntimeError as exc:
        print(f"devstack: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
