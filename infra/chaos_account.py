"""Chaos accounting: each image of a run checked against its record, S3 and the ledger."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.models import JOB_TERMINAL, Job, Slot, SlotState
from pipeline.store import RedisJobStore

PERMANENT_ITEM_CODE = "providerContentPolicyViolation"
# A slot that ended without an image, and says why.
FAILED_SLOT_STATES = frozenset({SlotState.FAILED, SlotState.DEAD})

SlotKey = tuple[str, int]
Emulator = Callable[[str], Any]  # GET of an emulator control path, answering JSON


@dataclass
class Counts:
    """The outcome the last line reports."""

    requested: int = 0
    stored: int = 0
    failed: int = 0
    lost: int = 0
    duplicates: int = 0
    charged: int = 0
    charged_twice: int = 0
    drain_s: float = 0.0
    permanent_injected: int = 0
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"chaos: requested={self.requested} stored={self.stored} failed={self.failed} "
            f"lost={self.lost} duplicates={self.duplicates} charged={self.charged} "
            f"charged_twice={self.charged_twice} drain_s={self.drain_s:.1f}"
        )

    @property
    def ok(self) -> bool:
        return (
            not self.problems
            and self.lost == 0
            and self.duplicates == 0
            and self.charged_twice == 0
            and self.failed <= self.permanent_injected
            and self.stored + self.failed == self.requested
        )


@dataclass
class Records:
    """The slot records of a run's jobs (None: the job names a slot Redis has no record of), and
    which slot each taskUUID ever belonged to."""

    slots: dict[SlotKey, Slot | None] = field(default_factory=dict)
    slot_of_task: dict[str, SlotKey] = field(default_factory=dict)


class ChaosAccount:
    """Accounts for every requested image: stored once, failed for a reason, or lost."""

    def __init__(
        self,
        store: RedisJobStore,
        s3: Any,
        bucket: str,
        emulator: Emulator,
        say: Callable[[str], None],
    ) -> None:
        self.store = store
        self.s3 = s3
        self.bucket = bucket
        self.emulator = emulator
        self.say = say

    def account(self, job_ids: list[str], requested: int, *, exact_faults: bool) -> Counts:
        """The run's counts: records, final objects and charges, each checked."""
        counts = Counts(requested=requested)
        records = self.read_records(job_ids, counts)
        self.count_slots(records, counts)
        self.check_objects(job_ids, records, counts)
        self.check_charges(records, counts)
        self.count_injected(counts, exact_faults=exact_faults)
        return counts

    def read_records(self, job_ids: list[str], counts: Counts) -> Records:
        """Every job's slot records from Redis; a job missing, open or without manifest is noted."""
        records = Records()
        for job_id in job_ids:
            job = self.store.get_job(job_id)
            counts.problems += _job_problems(job_id, job)
            if job is None:
                continue
            for n in range(job.slot_count):
                _add_slot(records, (job_id, n), job.slot(n))
        return records

    def count_slots(self, records: Records, counts: Counts) -> None:
        """Stored and failed slots; every other requested image is lost."""
        for (job_id, n), slot in records.slots.items():
            if slot is not None and slot.state == SlotState.STORED:
                counts.stored += 1
            elif slot is not None and slot.state in FAILED_SLOT_STATES and slot.error_code:
                counts.failed += 1
                self.say(
                    f"slot {job_id}/{n} {slot.state}: {slot.error_code} "
                    f"{(slot.error_message or '')[:120]}"
                )
            else:
                self.say(f"slot {job_id}/{n} lost in state {slot.state if slot else None}")
        counts.lost = counts.requested - counts.stored - counts.failed

    def check_objects(self, job_ids: list[str], records: Records, counts: Counts) -> None:
        """Final objects: exactly one per stored slot, matching its record; nothing else."""
        objects = self._final_objects()
        expected = self._expected_keys(records, counts)
        ours = set(job_ids)
        for key in sorted(objects):
            if key not in expected and not _is_manifest_of(key, ours):
                counts.duplicates += 1
                self.say(f"unexpected object {key}")
        for key, slot in expected.items():
            if key not in objects:
                counts.problems.append(f"stored slot {slot[0]}/{slot[1]}: {key} is missing")
                continue
            record = records.slots[slot]
            problem = self._object_problem(key, slot, record) if record else None
            if problem:
                counts.problems.append(problem)
        self.say(f"S3: {len(objects)} objects under jobs/, {len(expected)} final images checked")

    def _final_objects(self) -> dict[str, dict[str, Any]]:
        objects: dict[str, dict[str, Any]] = {}
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix="jobs/"):
            for item in page.get("Contents", []):
                objects[item["Key"]] = item
        return objects

    @staticmethod
    def _expected_keys(records: Records, counts: Counts) -> dict[str, SlotKey]:
        expected: dict[str, SlotKey] = {}
        for (job_id, n), slot in records.slots.items():
            if slot is None or slot.state != SlotState.STORED:
                continue
            if not slot.final_key:
                counts.problems.append(f"stored slot {job_id}/{n} has no final key")
                continue
            expected[slot.final_key] = (job_id, n)
        return expected

    def _object_problem(self, key: str, slot: SlotKey, record: Slot) -> str | None:
        """How the object at key differs from its slot's record, if it does."""
        head = self.s3.head_object(Bucket=self.bucket, Key=key)
        size_ok = int(head["ContentLength"]) == record.size
        etag_ok = head["ETag"].strip('"') == (record.etag or "").strip('"')
        if size_ok and etag_ok:
            return None
        return (
            f"stored slot {slot[0]}/{slot[1]}: {key} is {head['ContentLength']} bytes "
            f"{head['ETag']}, the record says {record.size} {record.etag}"
        )

    def check_charges(self, records: Records, counts: Counts) -> None:
        """Charged images per slot, from the emulator's ledger: never twice for one slot."""
        entries = self.emulator("/_emulator/ledger")["entries"]
        counts.charged = len(entries)
        per_slot: dict[SlotKey, int] = {}
        for entry in entries:
            slot = records.slot_of_task.get(entry["taskUUID"])
            if slot is None:
                counts.problems.append(f"charged task {entry['taskUUID']} belongs to no slot")
                continue
            per_slot[slot] = per_slot.get(slot, 0) + 1
        for slot, charged in sorted(per_slot.items()):
            if charged > 1:
                counts.charged_twice += 1
                self.say(f"slot {slot[0]}/{slot[1]} charged {charged} times")

    def count_injected(self, counts: Counts, *, exact_faults: bool) -> None:
        """What the emulator injected: permanent item failures, and one-shot faults left over."""
        counts.permanent_injected = self._permanent_failures()
        stats = self.emulator("/_emulator/stats")
        queue = self.emulator("/_emulator/faults/queue")["queue"]
        if exact_faults and queue:
            counts.problems.append(f"one-shot faults never consumed: {queue}")
        self.say(
            "emulator: "
            + ", ".join(
                f"{k}={v}" for k, v in sorted(stats.items()) if isinstance(v, int | float) and v
            )
        )
        self.say(f"emulator: {counts.permanent_injected} permanent item failures injected")

    def _permanent_failures(self) -> int:
        found = 0
        for task in self.emulator("/_emulator/tasks")["tasks"]:
            if "error" not in task.get("statuses", []):
                continue
            detail = self.emulator(f"/_emulator/tasks/{task['taskUUID']}")
            for image in detail.get("slots", detail.get("images", [])):
                if (image.get("error") or {}).get("code") == PERMANENT_ITEM_CODE:
                    found += 1
        return found


def _job_problems(job_id: str, job: Job | None) -> list[str]:
    if job is None:
        return [f"job {job_id} is missing from Redis"]
    problems = []
    if job.state not in JOB_TERMINAL:
        problems.append(f"job {job_id} is {job.state}")
    if not job.manifest_key:
        problems.append(f"job {job_id} has no manifest")
    return problems


def _add_slot(records: Records, key: SlotKey, slot: Slot | None) -> None:
    records.slots[key] = slot
    if slot is None:
        return
    for task_uuid in [slot.task_uuid, *slot.previous_task_uuids]:
        if task_uuid:
            records.slot_of_task[task_uuid] = key


def _is_manifest_of(key: str, job_ids: set[str]) -> bool:
    parts = key.split("/")
    return len(parts) == 3 and parts[1] in job_ids and parts[2] == "manifest.json"
