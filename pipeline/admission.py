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


def model_paused_reason(model: str, code: str | None) -> str:
    # The model id is the job's own, checked against the catalog when the job was made.
    return f"waiting: model {model} paused by the provider ({provider_code(code)})"


BUDGET_REASON = "waiting: Runware in-flight budget is full"


def fallback_reason(model: str, code: str | None, fallback: str) -> str:
    return (
        f"model {model} paused by the provider ({provider_code(code)}): "
        f"images not sent yet go to fallbackModel {fallback}"
    )


def circuit_reason(ctx: Context, model: str) -> str | None:
    """Why a job of `model` may not be submitted now (the account's or the model's circuit is
    open), or None."""
    account = ctx.circuit.state()
    if account.open:
        return paused_reason(account.code)
    paused = ctx.circuit.state(model)
    if paused.open:
        return model_paused_reason(model, paused.code)
    return None


def choose_model(ctx: Context, model: str, fallback: str | None) -> tuple[str | None, str | None]:
    """The model for a job's images not sent yet, and the reason to show: (`model`, None) when
    its circuit is closed; (`fallback`, why) while `model` is paused and the fallback is not;
    (None, why) while the job must wait."""
    paused = circuit_reason(ctx, model)
    if paused is None:
        return model, None
    if fallback and not ctx.circuit.state().open and circuit_reason(ctx, fallback) is None:
        return fallback, fallback_reason(model, ctx.circuit.state(model).code, fallback)
    return None, paused


def open_circuit(ctx: Context, error: ProviderError, model: str | None = None) -> None:
    """Pause submission for every job (or, with `model`, for that model's jobs only) until a
    probe succeeds or an operator resets it."""
    code = provider_code(error.provider_code, error.http_status)
    probe_at = clock.now() + ctx.settings.circuit_probe_seconds
    if ctx.circuit.open(code, clean_text(error.message, 500), probe_at, model):
        log.error(
            "circuit opened: submission paused" + (f" for model {model}" if model else ""),
            extra={"code": code, "http_status": error.http_status, "model": model},
        )


def close_circuit(ctx: Context, model: str | None = None) -> None:
    """A probe went through: the account (or the model) is accepted again."""
    if ctx.circuit.state(model).open:
        ctx.circuit.reset(model)
        log.warning("circuit closed: submission resumes" + (f" for model {model}" if model else ""))


def reset_circuit(ctx: Context) -> None:
    """An operator's reset: the account circuit and every model circuit close."""
    for paused in ctx.circuit.open_models():
        ctx.circuit.reset(paused.model)
    ctx.circuit.reset()
    log.warning("circuit closed: submission resumes")


def release(ctx: Context, task_uuids: list[str]) -> None:
    """Give in-flight leases back (a slot's state change has usually given them back already)
    and wake as many jobs waiting for the budget as there is room for."""
    if not ctx.settings.runware_api_key:
        return
    for waiting in ctx.budget.release_and_wake(task_uuids, ctx.settings.runware_max_in_flight):
        ctx.dispatcher.submit_job(waiting)
