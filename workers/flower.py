"""Flower entry point: `python -m workers.flower` refuses to serve without authentication.

Flower itself serves every page to anyone when no auth option is set, and binds all interfaces by
default. This wrapper reads Flower's own `FLOWER_*` variables, refuses to start unless basic auth
or OAuth is configured, binds 127.0.0.1 unless `FLOWER_ADDRESS` names another address, takes
credentials only from the environment (argv is visible to anyone on the host through `ps`), and
drops the pipeline's own credentials, which Flower never needs, before Celery loads the app.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Mapping, Sequence

LOOPBACK = "127.0.0.1"
MIN_PASSWORD_LENGTH = 16
OAUTH_VARIABLES = (
    "FLOWER_AUTH_PROVIDER",
    "FLOWER_OAUTH2_KEY",
    "FLOWER_OAUTH2_SECRET",
    "FLOWER_OAUTH2_REDIRECT_URI",
)
# Options that carry a credential or decide where Flower listens: environment only, so that the
# check below sees them and `ps` does not.
ENV_ONLY_OPTIONS = frozenset({
    "address", "unix_socket", "basic_auth", "auth", "auth_provider", "oauth2_key",
    "oauth2_secret", "oauth2_redirect_uri", "cookie_secret", "broker_api", "conf",
})  # fmt: skip
PIPELINE_CREDENTIALS = (
    "RUNWARE_API_KEY",
    "WEBHOOK_SECRETS",
    "CALLBACK_SECRET",
    "CALLBACK_SECRETS",
    "API_KEYS",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
)


class FlowerConfigError(ValueError):
    """Flower would start without authentication, or with a credential in its argv."""


def _basic_auth_errors(value: str) -> list[str]:
    errors = []
    for entry in value.split(","):
        user, sep, password = entry.partition(":")
        if not sep or not user:
            errors.append("FLOWER_BASIC_AUTH entries must be user:password")
        elif len(password) < MIN_PASSWORD_LENGTH:
            errors.append(
                f"FLOWER_BASIC_AUTH password of {user!r} must be at least "
                f"{MIN_PASSWORD_LENGTH} characters long"
            )
    return errors


def is_loopback(address: str) -> bool:
    """Whether address (an IP or 'localhost') is reachable from this host only."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def flower_environment(environ: Mapping[str, str], argv: Sequence[str] = ()) -> dict[str, str]:
    """The environment Flower runs with, or FlowerConfigError naming what is missing or unsafe."""
    for arg in argv:
        name = arg.lstrip("-").partition("=")[0].replace("-", "_").lower()
        if name in ENV_ONLY_OPTIONS:
            raise FlowerConfigError(
                f"--{name} is read from FLOWER_{name.upper()} only: arguments are visible to "
                "every user of the host"
            )
    env = {key: value for key, value in environ.items() if key not in PIPELINE_CREDENTIALS}
    if env.get("FLOWER_UNAUTHENTICATED_API", "").strip().lower() not in {"", "0", "false", "no"}:
        raise FlowerConfigError("FLOWER_UNAUTHENTICATED_API opens Flower's API to anyone: unset it")
    basic_auth = env.get("FLOWER_BASIC_AUTH", "").strip()
    oauth = env.get("FLOWER_AUTH", "").strip()
    if basic_auth:
        errors = _basic_auth_errors(basic_auth)
        if errors:
            raise FlowerConfigError("; ".join(errors))
    if oauth:
        missing = [name for name in OAUTH_VARIABLES if not env.get(name, "").strip()]
        if missing:
            raise FlowerConfigError(f"FLOWER_AUTH is set but {', '.join(missing)} are not")
    if not basic_auth and not oauth:
        raise FlowerConfigError(
            "Flower needs authentication: set FLOWER_BASIC_AUTH=user:password, or FLOWER_AUTH "
            f"(allowed e-mails) with {', '.join(OAUTH_VARIABLES)}"
        )
    if not env.get("FLOWER_ADDRESS", "").strip():
        env["FLOWER_ADDRESS"] = LOOPBACK
    return env


def main(argv: Sequence[str] | None = None) -> None:
    """Check the environment, then run `celery -A workers.worker flower` in this process."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        env = flower_environment(os.environ, args)
    except FlowerConfigError as exc:
        print(f"flower: refusing to start: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    for name in PIPELINE_CREDENTIALS:
        os.environ.pop(name, None)
    os.environ.update(env)
    if not is_loopback(env["FLOWER_ADDRESS"]):
        print(
            f"flower: listening on {env['FLOWER_ADDRESS']} (FLOWER_ADDRESS), not loopback",
            file=sys.stderr,
        )
    # Imported here, once the credentials are gone from the environment the app is built from.
    from celery.__main__ import main as celery_main

    from workers.worker import app

    # Flower only reads events and queue lengths, so it needs none of workers.broker's hardening,
    # and its broker page knows kombu's own transports only (by the URL's scheme).
    app.conf.broker_transport = None

    sys.argv = ["celery", "-A", "workers.worker", "flower", *args]
    celery_main()


if __name__ == "__main__":
    main()
