"""CPU time (user + system) of process trees, counted between two snapshots."""

from __future__ import annotations

from collections.abc import Mapping

import psutil

# pid -> seconds of CPU that process has used so far
Snapshot = dict[int, float]


def tree_cpu(pid: int | None) -> Snapshot:
    """User + system CPU of the process and all its descendants (Celery's pool, gunicorn's
    workers), by pid; a process that ended since is left out."""
    if pid is None:
        return {}
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        return {}
    used: Snapshot = {}
    for process in tree:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        used[process.pid] = times.user + times.system
    return used


def cpu_between(before: Mapping[int, float], after: Mapping[int, float]) -> float:
    """Seconds of CPU the tree used between two snapshots; a process born since counts whole."""
    return sum(max(0.0, seconds - before.get(pid, 0.0)) for pid, seconds in after.items())


def snapshot(pids: Mapping[str, int | None]) -> dict[str, Snapshot]:
    """A snapshot of each named tree."""
    return {name: tree_cpu(pid) for name, pid in pids.items()}


def used_between(before: Mapping[str, Snapshot], after: Mapping[str, Snapshot]) -> dict[str, float]:
    """Seconds of CPU each named tree used between two snapshots."""
    return {name: cpu_between(before.get(name, {}), after[name]) for name in after}
