"""Per-tenant request rates on the jobs API: Flask-Limiter over the pipeline's Redis."""

from __future__ import annotations

import contextlib
import math
import time
from functools import partial
from typing import Any

from flask import Blueprint, Flask, current_app, request
from flask_limiter import Limiter, RateLimitExceeded

from pipeline.config import Settings
from pipeline.errors import LimitExceeded
from pipeline.sentinel import limiter_storage
from pipeline.store import redis_waits

# Every route of the API shares one count per tenant: polling and submitting draw on the same rate.
SCOPE = "jobs-api"
KEY_PREFIX = "imagine:ratelimit"


def rate_key(settings: Settings) -> str:
    """Whom a request is counted against: the tenant of its API key, else its remote address
    (a request without a known key is refused with 401 anyway, but guessing keys is limited)."""
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and presented.strip():
        tenant = settings.api_keys.tenant_for(presented.strip())
        if tenant is not None:
            return f"tenant:{tenant}"
    return f"address:{request.remote_addr or '-'}"


def init_rate_limits(app: Flask, settings: Settings, api: Blueprint) -> Limiter | None:
    """Limit the routes of `api` to API_RATE_LIMIT per tenant, counted in the pipeline's Redis;
    None when the setting is off. Only `api` is limited: the webhook receiver (Runware's
    retries must never be refused), health and metrics are neither counted nor checked."""
    if not settings.api_rate_limit:
        return None
    storage_uri, sentinel_options = limiter_storage(settings)
    limiter = Limiter(
        partial(rate_key, settings),
        storage_uri=storage_uri,
        storage_options={
            **sentinel_options,
            "key_prefix": KEY_PREFIX,
            # The request path's waits: Redis down costs a refused connect, not retries.
            **redis_waits(request_path=True),
            "health_check_interval": 30,
        },
        # One INCR per limit and request; a window's end is when its count starts again.
        strategy="fixed-window",
        # Redis unreachable: the request goes on and meets the same Redis in the view, whose
        # error is the one to report, rather than a limiter's.
        swallow_errors=True,
    )
    limiter.shared_limit(settings.api_rate_limit, scope=SCOPE)(api)
    install_for_blueprint(app, limiter, api.name)
    app.register_error_handler(RateLimitExceeded, partial(rate_limited, limiter))
    return limiter


# Flask's registries of request hooks, by scope: None for every request, else a blueprint's name.
HOOK_REGISTRIES = ("before_request_funcs", "after_request_funcs", "teardown_request_funcs")


def install_for_blueprint(app: Flask, limiter: Limiter, name: str) -> None:
    """Initialise `limiter` on `app` with its request hooks run for blueprint `name` only.

    Flask-Limiter hooks every request of the app; on a request it does not limit, those hooks
    still cost about 0.13 ms (a third of a replayed webhook's time in process). Flask has no
    public call to scope a hook to a blueprint once it is registered, so the hooks init_app
    added to the app's scope are moved to the blueprint's: Flask runs a blueprint's hooks for
    its requests alone."""
    before = {attr: list(getattr(app, attr).get(None, ())) for attr in HOOK_REGISTRIES}
    limiter.init_app(app)
    for attr in HOOK_REGISTRIES:
        registry: dict[str | None, list[Any]] = getattr(app, attr)
        added = [hook for hook in registry.get(None, ()) if hook not in before[attr]]
        registry[None] = before[attr]
        # First among the blueprint's own hooks: a request is counted before it is
        # authenticated, so guessing keys is limited too.
        registry[name] = added + registry.get(name, [])


def rate_limited(limiter: Limiter, exc: RateLimitExceeded) -> Any:
    """A breached rate in the one error shape, with Retry-After until the window that refused it
    starts again (through the app's own PipelineError handler)."""
    # At most the window's length, when the window's end cannot be read.
    retry_after = float(exc.limit.limit.get_expiry())
    breached = limiter.current_limit
    if breached is not None:
        with contextlib.suppress(Exception):
            retry_after = max(1, math.ceil(breached.window.reset_time - time.time()))
    error = LimitExceeded(
        f"rate limit of {exc.description} on the jobs API exceeded",
        code="rate_limited",
        retry_after=retry_after,
    )
    return current_app.handle_user_exception(error)
