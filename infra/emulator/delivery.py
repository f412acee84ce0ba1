"""The emulator's deliveries: the upload PUT and the webhook POSTs of each image, with faults."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from infra.emulator import render

if TYPE_CHECKING:
    from infra.emulator.engine import Engine, Slot, Task


@dataclass
class HeldWebhook:
    """A webhook held back to arrive after the next one."""

    send: Callable[[], None]
    released: bool = False


class Deliveries:
    """Sends what each finished image owes its caller, in the configured order, with faults."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.held: list[HeldWebhook] = []

    def error_body(self, task_uuid: str, error: dict[str, str]) -> dict[str, Any]:
        if self.engine.config.error_placement == "item":
            item = {
                "taskType": "imageInference",
                "taskUUID": task_uuid,
                "status": "error",
                "error": dict(error),
            }
            return item if self.engine.config.envelope == "flat" else {"data": [item]}
        return {
            "errors": [
                {**error, "taskUUID": task_uuid, "taskType": "imageInference", "status": "error"}
            ]
        }

    def success_body(self, item: dict[str, Any]) -> dict[str, Any]:
        body = dict(item)
        if self.engine.config.webhook_status_field:
            body["status"] = "success"
        return body if self.engine.config.envelope == "flat" else {"data": [body]}

    # --- deliveries ------------------------------------------------------------------------

    def deliver_success(self, task: Task, slot: Slot, item: dict[str, Any], data: bytes) -> None:
        req = task.request
        order = self.engine.config.put_order
        if req.upload_endpoint is not None and order == "never":
            self.engine.count("puts_skipped")
            slot.put = {"outcome": "skipped", "reason": "put_order never"}
        if req.upload_endpoint is not None and order == "before":
            self._put(task, slot, data)
        self.engine.finish(slot, "success", item=item)
        if req.webhook_url is None:
            slot.webhook_outcome = "none"
        else:
            self.send_webhook(task, slot, self.success_body(item))
        if req.upload_endpoint is not None and order == "after" and self.engine.current(task):
            self._put(task, slot, data)

    def _put(self, task: Task, slot: Slot, data: bytes) -> None:
        req = task.request
        if req.upload_endpoint is None:
            return
        fault = self.engine.faults.take("upload_fail", req.task_uuid)
        if fault is None and self.engine.faults.chance(self.engine.config.upload_fail_rate):
            fault = {"mode": None}
        record: dict[str, Any] = {
            "outcome": "pending",
            "status": None,
            "error": None,
            "bytes": len(data),
            "attempts": 0,
            "at": time.time(),
        }
        slot.put = record
        if fault is not None:
            mode = fault.get("mode") or self.engine.config.upload_fail_mode
            self.engine.count("puts_failed")
            if mode == "skip":
                record.update(outcome="fault_skipped", bytes=0)
                return
            data = data[: len(data) // 2]
            record.update(bytes=len(data))
        headers = {"Content-Type": render.CONTENT_TYPES[req.output_format]}
        for attempt in range(1, self.engine.config.put_attempts + 1):
            record["attempts"] = attempt
            try:
                response = self.engine.client.put(
                    req.upload_endpoint,
                    content=data,
                    headers=headers,
                    timeout=self.engine.config.put_timeout_s,
                )
            except httpx.HTTPError as exc:
                record.update(status=None, error=f"{type(exc).__name__}: {exc}")
                continue
            record.update(status=response.status_code, error=None)
            if response.is_success:
                break
        ok = record["status"] is not None and 200 <= record["status"] < 300
        if fault is not None:
            record["outcome"] = "fault_truncated"
        else:
            record["outcome"] = "ok" if ok else "failed"
            self.engine.count("puts_ok" if ok else "puts_failed")

    def send_webhook(self, task: Task, slot: Slot, body: dict[str, Any]) -> None:
        """POST body to the task's webhookURL under the configured faults."""
        uuid_ = task.request.task_uuid
        cfg = self.engine.config
        if self._fault("drop_webhook", uuid_, cfg.drop_webhook_rate):
            slot.webhook_outcome = "dropped"
            self.engine.count("webhooks_dropped")
            return
        delay_ms = self._delay_ms(uuid_)
        if delay_ms:
            self.engine.count("webhooks_delayed")
            if self.engine.stopping.wait(delay_ms / 1000):
                return
        duplicate = self._fault("duplicate_webhook", uuid_, cfg.duplicate_webhook_rate)
        reorder = self._fault("reorder_webhook", uuid_, cfg.reorder_webhook_rate)

        def send() -> None:
            if not self.engine.current(task):
                return
            self._post_with_retries(task, slot, body, duplicate=False)
            if duplicate and self.engine.current(task):
                self.engine.count("webhooks_duplicated")
                self._post_with_retries(task, slot, body, duplicate=True)

        if reorder:
            self._hold(send)
            return
        if not self.engine.current(task):
            return
        self._post_with_retries(task, slot, body, duplicate=False, release_held=True)
        if duplicate and self.engine.current(task):
            self.engine.count("webhooks_duplicated")
            self._post_with_retries(task, slot, body, duplicate=True)

    def _hold(self, send: Callable[[], None]) -> None:
        held = HeldWebhook(send)
        with self.engine.lock:
            self.held.append(held)
            self.engine.add_pending()
            self.engine.count("webhooks_reordered")
        self.engine.spawn_delivery(self._release_after_hold, held)

    def _release_after_hold(self, held: HeldWebhook) -> None:
        self.engine.stopping.wait(self.engine.config.reorder_hold_ms / 1000)
        if self._claim(held):
            self._send_held(held)

    def _claim(self, held: HeldWebhook) -> bool:
        with self.engine.lock:
            if held.released:
                return False
            held.released = True
            if held in self.held:
                self.held.remove(held)
            return True

    def _send_held(self, held: HeldWebhook) -> None:
        try:
            if not self.engine.stopping.is_set():
                held.send()
        finally:
            self.engine.settle()

    def _release_held(self) -> None:
        with self.engine.lock:
            waiting = list(self.held)
        for held in waiting:
            if self._claim(held):
                self.engine.spawn_delivery(self._send_held, held)

    def _post_with_retries(
        self,
        task: Task,
        slot: Slot,
        body: dict[str, Any],
        duplicate: bool,
        release_held: bool = False,
    ) -> None:
        url = task.request.webhook_url
        if url is None:
            return
        payload = json.dumps(body).encode()
        cfg = self.engine.config
        for attempt in range(1, cfg.webhook_attempts + 1):
            if attempt > 1:
                delay_ms = min(
                    cfg.webhook_backoff_ms * 2 ** (attempt - 2), cfg.webhook_backoff_cap_ms
                )
                delay_ms += self.engine.faults.uniform(0, cfg.webhook_jitter_ms)
                if self.engine.stopping.wait(delay_ms / 1000) or not self.engine.current(task):
                    return
            record: dict[str, Any] = {
                "attempt": attempt,
                "duplicate": duplicate,
                "at": time.time(),
                "status": None,
                "error": None,
            }
            try:
                response = self.engine.client.post(
                    url,
                    content=payload,
                    headers={"Content-Type": "application/json"},
                    timeout=cfg.webhook_timeout_s,
                )
                record["status"] = response.status_code
                ok = response.is_success
            except httpx.HTTPError as exc:
                record["error"] = f"{type(exc).__name__}: {exc}"
                ok = False
            with self.engine.lock:
                slot.webhooks.append(record)
                self.engine.count("webhooks_sent")
                self.engine.count("webhooks_delivered" if ok else "webhooks_failed")
            if release_held and attempt == 1:
                self._release_held()
            if ok:
                if not duplicate:
                    slot.webhook_outcome = "delivered"
                return
        if not duplicate:
            slot.webhook_outcome = "exhausted"
        self.engine.count("webhooks_exhausted")

    def _fault(self, kind: str, task_uuid: str, rate: float) -> bool:
        """Whether a one-shot fault of kind is queued for the task, else whether rate hits."""
        faults = self.engine.faults
        return faults.take(kind, task_uuid) is not None or faults.chance(rate)

    def _delay_ms(self, task_uuid: str) -> float:
        """How long to hold this webhook back: a queued delay fault, else the configured one."""
        delay_fault = self.engine.faults.take("delay_webhook", task_uuid)
        if delay_fault is not None:
            return float(delay_fault.get("delay_ms") or 0)
        if self.engine.config.delay_webhook_ms:
            return self.engine.faults.uniform(0, self.engine.config.delay_webhook_ms)
        return 0.0

    def drop_held(self) -> int:
        """Forget every held webhook (the engine is resetting); how many were still pending."""
        with self.engine.lock:
            dropped = 0
            for held in self.held:
                if not held.released:
                    held.released = True
                    dropped += 1
            self.held.clear()
            return dropped
