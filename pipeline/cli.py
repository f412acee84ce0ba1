"""The `imagine` command: submit and inspect jobs, operate the pipeline, run the local stack."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from pipeline.config import Settings, SettingsError
from pipeline.errors import PipelineError
from pipeline.models import JobState, SlotState

if TYPE_CHECKING:
    from pipeline.services import JobService


def _service(settings: Settings) -> JobService:
    # Imported here: `imagine stack` and `imagine emulator` start without the pipeline's
    # clients (boto3, Celery) and their import time.
    from pipeline.wiring import build_service

    return build_service(settings)


def _print(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=False))


def _exec_module(module: str, args: list[str]) -> int:
    """Run an infra module in place of this process (the pipeline never imports infra)."""
    argv = [sys.executable, "-m", module, *args]
    os.execv(sys.executable, argv)  # noqa: S606 - our own interpreter and module
    return 0  # pragma: no cover


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    service = _service(settings)
    try:
        if args.file == "-":
            body = json.load(sys.stdin)
        else:
            with open(args.file) as handle:
                body = json.load(handle)
    except (OSError, ValueError) as exc:
        print(f"imagine: cannot read the request from {args.file}: {exc}", file=sys.stderr)
        return 2
    job, created = service.create_job(body, args.tenant, args.idempotency_key)
    print(f"job {job.id} {'created' if created else 'already exists'}", file=sys.stderr)
    if not args.wait:
        _print(service.job_view(job))
        return 0
    while not job.terminal:
        done = sum(1 for slot in job.slots if slot.terminal)
        print(f"\r{job.id} {job.state} {done}/{len(job.slots)} images", end="", file=sys.stderr)
        time.sleep(0.5)
        job = service.get_job(job.id)
    print(file=sys.stderr)
    _print(service.job_view(job))
    return 0 if job.state == JobState.SUCCEEDED else 1


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    service = _service(settings)
    _print(service.job_view(service.find_job(args.id)))
    return 0


def cmd_jobs(args: argparse.Namespace, settings: Settings) -> int:
    service = _service(settings)
    state = JobState(args.state) if args.state else None
    jobs, cursor = service.list_jobs(args.tenant, state=state, limit=args.limit)
    for job in jobs:
        stored = sum(1 for slot in job.slots if slot.state == SlotState.STORED)
        print(f"{job.id}  {job.state:<20} {stored}/{job.slot_count}  {job.reason or ''}")
    if cursor is not None:
        print(f"(more below cursor {cursor!r})")
    return 0


def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    service = _service(settings)
    _print(service.job_view(service.cancel_job(args.id)))
    return 0


def cmd_retry(args: argparse.Namespace, settings: Settings) -> int:
    service = _service(settings)
    _print(service.job_view(service.retry_job(args.id, args.slot or None)))
    return 0


def cmd_dlq(args: argparse.Namespace, settings: Settings) -> int:
    service = _service(settings)
    if args.action == "replay":
        replayed = service.replay_dead_letters(args.limit)
        print(f"replayed {len(replayed)} job(s)")
        for job_id in replayed:
            print(job_id)
        return 0
    entries = service.store.dead_letters(args.limit)
    for entry in entries:
        print(f"{entry.job_id} slot {entry.slot}  {entry.code}: {entry.message}")
    print(f"{len(entries)} dead-lettered slot(s)")
    return 0


def cmd_reconcile(args: argparse.Namespace, settings: Settings) -> int:
    _print(asdict(_service(settings).reconcile()))
    return 0


def cmd_circuit(args: argparse.Namespace, settings: Settings) -> int:
    service = _service(settings)
    if args.action == "reset":
        service.reset_circuit()
        print("circuit closed")
        return 0
    circuit = service.circuit()
    shown: dict[str, Any] = (
        {"state": "open", **asdict(circuit)} if circuit.open else {"state": "closed"}
    )
    shown["models"] = [asdict(paused) for paused in service.model_circuits()]
    _print(shown)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagine", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    submit = sub.add_parser("submit", help="submit a job request (JSON file or - for stdin)")
    submit.add_argument("file")
    submit.add_argument("--tenant", default="cli")
    submit.add_argument("--idempotency-key")
    submit.add_argument("--wait", action="store_true", help="wait and show progress")
    submit.set_defaults(func=cmd_submit)
    status = sub.add_parser("status", help="show a job by job id or taskUUID")
    status.add_argument("id")
    status.set_defaults(func=cmd_status)
    jobs = sub.add_parser("jobs", help="list a tenant's jobs, newest first")
    jobs.add_argument("--tenant", default="cli")
    jobs.add_argument("--state", choices=[state.value for state in JobState])
    jobs.add_argument("--limit", type=int, default=50)
    jobs.set_defaults(func=cmd_jobs)
    cancel = sub.add_parser("cancel", help="cancel a queued or running job")
    cancel.add_argument("id")
    cancel.set_defaults(func=cmd_cancel)
    retry = sub.add_parser("retry", help="reopen a job's failed or dead slots as new attempts")
    retry.add_argument("id")
    retry.add_argument("--slot", type=int, action="append", help="only this slot (repeatable)")
    retry.set_defaults(func=cmd_retry)
    dlq = sub.add_parser("dlq", help="list or replay dead-lettered slots")
    dlq.add_argument("action", choices=["list", "replay"], nargs="?", default="list")
    dlq.add_argument("--limit", type=int, default=100)
    dlq.set_defaults(func=cmd_dlq)
    reconcile = sub.add_parser("reconcile", help="run one reconciler pass now")
    reconcile.set_defaults(func=cmd_reconcile)
    circuit = sub.add_parser("circuit", help="show or reset the account's and the models' circuits")
    circuit.add_argument("action", choices=["show", "reset"], nargs="?", default="show")
    circuit.set_defaults(func=cmd_circuit)
    for name, module, text in (
        ("stack", "infra.stack", "run the local stack (make run)"),
        ("emulator", "infra.emulator", "run the Runware emulator"),
    ):
        command = sub.add_parser(name, help=text, add_help=False)
        command.set_defaults(module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in {"stack", "emulator"}:
        return _exec_module(f"infra.{argv[0]}", argv[1:])
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        result: int = args.func(args, settings)
        return result
    except SettingsError as exc:
        print(f"imagine: configuration error: {exc}", file=sys.stderr)
        return 2
    except PipelineError as exc:
        print(f"imagine: {exc.code}: {exc.message}", file=sys.stderr)
        if exc.errors:
            _print(exc.errors)
        return 1


if __name__ == "__main__":
    sys.exit(main())
