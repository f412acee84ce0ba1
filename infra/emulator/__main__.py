"""Run the emulator: `python -m infra.emulator --host 127.0.0.1 --port N [--api-key K ...]`.

Flags: --host (env EMULATOR_HOST, default 127.0.0.1), --port (env EMULATOR_PORT, default 8765;
0 picks a free port), --api-key KEY (repeatable; adds to EMULATOR_API_KEYS), --public-url URL
(EMULATOR_PUBLIC_URL), --seed N (EMULATOR_SEED), --set NAME=VALUE (repeatable, any switch of
infra/emulator/config.py). Every other switch comes from its `EMULATOR_<NAME>` variable.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from types import FrameType

from werkzeug.serving import make_server

from infra.emulator.app import close_app, create_app
from infra.emulator.config import ConfigError, EmulatorConfig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m infra.emulator", description="Runware API emulator"
    )
    parser.add_argument("--host", default=os.environ.get("EMULATOR_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("EMULATOR_PORT", "8765")))
    parser.add_argument(
        "--api-key",
        action="append",
        default=[],
        dest="api_keys",
        help="accepted API key (repeatable); none = any non-empty key",
    )
    parser.add_argument("--public-url", default=None, help="base URL of hosted images")
    parser.add_argument("--seed", type=int, default=None, help="seed of the fault RNG")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        dest="settings",
        metavar="NAME=VALUE",
        help="any switch (repeatable)",
    )
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> EmulatorConfig:
    """Environment first, then flags."""
    config = EmulatorConfig.from_env()
    changes: dict[str, object] = {}
    for setting in args.settings:
        name, sep, value = setting.partition("=")
        if not sep:
            raise ConfigError(f"--set takes NAME=VALUE, got {setting!r}")
        changes[name.strip()] = value
    if args.api_keys:
        changes["api_keys"] = [*config.api_keys, *args.api_keys]
    if args.public_url is not None:
        changes["public_url"] = args.public_url
    if args.seed is not None:
        changes["seed"] = args.seed
    config.update(changes)
    return config


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT, then stop threads and close sockets."""
    args = parse_args(argv)
    try:
        config = build_config(args)
    except ConfigError as exc:
        print(f"emulator: {exc}", file=sys.stderr)
        return 2
    app = create_app(config)
    server = make_server(args.host, args.port, app, threaded=True)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    serving = threading.Thread(target=server.serve_forever, name="emulator-http", daemon=True)
    serving.start()
    print(f"emulator listening on http://{args.host}:{server.server_port}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.shutdown()
        serving.join(timeout=10)
        close_app(app)
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
