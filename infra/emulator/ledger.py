"""What the emulator charged, one entry per charged image, by taskUUID."""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Charge:
    """One charged image (or failed item, when errored items are charged)."""

    taskUUID: str  # the wire's spelling, so the ledger JSON reads like the API
    imageUUID: str | None
    index: int
    cost: float
    charged_at: float
    outcome: str
    model: str | None = None


class Ledger:
    """Thread-safe list of charges with totals."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._charges: list[Charge] = []

    def charge(
        self,
        task_uuid: str,
        image_uuid: str | None,
        index: int,
        cost: float,
        outcome: str,
        model: str | None = None,
    ) -> Charge:
        """Record one charge, with the model that made it, and return it."""
        entry = Charge(task_uuid, image_uuid, index, cost, time.time(), outcome, model)
        with self._lock:
            self._charges.append(entry)
        return entry

    def entries(self, task_uuid: str | None = None) -> list[Charge]:
        """Charges in order, optionally of one task."""
        with self._lock:
            return [c for c in self._charges if task_uuid is None or c.taskUUID == task_uuid]

    def clear(self) -> None:
        """Forget every charge."""
        with self._lock:
            self._charges.clear()

    def report(self, task_uuid: str | None = None) -> dict[str, Any]:
        """JSON of GET /_emulator/ledger: entries and totals overall, per task and per model."""
        entries = self.entries(task_uuid)
        by_task: dict[str, dict[str, Any]] = {}
        by_model: dict[str, dict[str, Any]] = {}
        for charge in entries:
            for row in (
                by_task.setdefault(charge.taskUUID, {"count": 0, "cost": 0.0}),
                by_model.setdefault(charge.model or "", {"count": 0, "cost": 0.0}),
            ):
                row["count"] += 1
                row["cost"] = round(row["cost"] + charge.cost, 6)
        return {
            "entries": [asdict(c) for c in entries],
            "totals": {
                "count": len(entries),
                "cost": round(sum(c.cost for c in entries), 6),
                "byTask": by_task,
                "byModel": by_model,
            },
        }
