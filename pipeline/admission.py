"""The two gates before Runware sees a task: the per-key in-flight budget and the circuit."""

from __future__ import annotations

import logging
import re

from pipeline import clock
from pipeline.context import Context
from pipeline.errors import ProviderError

log = logging.getLogger(__name__)

PROVIDER_CODE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")


def provider_code(code: str | None, http_status: int | None = None) -> str:
    """A provider's error code as an identifier; anything else is not repeated."""
    if code and PROVIDER_CODE.fullmatch(code):
        return code
    return f"http_{http_status}" if http_status else "providerError"


def clean_text(value: str | None, limit: int) -> str:
    """Provider text made safe to store and show: printable characters only, bounded."""
    return "".join(char if char.isprintable() else " " for char in (value or ""))[:limit]


def paused_reason(code: str | None) -> str:
    # Every tenant's waiting job shows this: it names the code, never the provider's text.
    return f"waiting: submission paused by the provider ({provider_code(code)})"


def open_circuit(ctx: Context, error: ProviderError) -> None:
    """Pause submission for every job until a probe succeeds or an operator resets it."""
    code = provider_code(error.provider_code, error.http_status)
    probe_at = clock.now() + ctx.settings.circuit_probe_seconds
    if ctx.circuit.open(code, clean_text(error.message, 500), probe_at):
        log.error(
            "circuit opened: submission paused",
            extra={"code": code, "http_status": error.http_status},
        )


def reset_circuit(ctx: Context) -> None:
    ctx.circuit.reset()
    log.warning("circuit closed: submission resumes")


def release(ctx: Context, task_uuids: list[str]) -> None:
    """Give in-flight leases back and wake as many jobs waiting for the budget."""
    if not ctx.settings.runware_api_key:
        return
    freed = ctx.budget.release(task_uuids)
    for waiting in ctx.budget.pop_waiters(freed):
        ctx.dispatcher.submit_job(waiting)
