"""The worker's /metrics: its main process serves what its pool's children count.

The children do the work and count it; with PROMETHEUS_MULTIPROC_DIR each writes its values to
a file of its own in that directory, and the main process merges the files at each scrape. The
server starts at `worker_init`, in the main process, before the pool's children are forked: a
port already taken stops the worker at once, naming WORKER_METRICS_PORT, instead of leaving it
running unobserved. Each child closes its inherited copy of the listening socket, so only the
main process holds the port. Beat never sends `worker_init`: it serves nothing.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIServer

from celery import signals
from prometheus_client import start_http_server
from prometheus_client.multiprocess import mark_process_dead

from pipeline import metrics
from pipeline.config import Settings, SettingsError

log = logging.getLogger(__name__)


@dataclass
class MetricsServer:
    """The running server, and the process it belongs to (a forked child holds a copy)."""

    server: WSGIServer
    thread: threading.Thread
    owner: int

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve_metrics(settings: Settings) -> MetricsServer | None:
    """Serve /metrics on WORKER_METRICS_ADDRESS:WORKER_METRICS_PORT; None when the port is 0.
    Raises SettingsError naming WORKER_METRICS_PORT when the port cannot be bound."""
    if not settings.worker_metrics_port:
        return None
    address, port = settings.worker_metrics_address, settings.worker_metrics_port
    try:
        server, thread = start_http_server(
            port, addr=address, registry=metrics.exposition_registry()
        )
    except OSError as exc:
        reason = "is already in use" if exc.errno == errno.EADDRINUSE else f"failed: {exc}"
        raise SettingsError(
            f"WORKER_METRICS_PORT {port} on WORKER_METRICS_ADDRESS {address} {reason}: "
            "give each worker a port of its own, or 0 to serve no metrics"
        ) from None
    if not metrics.multiprocess():
        log.warning(
            "worker metrics without PROMETHEUS_MULTIPROC_DIR: only the main process's own "
            "values are served, not what the pool's children count"
        )
    log.info("worker metrics served", extra={"address": address, "port": port})
    return MetricsServer(server, thread, os.getpid())


class WorkerMetrics:
    """The Celery signal handlers that run the worker's metrics server."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.running: MetricsServer | None = None

    def start(self, **_: Any) -> None:
        try:
            self.running = serve_metrics(self.settings)
        except SettingsError as exc:
            # Celery logs and swallows an exception from a signal handler: stop the worker.
            log.critical(str(exc))
            raise SystemExit(f"imagine worker: {exc}") from None

    def forget_inherited(self, **_: Any) -> None:
        """In a freshly forked pool child: close its copy of the listening socket (the main
        process keeps serving on its own)."""
        running = self.running
        if running is not None and running.owner != os.getpid():
            running.server.socket.close()
            self.running = None

    def child_exited(self, pid: int | None = None, **_: Any) -> None:
        """A pool child is exiting: its live gauges leave the merged view; its counters stay,
        so totals never go back."""
        if metrics.multiprocess():
            mark_process_dead(pid or os.getpid())  # type: ignore[no-untyped-call]  # unannotated


def install(settings: Settings) -> WorkerMetrics | None:
    """Connect the handlers when WORKER_METRICS_PORT asks for a server (beat sends none of
    these signals); None when it does not."""
    if not settings.worker_metrics_port:
        return None
    handlers = WorkerMetrics(settings)
    signals.worker_init.connect(handlers.start, weak=False)
    signals.worker_process_init.connect(handlers.forget_inherited, weak=False)
    signals.worker_process_shutdown.connect(handlers.child_exited, weak=False)
    return handlers
