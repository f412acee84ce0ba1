"""Prometheus metrics: each defined once here, counted where its event happens, merged across
processes when PROMETHEUS_MULTIPROC_DIR is set.

Counters and histograms live in each process that counts them. With PROMETHEUS_MULTIPROC_DIR
set before prometheus_client is first imported (the client decides then), every process writes
its values to its own file in that directory and `exposition_registry` merges the files, so a
scrape of any gunicorn worker (or of the Celery worker's main process) shows the sum of all of
them. Without it, each process serves its own values: what unit tests and a one-process
deployment need. Gauges read from Redis (`PipelineGauges`) are computed at scrape time by the
receiver only, so they are never multiplied by the number of processes.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Iterator
from functools import cache
from typing import TYPE_CHECKING

import redis
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    values,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from pipeline.config import TENANT_NAME
from pipeline.models import ResultOutcome
from pipeline.store import RedisCircuit, RedisInFlightBudget, RedisJobStore

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from pipeline.services import JobService

log = logging.getLogger(__name__)

# The process's own metrics; never prometheus_client's global registry, so a library that
# registers there cannot collide with these names, and an exposition registry picks what to show.
REGISTRY = CollectorRegistry(auto_describe=True)
# No `<name>_created` timestamp series beside each counter and histogram: multiprocess mode
# has none, and one process alone should serve the same series.
disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus_client leaves it unannotated

OTHER = "other"

# ------------------------------------------------------------------------------- counters
JOBS_CREATED = Counter(
    "imagine_jobs_created_total",
    "Jobs recorded (a replayed idempotency key is not).",
    ["tenant"],
    registry=REGISTRY,
)
JOBS_ENDED = Counter(
    "imagine_jobs_ended_total",
    "Jobs that reached a terminal state, by that state (a job an operator retried ends again).",
    ["tenant", "state"],
    registry=REGISTRY,
)
IMAGES_STORED = Counter(
    "imagine_images_stored_total",
    "Images written to their final key.",
    ["tenant"],
    registry=REGISTRY,
)
IMAGES_FAILED = Counter(
    "imagine_images_failed_total",
    "Attempts at an image that ended without one (provider failure, rejected image, missing "
    "upload, deadline), whether or not the image gets another attempt.",
    ["code"],
    registry=REGISTRY,
)
IMAGES_DEAD = Counter(
    "imagine_images_dead_total",
    "Images failed for good: retry budget spent (dead-lettered) or a failure no new attempt "
    "can fix.",
    ["code"],
    registry=REGISTRY,
)
SIZE_MISMATCHES = Counter(
    "imagine_size_mismatches_total",
    "Stored images of another size than requested.",
    registry=REGISTRY,
)
FORMAT_MISMATCHES = Counter(
    "imagine_format_mismatches_total",
    "Stored images of another format than requested.",
    registry=REGISTRY,
)
PROVIDER_REQUESTS = Counter(
    "imagine_provider_requests_total",
    "HTTP requests to Runware (submits and getResponse polls), by outcome and HTTP status "
    '("none" when no answer came).',
    ["outcome", "status"],
    registry=REGISTRY,
)
WEBHOOKS = Counter(
    "imagine_webhooks_total",
    "Runware webhook results by what they did (a result outcome), or why the webhook was "
    "refused (unauthorized, invalid, not_found, error).",
    ["outcome"],
    registry=REGISTRY,
)
CALLBACKS = Counter(
    "imagine_callbacks_total",
    "Callback deliveries to tenants, by outcome.",
    ["outcome"],
    registry=REGISTRY,
)
SPEND = Counter(
    "imagine_spend_usd_total",
    "Runware's reported cost (USD) of images stored, discarded, or charged and then refused.",
    ["tenant"],
    registry=REGISTRY,
)
WEBHOOK_SELFTESTS = Counter(
    "imagine_webhook_selftests_total",
    "Self-tests of the webhook path at PUBLIC_BASE_URL made at start, by outcome (ok, refused, "
    "timeout, unauthorized, wrong_service, error).",
    ["outcome"],
    registry=REGISTRY,
)
RESULTS_POLLED = Counter(
    "imagine_results_polled_total",
    "Provider results recorded from the reconciler's getResponse poll instead of a webhook.",
    registry=REGISTRY,
)

# ------------------------------------------------------------------------------- histograms
SUBMIT_ACK = Histogram(
    "imagine_submit_ack_seconds",
    "From a submit request sent to Runware to its acknowledgement.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
    registry=REGISTRY,
)
WEBHOOK_TO_STORED = Histogram(
    "imagine_webhook_to_stored_seconds",
    "From a result received (webhook, or the reconciler's poll) to its image stored at its "
    "final key.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0),
    registry=REGISTRY,
)
JOB_DURATION = Histogram(
    "imagine_job_duration_seconds",
    "From a job created to its end, by terminal state.",
    ["state"],
    buckets=(5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 14400.0, 86400.0),
    registry=REGISTRY,
)

# What a webhook did: every ResultOutcome value, and the refusals the view answers.
WEBHOOK_REFUSALS = ("unauthorized", "invalid", "not_found", "error")
# Our own codes for an image that failed; provider codes come from the error table.
OWN_CODES = frozenset(
    {"deadline", "cancelled", "image_rejected", "upload_missing", "rejected", "providerError"}
)
HTTP_CODE = re.compile(r"^http_[1-5][0-9][0-9]$")


def multiprocess() -> bool:
    """Whether this process writes its values to PROMETHEUS_MULTIPROC_DIR: prometheus_client
    decided it when it was first imported, from the environment it found then."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


@cache
def _provider_codes() -> frozenset[str]:
    # Read on first use: pipeline.runware counts its requests here.
    from pipeline.runware import ERROR_TABLE

    return frozenset(pattern for pattern, _kind in ERROR_TABLE if "*" not in pattern)


def code_label(code: str | None) -> str:
    """An error code as a label: a code of the error table or one of ours, else "other" (a
    provider may send free text, and every distinct value would be a new series)."""
    if not code:
        return OTHER
    if code in OWN_CODES or code in _provider_codes() or HTTP_CODE.fullmatch(code):
        return code
    return OTHER


def tenant_label(tenant: str) -> str:
    """A tenant as a label: API_KEYS names are checked by TENANT_NAME; a name from a by-name
    Celery message is trusted, not checked, so anything else is "other"."""
    return tenant if TENANT_NAME.fullmatch(tenant) else OTHER


# ------------------------------------------------------------------------------- events
def job_created(tenant: str) -> None:
    JOBS_CREATED.labels(tenant_label(tenant)).inc()


def job_ended(tenant: str, state: str, created_at: float, ended_at: float) -> None:
    """A job's move to its terminal state applied (call it only then: it is counted once)."""
    JOBS_ENDED.labels(tenant_label(tenant), state).inc()
    JOB_DURATION.labels(state).observe(max(0.0, ended_at - created_at))


def image_stored(tenant: str, cost: float | None, received_at: float | None, now: float) -> None:
    """An image's move to stored applied: counted, its cost spent, its wait since receipt."""
    IMAGES_STORED.labels(tenant_label(tenant)).inc()
    image_charged(tenant, cost)
    if received_at is not None:
        WEBHOOK_TO_STORED.observe(max(0.0, now - received_at))


def image_charged(tenant: str, cost: float | None) -> None:
    """What Runware charged for an image (stored, discarded, or refused after receipt)."""
    if cost and cost > 0:  # a counter only goes up; the schema already drops a negative cost
        SPEND.labels(tenant_label(tenant)).inc(cost)


def image_failed(code: str | None, *, for_good: bool) -> None:
    """An attempt at an image failed (its move applied); `for_good` when the image gets no new
    attempt."""
    label = code_label(code)
    IMAGES_FAILED.labels(label).inc()
    if for_good:
        IMAGES_DEAD.labels(label).inc()


def image_mismatched(size: bool, format_: bool) -> None:
    if size:
        SIZE_MISMATCHES.inc()
    if format_:
        FORMAT_MISMATCHES.inc()


def provider_request(status: int | None, outcome: str | None = None) -> None:
    """One HTTP request to Runware: its status ("none": no answer) and outcome (by default:
    ok, client_error or server_error, from the status)."""
    if outcome is None:
        outcome = "ok" if status is not None and status < 400 else "client_error"
        if status is not None and status >= 500:
            outcome = "server_error"
    PROVIDER_REQUESTS.labels(outcome, "none" if status is None else str(status)).inc()


def submit_acknowledged(seconds: float) -> None:
    SUBMIT_ACK.observe(seconds)


# Bound once: the webhook view counts on every request.
_WEBHOOK_COUNTERS: dict[str, Counter] = {
    outcome: WEBHOOKS.labels(outcome)
    for outcome in [*(o.value for o in ResultOutcome), *WEBHOOK_REFUSALS]
}


def webhook(outcome: str) -> None:
    """One webhook result's outcome, or the refusal of the whole webhook."""
    counter = _WEBHOOK_COUNTERS.get(outcome)
    if counter is not None:
        counter.inc()


def webhook_refused(status: int | None) -> None:
    """A webhook answered with an error status: 401, 404, another 4xx (the body or its type),
    or a 5xx."""
    if status == 401:
        webhook("unauthorized")
    elif status == 404:
        webhook("not_found")
    elif status is not None and 400 <= status < 500:
        webhook("invalid")
    else:
        webhook("error")


def callback(outcome: str) -> None:
    CALLBACKS.labels(outcome).inc()


def result_polled() -> None:
    RESULTS_POLLED.inc()


def webhook_selftest(outcome: str) -> None:
    WEBHOOK_SELFTESTS.labels(outcome).inc()


# ------------------------------------------------------------------------------- exposition
def exposition_registry(*collectors: Collector) -> CollectorRegistry:
    """What a /metrics endpoint serves: every process's values merged from
    PROMETHEUS_MULTIPROC_DIR (or this process's own, without it), plus `collectors`.

    Collectors are registered without describing them, so no Redis call is made until a scrape.
    """
    registry = CollectorRegistry(auto_describe=False)
    if multiprocess():
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # unannotated upstream
    else:
        registry.register(REGISTRY)
    for collector in collectors:
        registry.register(collector)
    return registry


# ------------------------------------------------------------------------------- gauges
class PipelineGauges:
    """Gauges read from Redis (and the broker) at scrape time, each with a handful of counts
    in one pipelined round trip (two with a model circuit open), whatever the number of jobs:
    no per-job read.

    `imagine_jobs_stuck` counts active jobs past their deadline by more than the reconcile
    grace period: every job must end by its deadline, and the reconciler ends a late one at
    its next pass, so any job counted here means the reconciler is not keeping up (or not
    running). `imagine_reconcile_overdue` counts active jobs due for a look by the reconciler
    for longer than the grace period (a pass claims what is due and makes it due again later),
    the earlier sign of the same trouble.
    """

    def __init__(self, service: JobService) -> None:
        from pipeline.quotas import quotas

        ctx = service.context
        if not isinstance(ctx.store, RedisJobStore):
            raise TypeError("the pipeline's gauges read the Redis job store")
        if not isinstance(ctx.budget, RedisInFlightBudget):
            raise TypeError("the pipeline's gauges read the Redis in-flight budget")
        if not isinstance(ctx.circuit, RedisCircuit):
            raise TypeError("the pipeline's gauges read the Redis circuit")
        self.settings = ctx.settings
        self.store = ctx.store
        self.budget = ctx.budget
        self.circuit = ctx.circuit
        self.dispatcher = ctx.dispatcher
        self.pause = quotas(ctx)

    def collect(self) -> Iterator[Metric]:
        try:
            counts = self._read(time.time())
        except redis.RedisError as exc:
            log.warning("metrics: Redis unreachable at scrape", extra={"error": repr(exc)})
            counts = None
        yield _gauge(
            "imagine_store_up", "1 when Redis answered this scrape's reads.", counts is not None
        )
        if counts is not None:
            yield from counts
        yield from self._queues()

    def _read(self, now: float) -> list[Metric]:
        store, grace = self.store, self.settings.reconcile_grace_seconds
        pipe = store.redis.pipeline(transaction=False)
        pipe.zcard(store.active_key)
        pipe.zcount(store.active_key, "-inf", repr(now - grace))  # scored by deadline
        pipe.zcount(store.due_key, "-inf", repr(now - grace))  # scored by when due
        pipe.zcount(self.budget.leases_key, repr(now), "+inf")  # scored by expiry: live ones
        pipe.zcard(self.budget.waiters_key)
        pipe.hlen(store.dlq_key)
        pipe.exists(self.pause.pause_key)
        pipe.zcard(self.pause.held_key)
        pipe.hget(self.circuit.key, "state")
        pipe.smembers(self.circuit.models_key)
        active, stuck, overdue, leases, waiters, dead, paused, held, circuit, models = (
            pipe.execute()
        )
        return [
            _gauge("imagine_jobs_active", "Jobs not yet ended.", active),
            _gauge(
                "imagine_jobs_stuck",
                "Active jobs past their deadline by more than RECONCILE_GRACE_SECONDS.",
                stuck,
            ),
            _gauge(
                "imagine_reconcile_overdue",
                "Active jobs due for a reconciler look for more than RECONCILE_GRACE_SECONDS.",
                overdue,
            ),
            _gauge(
                "imagine_runware_in_flight",
                "Images in flight at Runware under this key's budget.",
                leases,
            ),
            _gauge(
                "imagine_runware_in_flight_limit",
                "The in-flight budget of the Runware key (RUNWARE_MAX_IN_FLIGHT).",
                self.settings.runware_max_in_flight,
            ),
            _gauge(
                "imagine_budget_waiters",
                "Jobs queued to be woken when an in-flight lease is given back.",
                waiters,
            ),
            _gauge("imagine_dead_letters", "Dead-lettered images waiting for an operator.", dead),
            _gauge(
                "imagine_submissions_paused",
                "1 while an operator has paused submission to Runware.",
                paused,
            ),
            _gauge(
                "imagine_submissions_held",
                "Jobs held by the operator's pause, to be woken when it is lifted.",
                held,
            ),
            _gauge(
                "imagine_circuit_open",
                "1 while submission is paused by an account-level provider error.",
                circuit == "open",
            ),
            self._model_circuits(sorted(str(model) for model in models)),
        ]

    def _model_circuits(self, models: list[str]) -> Metric:
        family = GaugeMetricFamily(
            "imagine_model_circuit_open",
            "1 for each model paused on its own by a model-level provider error.",
            labels=["model"],
        )
        if models:
            pipe = self.store.redis.pipeline(transaction=False)
            for model in models:
                pipe.hget(self.circuit._key(model), "state")
            for model, state in zip(models, pipe.execute(), strict=True):
                if state == "open":
                    family.add_metric([model], 1)
        return family

    def _queues(self) -> Iterable[Metric]:
        try:
            lengths = self.dispatcher.queue_lengths()
        except Exception as exc:  # the broker is a separate service: its gauges go missing alone
            log.warning("metrics: broker unreachable at scrape", extra={"error": repr(exc)})
            return []
        family = GaugeMetricFamily(
            "imagine_queue_length", "Messages waiting in each Celery queue.", labels=["queue"]
        )
        for queue, length in sorted(lengths.items()):
            family.add_metric([queue], length)
        return [family]


def _gauge(name: str, documentation: str, value: float | bool | int | None) -> Metric:
    return GaugeMetricFamily(name, documentation, value=float(value or 0))
