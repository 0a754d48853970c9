"""The benchmark script works end to end at a tiny size (its speed is measured by running it, never here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parent.parent


def test_the_benchmark_smoke_run_deletes_everything_and_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    done = subprocess.run(  # noqa: S603 - our own module
        [sys.executable, "-m", "bench.run", "--smoke", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    for regime in ("raw", "latency"):
        for contender in ("reconciler", "peer", "ceiling"):
            figures = results[regime][contender]
            assert figures["leftover_artifacts"] == 0, (regime, contender)
            assert figures["live_items_damaged"] == 0, (regime, contender)
            assert figures["artifacts_per_second"] > 0
            assert figures["requests"] > 0
        assert set(results[regime]["ratios"]) == {
            "reconciler_over_peer", "reconciler_over_ceiling", "requests_per_artifact_over_peer",
        }  # fmt: skip
    assert results["cpu"]["pipeline_over_parse"] > 0
    assert results["memory"]["records"] == 600
    assert "reconciler/peer" in done.stdout
