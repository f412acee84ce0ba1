"""make bench in its quick form: every phase runs, every figure and target is reported."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from infra.bench import stats
from infra.supervise import REPO_ROOT

pytestmark = pytest.mark.e2e

LAST_LINE = re.compile(
    r"bench: e2e_ratio=\d+\.\d\d cpu_ratio=\d+\.\d\d receiver_ratio=\d+\.\d\d "
    r"store_p99_ms=\d+\.\d copy_p99_ms=\d+\.\d redis_bytes_per_image=\d+ p99_growth=\d+\.\d\d"
)


@pytest.mark.timeout(480)
def test_quick_bench_reports_every_figure_and_target(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "infra.bench", "--quick", "--out", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=450,
        check=False,
    )
    output = result.stdout
    assert result.returncode == 0, output[-3000:] + result.stderr[-3000:]
    document = json.loads((tmp_path / "bench.json").read_text())
    for name in stats.FIGURES:
        value = document["figures"][name]
        assert isinstance(value, float) and value > 0 and math.isfinite(value), (name, value)
    assert [t["target"] for t in document["targets"]] == [t.text for t in stats.TARGETS]
    for target in stats.TARGETS:
        assert re.search(rf"^{re.escape(target.text)}\s.*\b(met|MISSED)$", output, re.M), target
    rounds = document["e2e"]["rounds"]
    assert [r["kind"] for r in rounds] == ["floor", "pipeline", "floor", "pipeline", "floor"]
    assert all(r["images_per_s"] > 0 and r["cpu"]["own_ms"] > 0 for r in rounds)
    assert LAST_LINE.fullmatch(output.rstrip("\n").splitlines()[-1])
