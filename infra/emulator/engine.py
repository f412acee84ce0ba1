"""The emulator's scheduler: task state, latency timers, the render pool and hosted images."""

from __future__ import annotations

import base64
import heapq
import itertools
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from infra.emulator import catalog, render
from infra.emulator.catalog import InferenceRequest, TaskError
from infra.emulator.config import EmulatorConfig
from infra.emulator.delivery import Deliveries
from infra.emulator.faults import Faults
from infra.emulator.ledger import Ledger

LOG = logging.getLogger(__name__)
UPLOAD_TTL_S = 30 * 86400
MAX_REFERENCE_BYTES = 50 * 1024 * 1024
ITEM_ERRORS = {
    "timeoutProvider": "The provider did not answer in time.",
    "providerContentPolicyViolation": "The provider refused the request under its content policy.",
}
STAT_NAMES = (
    "requests",
    "tasks_accepted",
    "tasks_rejected",
    "submit_faults",
    "polls",
    "polls_not_found",
    "uploads",
    "images_rendered",
    "items_failed",
    "webhooks_sent",
    "webhooks_delivered",
    "webhooks_failed",
    "webhooks_exhausted",
    "webhooks_dropped",
    "webhooks_duplicated",
    "webhooks_reordered",
    "webhooks_delayed",
    "puts_ok",
    "puts_failed",
    "puts_skipped",
)


@dataclass
class Slot:
    """One of the N images of a task, with what was delivered for it."""

    index: int
    status: str = "processing"
    progress: int = 0
    item: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    put: dict[str, Any] | None = None
    webhooks: list[dict[str, Any]] = field(default_factory=list)
    webhook_outcome: str = "pending"
    started_at: float = 0.0
    ready_at: float = 0.0

    def progress_now(self) -> int:
        """Progress 0-95 while processing, from the elapsed share of the latency."""
        span = self.ready_at - self.started_at
        if self.status != "processing" or span <= 0:
            return self.progress if self.status != "processing" else 50
        return max(0, min(95, int(95 * (time.monotonic() - self.started_at) / span)))

    def to_dict(self) -> dict[str, Any]:
        """JSON shape in GET /_emulator/tasks/<taskUUID>."""
        item = None
        if self.item is not None:
            item = {
                k: v for k, v in self.item.items() if k not in ("imageBase64Data", "imageDataURI")
            }
        return {
            "index": self.index,
            "status": self.status,
            "progress": self.progress_now(),
            "item": item,
            "error": self.error,
            "put": self.put,
            "webhooks": list(self.webhooks),
            "webhookOutcome": self.webhook_outcome,
        }


@dataclass
class Task:
    """An accepted imageInference task."""

    request: InferenceRequest
    public_url: str
    unit_cost: float
    generation: int
    created_at: float = field(default_factory=time.time)
    size: tuple[int, int] | None = None
    slots: list[Slot] = field(default_factory=list)

    @property
    def done(self) -> bool:
        """Whether every image finished (success or error)."""
        return all(s.status != "processing" for s in self.slots)

    def summary(self) -> dict[str, Any]:
        """JSON shape in GET /_emulator/tasks."""
        req = self.request
        return {
            "taskUUID": req.task_uuid,
            "model": req.model,
            "createdAt": self.created_at,
            "deliveryMethod": req.delivery_method,
            "numberResults": req.number_results,
            "outputFormat": req.output_format,
            "outputType": req.output_type,
            "size": list(self.size) if self.size else None,
            "unitCost": self.unit_cost,
            "webhookURL": req.webhook_url,
            "uploadEndpoint": req.upload_endpoint,
            "done": self.done,
            "statuses": [s.status for s in self.slots],
        }


@dataclass
class HostedImage:
    """Bytes served at /image/<imageUUID>.<ext> until `expires_at`."""

    data: bytes
    output_format: str
    expires_at: float


class Engine:
    """Everything stateful of the emulator; views call it, threads do the slow work."""

    def __init__(self, config: EmulatorConfig, client: httpx.Client | None = None) -> None:
        self.config = config
        self.initial_config = config.copy()
        self.faults = Faults(config)
        self.ledger = Ledger()
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._tasks: dict[str, Task] = {}
        self._used_uuids: set[str] = set()
        self._images: OrderedDict[str, HostedImage] = OrderedDict()
        self._stats = dict.fromkeys(STAT_NAMES, 0)
        self._pending = 0
        self._generation = 0
        self._client = client or httpx.Client(follow_redirects=False)
        self._render_pool = ThreadPoolExecutor(config.render_workers, "emulator-render")
        self._delivery_pool = ThreadPoolExecutor(config.delivery_workers, "emulator-deliver")
        # Latency is waited out here, not in the render pool, so it doesn't serialise renders.
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._timer_ids = itertools.count()
        self._timer_thread: threading.Thread | None = None
        self.deliveries = Deliveries(self)

    # --- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every thread (waiting jobs end early) and close the HTTP client."""
        self._stop.set()
        with self._changed:
            self._changed.notify_all()
        if self._timer_thread is not None:
            self._timer_thread.join(timeout=10)
        with self._changed:
            for _, _, job in self._timers:
                job()
            self._timers.clear()
        self._render_pool.shutdown(wait=True, cancel_futures=True)
        self._delivery_pool.shutdown(wait=True, cancel_futures=True)
        self._client.close()

    def reset(self, restore_config: bool = False) -> None:
        """Forget tasks, images, ledger, stats, fault queues (and the config when asked)."""
        with self._lock:
            if restore_config:
                self.config.update(self.initial_config.to_dict())
            self._generation += 1
            self._tasks.clear()
            self._used_uuids.clear()
            self._images.clear()
            self._pending -= self.deliveries.drop_held()
            self._changed.notify_all()
            self._stats = dict.fromkeys(STAT_NAMES, 0)
        self.ledger.clear()
        self.faults.clear()
        self.faults.reseed()

    @property
    def lock(self) -> threading.RLock:
        """The lock over every piece of task state (reentrant)."""
        return self._lock

    @property
    def stopping(self) -> threading.Event:
        """Set once the engine closes: waits end early."""
        return self._stop

    @property
    def client(self) -> httpx.Client:
        """The HTTP client of every outbound request."""
        return self._client

    def add_pending(self) -> None:
        """Count one more job not finished yet (settle() ends it)."""
        with self._changed:
            self._pending += 1

    def spawn_delivery(self, job: Callable[..., None], *args: Any) -> None:
        """Run job(*args) on the delivery pool, pending until it returns."""
        self._spawn(self._delivery_pool, job, *args)

    def count(self, name: str, amount: int = 1) -> None:
        """Add to one of the stats counters."""
        with self._lock:
            self._stats[name] += amount

    def stats(self) -> dict[str, Any]:
        """JSON of GET /_emulator/stats."""
        with self._lock:
            return {
                **self._stats,
                "pending": self._pending,
                "tasks": len(self._tasks),
                "hosted_images": len(self._images),
                "held_webhooks": len(self.deliveries.held),
            }

    @property
    def pending(self) -> int:
        """Jobs not finished yet: renders, deliveries, held webhooks."""
        with self._lock:
            return self._pending

    def wait_idle(self, timeout: float) -> bool:
        """Block until nothing is pending or the timeout passed; whether it is idle."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return True

    def _spawn(self, pool: ThreadPoolExecutor, job: Callable[..., None], *args: Any) -> None:
        with self._changed:
            self._pending += 1
        try:
            pool.submit(self._run, job, *args)
        except RuntimeError:  # the pool shut down: the emulator is closing
            self.settle()

    def _spawn_later(
        self, delay: float, pool: ThreadPoolExecutor, job: Callable[..., None], *args: Any
    ) -> None:
        """Like _spawn, after `delay` seconds (pending from now on)."""
        if delay <= 0:
            self._spawn(pool, job, *args)
            return

        def submit() -> None:
            try:
                pool.submit(self._run, job, *args)
            except RuntimeError:  # closing: nothing will run it
                self.settle()

        with self._changed:
            self._pending += 1
            heapq.heappush(self._timers, (time.monotonic() + delay, next(self._timer_ids), submit))
            if self._timer_thread is None:
                self._timer_thread = threading.Thread(
                    target=self._tick, name="emulator-timer", daemon=True
                )
                self._timer_thread.start()
            self._changed.notify_all()

    def _tick(self) -> None:
        with self._changed:
            while not self._stop.is_set():
                now = time.monotonic()
                while self._timers and self._timers[0][0] <= now:
                    _, _, due = heapq.heappop(self._timers)
                    due()
                wait = self._timers[0][0] - now if self._timers else 1.0
                self._changed.wait(max(0.001, min(wait, 1.0)))

    def _run(self, job: Callable[..., None], *args: Any) -> None:
        try:
            job(*args)
        finally:
            self.settle()

    def settle(self) -> None:
        with self._changed:
            self._pending -= 1
            self._changed.notify_all()

    # --- tasks -----------------------------------------------------------------------------

    def reserve(self, task_uuid: str) -> bool:
        """Claim a taskUUID; False when it was used before (conflictTaskUUID)."""
        with self._lock:
            if task_uuid in self._used_uuids:
                return False
            self._used_uuids.add(task_uuid)
            return True

    def start(self, request: InferenceRequest, public_url: str) -> Task:
        """Register an accepted task and schedule its renders."""
        unit_cost = catalog.unit_cost(
            len(request.reference_images), *self.config.prices(request.model)
        )
        with self._lock:
            task = Task(
                request,
                public_url,
                unit_cost,
                self._generation,
                slots=[Slot(i) for i in range(request.number_results)],
            )
            self._tasks[request.task_uuid] = task
            self._stats["tasks_accepted"] += 1
        for slot in task.slots:
            latency = self._latency_s()
            slot.started_at = time.monotonic()
            slot.ready_at = slot.started_at + latency
            self._spawn_later(latency, self._render_pool, self._render_slot, task, slot)
        return task

    def task(self, task_uuid: str) -> Task | None:
        """The task with that UUID, if it is known."""
        with self._lock:
            return self._tasks.get(task_uuid)

    def tasks(self) -> list[Task]:
        """All known tasks in submission order."""
        with self._lock:
            return list(self._tasks.values())

    def wait_task(self, task: Task, timeout: float) -> bool:
        """Block until every image of the task finished; whether it did in time."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not task.done:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stop.is_set():
                    return False
                self._changed.wait(min(remaining, 0.5))
            return True

    def task_detail(self, task: Task) -> dict[str, Any]:
        """JSON of GET /_emulator/tasks/<taskUUID>."""
        with self._lock:
            return {**task.summary(), "slots": [s.to_dict() for s in task.slots]}

    def current(self, task: Task) -> bool:
        with self._lock:
            return task.generation == self._generation and not self._stop.is_set()

    def _latency_s(self) -> float:
        cfg = self.config
        if cfg.latency_min_ms is not None and cfg.latency_max_ms is not None:
            return self.faults.uniform(cfg.latency_min_ms, cfg.latency_max_ms) / 1000
        return cfg.latency_ms / 1000

    def _render_slot(self, task: Task, slot: Slot) -> None:
        if not self.current(task):
            return
        try:
            self._render(task, slot)
        except Exception as exc:  # any bug must fail the image, not leave it processing
            LOG.exception("render of %s #%d failed", task.request.task_uuid, slot.index)
            self._fail_slot(task, slot, "providerError", f"{type(exc).__name__}: {exc}")

    def _render(self, task: Task, slot: Slot) -> None:
        req = task.request
        fault = self._item_fault(req.task_uuid)
        if fault is not None:
            self._fail_slot(task, slot, str(fault["code"]), fault.get("message"))
            return
        width, height = render.returned_size(self.config.returned_size, *self._task_size(task))
        seed = self.faults.randint(1, 2**31 - 1)
        if self.config.render_once:
            data = render.reused_image(width, height, req.output_format, req.output_quality)
        else:
            data = render.render_image(
                req.prompt, seed, slot.index, width, height, req.output_format, req.output_quality
            )
        if not self.current(task):
            return
        image_uuid = str(uuid.uuid4())
        item: dict[str, Any] = {
            "taskType": "imageInference",
            "taskUUID": req.task_uuid,
            "imageUUID": image_uuid,
        }
        if req.output_type == "URL" and not self.config.omit_image_url:
            ttl = req.ttl if req.ttl is not None else self.config.image_ttl_s
            item["imageURL"] = self.host_image(
                image_uuid, data, req.output_format, ttl, task.public_url
            )
        elif req.output_type == "base64Data":
            item["imageBase64Data"] = base64.b64encode(data).decode()
        else:
            mime = render.CONTENT_TYPES[req.output_format]
            item["imageDataURI"] = f"data:{mime};base64,{base64.b64encode(data).decode()}"
        item["seed"] = seed
        if req.check_content:
            item["NSFWContent"] = False
        if req.include_cost:
            item["cost"] = task.unit_cost
        self.ledger.charge(
            req.task_uuid, image_uuid, slot.index, task.unit_cost, "success", req.model
        )
        self.count("images_rendered")
        wants_put = req.upload_endpoint is not None and self.config.put_order != "never"
        if self.config.deliveries and (wants_put or req.webhook_url):
            self.spawn_delivery(self.deliveries.deliver_success, task, slot, item, data)
            return
        reason = "deliveries off" if not self.config.deliveries else "not requested"
        if req.upload_endpoint is not None:
            self.count("puts_skipped")
            slot.put = {"outcome": "skipped", "reason": reason if wants_put else "put_order never"}
        slot.webhook_outcome = "none" if req.webhook_url is None else "skipped"
        self.finish(slot, "success", item=item)

    def _item_fault(self, task_uuid: str) -> dict[str, Any] | None:
        """The error an image fails with (queued, drawn, or an unknown code), or None."""
        fault = self.faults.take("item_error", task_uuid)
        if fault is None and self.faults.chance(self.config.item_error_rate):
            permanent = self.faults.chance(self.config.item_error_permanent_share)
            fault = {"code": "providerContentPolicyViolation" if permanent else "timeoutProvider"}
        if fault is None and self.faults.chance(self.config.unknown_item_code):
            fault = {"code": self.config.unknown_item_code_name}
        return fault

    def _fail_slot(self, task: Task, slot: Slot, code: str, message: str | None) -> None:
        req = task.request
        error = {"code": code, "message": message or ITEM_ERRORS.get(code, "Generation failed.")}
        if not self.current(task):
            return
        if self.config.charge_errored_items:
            self.ledger.charge(req.task_uuid, None, slot.index, task.unit_cost, "error", req.model)
        self.count("items_failed")
        self.finish(slot, "error", error=error)
        if req.webhook_url is None:
            slot.webhook_outcome = "none"
        elif not self.config.deliveries:
            slot.webhook_outcome = "skipped"
        else:
            self.spawn_delivery(
                self.deliveries.send_webhook,
                task,
                slot,
                self.deliveries.error_body(req.task_uuid, error),
            )

    def finish(
        self,
        slot: Slot,
        status: str,
        item: dict[str, Any] | None = None,
        error: dict[str, str] | None = None,
    ) -> None:
        with self._changed:
            slot.status, slot.item, slot.error, slot.progress = status, item, error, 100
            self._changed.notify_all()

    def _task_size(self, task: Task) -> tuple[int, int]:
        req = task.request
        if req.width is not None and req.height is not None:
            size = (req.width, req.height)
        else:
            with self._lock:
                if task.size is not None:
                    return task.size
            size = catalog.rules_for(req.model).dimensions[req.preset][0]
            if req.reference_images:
                found = self._reference_size(req.reference_images[0])
                if found is not None:
                    size = catalog.closest_size(req.preset, found[0] / found[1], req.model)
        with self._lock:
            task.size = size
        return size

    def _reference_size(self, reference: str) -> tuple[int, int] | None:
        key = reference.rsplit("/", 1)[-1].split(".", 1)[0]
        with self._lock:
            hosted = self._images.get(key)
        if hosted is not None:
            return render.image_size(hosted.data)
        if reference.startswith(("http://", "https://")):
            if not self.config.fetch_reference_urls:
                return None
            try:
                response = self._client.get(reference, timeout=10.0)
            except httpx.HTTPError:
                return None
            if response.status_code != 200 or len(response.content) > MAX_REFERENCE_BYTES:
                return None
            return render.image_size(response.content)
        data = render.decode_image_string(reference)
        return None if data is None else render.image_size(data)

    # --- hosted images and uploads ---------------------------------------------------------

    def host_image(
        self, image_uuid: str, data: bytes, output_format: str, ttl: int, public_url: str
    ) -> str:
        """Keep bytes for `ttl` seconds; the URL they are served at."""
        with self._lock:
            self._images[image_uuid] = HostedImage(data, output_format, time.time() + ttl)
            while len(self._images) > self.config.max_hosted_images:
                self._images.popitem(last=False)
        return f"{public_url}/image/{image_uuid}.{render.EXTENSIONS[output_format]}"

    def hosted(self, image_uuid: str) -> HostedImage | None:
        """A hosted image that has not expired."""
        with self._lock:
            image = self._images.get(image_uuid)
            if image is not None and image.expires_at < time.time():
                del self._images[image_uuid]
                return None
            return image

    def upload(self, value: Any, public_url: str) -> tuple[str, str]:
        """Store an imageUpload (data URI, base64 or URL); its imageUUID and imageURL."""
        if not isinstance(value, str) or not value:
            raise TaskError(
                "invalidImage",
                "Invalid value for 'image': must be a data URI, base64 string or URL.",
                "image",
            )
        if value.startswith(("http://", "https://")):
            try:
                response = self._client.get(value, timeout=10.0)
            except httpx.HTTPError as exc:
                raise TaskError(
                    "invalidImage", f"Could not fetch 'image': {exc}.", "image"
                ) from exc
            data: bytes | None = response.content if response.status_code == 200 else None
        else:
            data = render.decode_image_string(value)
        stored = None if data is None else render.normalise_upload(data)
        if stored is None:
            raise TaskError(
                "invalidImage", "Invalid value for 'image': not a readable image.", "image"
            )
        image_uuid = str(uuid.uuid4())
        url = self.host_image(image_uuid, stored[0], stored[1], UPLOAD_TTL_S, public_url)
        self.count("uploads")
        return image_uuid, url

    # --- responses -------------------------------------------------------------------------

    def poll_view(self, task: Task) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """getResponse's cumulative data items and top-level errors, in slot order."""
        data: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        uuid_ = task.request.task_uuid
        with self._lock:
            for slot in task.slots:
                if slot.status == "processing":
                    data.append(
                        {
                            "taskType": "imageInference",
                            "taskUUID": uuid_,
                            "status": "processing",
                            "progress": slot.progress_now(),
                        }
                    )
                elif slot.status == "success" and slot.item is not None:
                    data.append({**slot.item, "status": "success"})
                elif slot.error is not None:
                    if self.config.poll_error_placement == "item":
                        data.append(
                            {
                                "taskType": "imageInference",
                                "taskUUID": uuid_,
                                "status": "error",
                                "error": dict(slot.error),
                            }
                        )
                    else:
                        errors.append(
                            {
                                **slot.error,
                                "taskType": "imageInference",
                                "taskUUID": uuid_,
                                "status": "error",
                                "documentation": catalog.ERRORS_DOCS_URL,
                            }
                        )
        return data, errors

    def sync_view(self, task: Task) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """A sync request's finished items and errors (unfinished ones time out)."""
        data: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        uuid_ = task.request.task_uuid
        with self._lock:
            for slot in task.slots:
                if slot.status == "success" and slot.item is not None:
                    data.append(dict(slot.item))
                    continue
                error = slot.error or {
                    "code": "timeoutProvider",
                    "message": "The sync request timed out; the task keeps running, poll it "
                    "with getResponse.",
                }
                errors.append(
                    {
                        **error,
                        "taskType": "imageInference",
                        "taskUUID": uuid_,
                        "documentation": catalog.ERRORS_DOCS_URL,
                    }
                )
        return data, errors
