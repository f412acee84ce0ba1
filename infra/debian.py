"""Debian packages behind the commands the tools run (wrk, promtool, prometheus, chromium)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence

# A package install may wait this long for another apt-get or dpkg on the machine to finish.
LOCK_TIMEOUT_SECONDS = 300


def ensure_command(
    command: str,
    package: str,
    say: Callable[[str], None] | None = None,
    *,
    timeout: float = 600,
) -> str | None:
    """The path of command, installing Debian's package first when it is missing; None if the
    install did not bring it (no root, no network, not Debian)."""
    found = shutil.which(command)
    if found is not None:
        return found
    if say is not None:
        say(
            f"{command} is missing: installing Debian's {package} package "
            f"(apt-get install -y {package})"
        )
    if not apt_install(package, timeout=timeout):
        apt(["update", "-qq"], timeout=timeout)  # a machine that never fetched the package lists
        apt_install(package, timeout=timeout)
    return shutil.which(command)


def apt_install(package: str, *, timeout: float = 600) -> bool:
    """apt-get install the package without its recommendations; whether apt-get succeeded."""
    return apt(["install", "-y", "-q", "--no-install-recommends", package], timeout=timeout)


def apt(args: Sequence[str], *, timeout: float = 600) -> bool:
    """Run apt-get with args, non-interactively; whether it exited 0."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    argv = ["apt-get", "-o", f"DPkg::Lock::Timeout={LOCK_TIMEOUT_SECONDS}", *args]
    try:
        done = subprocess.run(  # noqa: S603 - argv is apt-get and fixed options
            argv, env=env, capture_output=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0
