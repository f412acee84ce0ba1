"""Gunicorn settings: gevent workers, long keep-alive, body deadline, JSON logs, no query string.

Why gevent (issue 6): with 20 clients trickling a 100 kB webhook body one byte every 5 s, the
threaded worker (2 workers x 4 threads) left /healthz unanswered for 30-60 s (a probe timed out
at 60 s); gevent answered every probe, p50 55 ms, max 113 ms. A buffering proxy (nginx) in front
of the threaded worker measured the same (p50 58 ms, max 124 ms) but is one more process in the
stack and every deployment, and its body timeout only bounds the gap between two reads, so the
trickling clients were never closed. gevent's monkey patching, applied by the worker before it
imports the app, makes redis-py and boto3 (urllib3) cooperative: the view's inline Redis and S3
calls yield instead of blocking the worker.
"""

import os
from typing import Any

from pipeline.config import Settings

_settings = Settings.from_env()

# Read by gevent in each worker when its hub first resolves a name (see the class's docstring).
os.environ.setdefault("GEVENT_RESOLVER", "webhooks.serving.LiteralAddressResolver")

worker_class = "gevent"
workers = 2
# Connections, idle keep-alive ones included, one worker serves at once.
worker_connections = 1000
# Longer than any client polls and than a load balancer's idle timeout (60 s on most), so the
# client or the balancer closes an idle connection first and a request never races our close.
# gevent also gives a request's headers this long to arrive.
keepalive = _settings.receiver_keepalive_seconds
timeout = 30
# Idle keep-alive connections count as busy: a stop waits this long for them, then closes them.
graceful_timeout = 10
accesslog = "-"
# JSON lines like the app's own: start-up, workers and one access record per request (path
# without its query string, which carries a webhook's token).
logger_class = "webhooks.gunicorn_logging.JsonLogger"
# Several receivers may run on one host (tests, the local stack): no shared control socket.
control_socket_disable = True


def pre_request(worker: object, req: object) -> None:
    # Imported in the worker, after gevent patched it, not in the arbiter.
    from webhooks.serving import bound_request_body

    bound_request_body(req, _settings.receiver_body_timeout_seconds)


def post_request(worker: object, req: object, environ: object, resp: object) -> None:
    from webhooks.serving import finish_request_body

    finish_request_body(req)


def child_exit(server: object, worker: Any) -> None:
    # In the arbiter: a dead worker's live gauges leave the merged /metrics (its counters stay,
    # so totals never go back). Only in multiprocess mode (PROMETHEUS_MULTIPROC_DIR), which
    # prometheus_client decides on import; values is imported alone so the arbiter writes no file.
    from prometheus_client import multiprocess, values

    if getattr(values.ValueClass, "_multiprocess", False):
        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]  # unannotated


def post_worker_init(worker: object) -> None:
    # Tracing starts here, in each worker once gevent has patched it and the app is loaded, so
    # the SDK's export thread is a greenlet of this worker (create_app leaves it to this hook
    # under gunicorn). Off unless the OTEL_* settings ask (docs/tracing.md).
    from pipeline import tracing

    tracing.setup(tracing.RECEIVER)
