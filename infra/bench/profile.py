"""Where the receiver's time goes, per request, beside its floors: `python -m infra.bench.profile`.

On the receiver phase's own stack, for each of the hello app, the redis floor (the hello app
reading the JSON body and making one Redis GET) and the receiver's duplicate-webhook path, wrk
plays the requests while py-spy samples that server's gunicorn workers. A sample is a moment a
worker was on the CPU (py-spy leaves idle threads out), so samples / rate / requests is the CPU
each request spent in a frame. The table shows those milliseconds for the parts every request
goes through, so the receiver's path can be read against the least a webhook handler must do.
Writes out/receiver-profile.json (with the heaviest frames of each) and the raw py-spy stacks
under out/profile/.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from infra.bench import receiver as phase
from infra.supervise import REPO_ROOT

OUT = REPO_ROOT / "out"
# The frames every request passes through, outermost first (py-spy names a frame
# "function (file)"); the view of each target is added to them.
PARTS = {
    "gunicorn request": "AsyncWorker.handle_request",
    "access log": "JsonLogger.access",
    "response write": "Response.write",
    "http parse": "Parser.__next__",
    "flask": "Flask.wsgi_app",
    "view": "",
    "redis command": "Redis._execute_command",
    "body read": "Request.get_data",
    "jsonify": "jsonify",
}
VIEWS = {
    "hello": "create_app.<locals>.hello",
    "redis_floor": "create_app.<locals>.redis_floor",
    "duplicate": "runware_webhook",
}
_LINE = re.compile(r":\d+\)$")


@dataclass
class Profile:
    target: str
    requests: int
    samples_per_frame: collections.Counter[str]
    total_samples: int
    rate: int

    def ms_per_request(self, samples: int) -> float:
        return 1000 * samples / self.rate / self.requests if self.requests else 0.0

    def parts(self) -> dict[str, float]:
        found = {"total on CPU": self.ms_per_request(self.total_samples)}
        for name, frame in PARTS.items():
            frame = frame or VIEWS[self.target]
            found[name] = self.ms_per_request(self.samples_per_frame[frame])
        return {name: round(value, 3) for name, value in found.items()}

    def heaviest(self, count: int = 25) -> list[tuple[str, float]]:
        return [
            (frame, round(self.ms_per_request(samples), 3))
            for frame, samples in self.samples_per_frame.most_common(count)
        ]


def ensure_py_spy() -> str:
    found = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if found:
        return found
    phase.say("py-spy is missing: installing it into this environment (pip install py-spy)")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "py-spy"], check=True)
    found = shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if not found:
        raise phase.BenchError("py-spy is not installed and pip could not install it")
    return found


def read_stacks(paths: list[Path]) -> tuple[collections.Counter[str], int]:
    """Samples per frame (each frame counted once per stack) from py-spy's raw output."""
    frames: collections.Counter[str] = collections.Counter()
    total = 0
    for path in paths:
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():  # a frame's text may hold a line break
                continue
            total += int(count)
            for frame in {_LINE.sub(")", f).split(" (")[0] for f in stack.split(";")}:
                frames[frame] += int(count)
    return frames, total


def profile_round(
    bench: phase.Bench, files: phase.Files, target: str, seconds: float, rate: int, raw: Path
) -> Profile:
    """One wrk round at `target` while py-spy samples its gunicorn workers."""
    service = bench.stack.services["receiver"] if target == "duplicate" else bench.hello
    url = bench.receiver_url if target == "duplicate" else bench.hello_url
    if service.process.pid is None:
        raise phase.BenchError(f"{target}: its server is not running")
    workers = psutil.Process(service.process.pid).children(recursive=True)
    outputs = [raw / f"{target}-{worker.pid}.txt" for worker in workers]
    record = [ensure_py_spy(), "record", "--nonblocking", "-f", "raw", "-r", str(rate),
              "-d", str(round(seconds) + 2)]  # fmt: skip
    spies = [
        subprocess.Popen(  # noqa: S603 - argv built here
            [*record, "-p", str(worker.pid), "-o", str(output)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for worker, output in zip(workers, outputs, strict=True)
    ]
    time.sleep(1)  # py-spy attaches
    measured = phase.run_wrk(target, url, getattr(files, target), seconds, phase.WrkLoad())
    for spy in spies:
        spy.wait(timeout=seconds + 60)
    frames, total = read_stacks([path for path in outputs if path.exists()])
    # The samples span the round plus py-spy's margin: count requests over the same span.
    requests = round(measured.rps * (round(seconds) + 2))
    return Profile(target, requests, frames, total, rate)


def table(profiles: list[Profile]) -> str:
    names = ["total on CPU", *PARTS]
    header = f"{'ms/request':<18}" + "".join(f"{p.target:>13}" for p in profiles)
    rows = [header, "-" * len(header)]
    for name in names:
        rows.append(f"{name:<18}" + "".join(f"{p.parts()[name]:>13.3f}" for p in profiles))
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=12, help="each wrk round (default 12)")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples/s (default 250)")
    args = parser.parse_args(argv)
    phase.ensure_wrk()
    ensure_py_spy()
    raw = OUT / "profile"
    shutil.rmtree(raw, ignore_errors=True)
    raw.mkdir(parents=True)
    workdir = Path(tempfile.mkdtemp(prefix="imagine-profile-"))
    try:
        with phase.running_bench(phase.bench_config(workdir, max_in_flight=100)) as bench:
            files, _ = phase.prepare(bench, workdir, 10)
            profiles = [
                profile_round(bench, files, target, args.seconds, args.rate, raw)
                for target in VIEWS
            ]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(table(profiles))
    report: dict[str, Any] = {
        p.target: {"requests": p.requests, "parts_ms": p.parts(), "heaviest_ms": p.heaviest()}
        for p in profiles
    }
    (OUT / "receiver-profile.json").write_text(json.dumps(report, indent=2) + "\n")
    phase.say(f"wrote {OUT / 'receiver-profile.json'} and raw stacks under {raw}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
