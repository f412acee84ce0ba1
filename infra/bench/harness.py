"""`python -m infra.bench`: every phase in turn, a table, out/bench.json, and one last line."""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from infra.bench import report, stackphases, stats

PHASES = ("e2e", "latency", "receiver", "growth")
# --quick: every phase, tiny (the e2e suite runs it in about two minutes).
QUICK = {
    "images": 100,
    "floor_images": 50,
    "latency_images": 40,
    "receiver_seconds": 3.0,
    "growth_in_flight": 500,
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m infra.bench", description=__doc__)
    add = parser.add_argument
    add("--quick", action="store_true", help="tiny sizes, every phase (about two minutes)")
    add("--phases", default=",".join(PHASES), help=f"comma separated, of {','.join(PHASES)}")
    add("--images", type=int, default=2000, help="pipeline images in all, split over the rounds")
    add("--rounds", type=int, default=2, help="pipeline rounds, each between two floor rounds")
    add("--floor-images", type=int, help="images per floor round (default: a quarter of a round's)")
    add("--per-job", type=int, default=4, help="numberResults of each job")
    add("--latency-ms", type=int, default=0, help="the emulator's render latency per image")
    add("--in-flight", type=int, help="RUNWARE_MAX_IN_FLIGHT (default: --images, at least 400)")
    add("--concurrency", type=int, default=4, help="worker processes, the pipeline's and floor's")
    add("--latency-images", type=int, default=300, help="images of the paced latency phase")
    add("--receiver-seconds", type=float, default=6.0, help="seconds per receiver load run")
    add("--growth-in-flight", type=int, default=10_000, help="in-flight images of growth's top")
    add("--timeout", type=float, default=600, help="seconds any one round may take")
    add("--out", type=Path, default=Path("out"), help="where bench.json is written")
    add("--workdir", type=Path, help="data and logs of the stacks (default: a temporary one)")
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():
            if f"--{name.replace('_', '-')}" not in (argv or sys.argv[1:]):
                setattr(args, name, value)
    args.phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = [p for p in args.phases if p not in PHASES]
    if unknown:
        parser.error(f"unknown phases {unknown}; choose from {list(PHASES)}")
    args.in_flight = args.in_flight or max(args.images, 400)
    if args.floor_images is None:
        args.floor_images = max(args.per_job, args.images // args.rounds // 4)
    return args


class Run:
    """What every phase measured, and what went wrong."""

    def __init__(self) -> None:
        self.results: dict[str, Any] = {}
        self.failures: list[str] = []

    def phase(self, name: str, measure: Callable[[], dict[str, Any]]) -> None:
        began = time.monotonic()
        print(f"bench: {name} phase ...", flush=True)
        try:
            result = measure()
        except Exception as exc:
            self.failures.append(f"{name}: {type(exc).__name__}: {exc}")
            print(traceback.format_exc(), file=sys.stderr, flush=True)
            result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        result.setdefault("status", "ok")
        result["phase_seconds"] = time.monotonic() - began
        self.results[name] = result


def stack_phases(args: argparse.Namespace, workdir: Path, run: Run) -> None:
    """e2e then latency on one stack: latency is paced at half the e2e phase's throughput."""
    began = time.monotonic()
    rig = stackphases.open_rig(args, workdir)
    try:
        stackphases.warm_up(rig, max(args.per_job, 2 * args.concurrency))
        print(f"bench: stack, floor and warm-up took {time.monotonic() - began:.1f}s", flush=True)
        if "e2e" in args.phases:
            run.phase("e2e", lambda: stackphases.measure_e2e(
                rig, args.images, args.rounds, args.floor_images))  # fmt: skip
        if "latency" in args.phases:
            rate = _half_throughput(run)
            run.phase("latency", lambda: stackphases.measure_latency(
                rig, args.latency_images, rate))  # fmt: skip
    finally:
        stopping = time.monotonic()
        stackphases.close_rig(rig)
        print(f"bench: stack stopped in {time.monotonic() - stopping:.1f}s", flush=True)


def _half_throughput(run: Run) -> float:
    """Half the pipeline's measured images/s; 10/s when the e2e phase did not measure it."""
    measured = run.results.get("e2e", {}).get("pipeline_images_per_s")
    if not measured or math.isnan(measured):
        return 10.0
    return float(measured) / 2


def external_phase(name: str, call: Callable[[Any], dict[str, Any]]) -> Callable[[], Any]:
    """A phase from another module of this package; reported missing while it does not exist."""

    def measure() -> dict[str, Any]:
        try:
            module = importlib.import_module(f"infra.bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"infra.bench.{name}":
                raise
            return {"status": "missing", "error": f"infra/bench/{name}.py is not there"}
        return dict(call(module))

    return measure


def run_phases(args: argparse.Namespace, workdir: Path, run: Run) -> None:
    if {"e2e", "latency"} & set(args.phases):
        try:
            stack_phases(args, workdir / "stack", run)
        except Exception as exc:
            run.failures.append(f"stack: {type(exc).__name__}: {exc}")
            print(traceback.format_exc(), file=sys.stderr, flush=True)
    if "receiver" in args.phases:
        seconds = args.receiver_seconds
        run.phase("receiver", external_phase("receiver", lambda m: m.measure_receiver(
            workdir / "receiver", seconds=seconds)))  # fmt: skip
    if "growth" in args.phases:
        in_flight = args.growth_in_flight
        run.phase("growth", external_phase("growth", lambda m: m.measure_growth(
            workdir / "growth", in_flight=in_flight)))  # fmt: skip


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    chosen = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    return {**chosen, "cpus": os.cpu_count()}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="imagine-bench-"))
    began = time.monotonic()
    run = Run()
    run_phases(args, workdir, run)
    document = report.document(settings_of(args), run.results, run.failures)
    document["seconds"] = time.monotonic() - began
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "bench.json"
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(report.render(document), flush=True)
    print(f"bench: took {document['seconds']:.0f}s; wrote {path}", flush=True)
    if run.failures:
        print(f"bench: the stacks' logs are in {workdir}", flush=True)
    elif args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    print(stats.last_line(document["figures"]), flush=True)
    return 1 if run.failures else 0
