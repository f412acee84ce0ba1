"""Send nudges to the workers by task name, so the pipeline never imports the workers."""

from __future__ import annotations

from typing import Any

SUBMIT_QUEUE = "submit"
FINALIZE_QUEUE = "finalize"
NOTIFY_QUEUE = "notify"
RECONCILE_QUEUE = "reconcile"
QUEUES = (SUBMIT_QUEUE, FINALIZE_QUEUE, NOTIFY_QUEUE, RECONCILE_QUEUE)


class CeleryDispatcher:
    """A `Dispatcher` over a Celery app: messages carry ids only."""

    def __init__(self, app: Any) -> None:
        self._app = app

    def submit_job(self, job_id: str, countdown: float = 0) -> None:
        self._app.send_task("imagine.submit_job", args=[job_id], queue=SUBMIT_QUEUE,
                            countdown=countdown or None)

    def finalize_slot(self, job_id: str, slot: int, countdown: float = 0) -> None:
        self._app.send_task("imagine.finalize_slot", args=[job_id, slot], queue=FINALIZE_QUEUE,
                            countdown=countdown or None)

    def notify_job(self, job_id: str) -> None:
        self._app.send_task("imagine.notify_job", args=[job_id], queue=NOTIFY_QUEUE)
