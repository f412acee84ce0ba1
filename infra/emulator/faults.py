"""Fault decisions: rates drawn from a seeded RNG, and one-shot queues for exact counts."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from typing import Any

from infra.emulator.config import EmulatorConfig

# kind -> parameters it accepts (with their defaults when not given)
QUEUE_KINDS: dict[str, dict[str, Any]] = {
    "drop_webhook": {},
    "duplicate_webhook": {},
    "delay_webhook": {"delay_ms": 1000},
    "reorder_webhook": {},
    "submit_error": {"status": 503, "retry_after_s": None},
    "upload_fail": {"mode": None},
    "item_error": {"code": "timeoutProvider", "message": None},
    "not_found_for_live_task": {},
}


class FaultError(ValueError):
    """A queue entry the emulator does not understand."""


@dataclass
class QueuedFault:
    """`count` more events of `kind` (optionally of one task) get this fault."""

    kind: str
    count: int
    params: dict[str, Any] = field(default_factory=dict)
    task_uuid: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON shape in GET /_emulator/faults/queue."""
        return {
            "kind": self.kind,
            "count": self.count,
            "params": self.params,
            "taskUUID": self.task_uuid,
        }


class Faults:
    """Decides, thread-safely and reproducibly for a seed, which events fail."""

    def __init__(self, config: EmulatorConfig) -> None:
        self._config = config
        self._lock = threading.Lock()
        self._queue: list[QueuedFault] = []
        self.reseed()

    def reseed(self) -> None:
        """Restart the RNGs from the configured seed."""
        with self._lock:
            self._rng = random.Random(self._config.seed)
            # A second stream for latencies, jitter and seeds, so they don't shift fault draws.
            base = None if self._config.seed is None else self._config.seed + 1
            self._noise = random.Random(base)

    def chance(self, rate: float) -> bool:
        """True with probability `rate` (no draw when the rate is 0 or 1)."""
        if rate <= 0.0:
            return False
        if rate >= 1.0:
            return True
        with self._lock:
            return self._rng.random() < rate

    def pick(self, options: list[Any]) -> Any:
        """One of `options`, from the fault stream."""
        with self._lock:
            return self._rng.choice(options)

    def uniform(self, low: float, high: float) -> float:
        """A uniform number from the noise stream."""
        with self._lock:
            return self._noise.uniform(low, high)

    def randint(self, low: int, high: int) -> int:
        """A uniform integer from the noise stream."""
        with self._lock:
            return self._noise.randint(low, high)

    def enqueue(self, body: dict[str, Any]) -> QueuedFault:
        """Add a queue entry from the JSON of POST /_emulator/faults/queue."""
        kind = body.get("kind")
        if kind not in QUEUE_KINDS:
            raise FaultError(f"kind must be one of {sorted(QUEUE_KINDS)}")
        count = body.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise FaultError("count must be a positive integer")
        task_uuid = body.get("taskUUID")
        if task_uuid is not None and not isinstance(task_uuid, str):
            raise FaultError("taskUUID must be a string")
        params = dict(QUEUE_KINDS[kind])
        for name, value in body.items():
            if name in ("kind", "count", "taskUUID"):
                continue
            if name not in params:
                raise FaultError(f"{kind} takes no parameter {name!r}")
            params[name] = value
        entry = QueuedFault(kind, count, params, task_uuid)
        with self._lock:
            self._queue.append(entry)
        return entry

    def take(self, kind: str, task_uuid: str | None = None) -> dict[str, Any] | None:
        """Consume one queued `kind` fault matching the task; its params, or None."""
        with self._lock:
            for entry in self._queue:
                if entry.kind == kind and entry.task_uuid in (None, task_uuid):
                    entry.count -= 1
                    if entry.count == 0:
                        self._queue.remove(entry)
                    return dict(entry.params)
        return None

    def queued(self) -> list[dict[str, Any]]:
        """Pending queue entries."""
        with self._lock:
            return [e.to_dict() for e in self._queue]

    def clear(self) -> None:
        """Empty the queue."""
        with self._lock:
            self._queue.clear()
