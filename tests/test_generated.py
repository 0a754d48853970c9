"""The committed rules, PrometheusRule and dashboard JSON are exactly what their one source generates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from reconciler.observability.slo import Slo
from scripts.generate import DASHBOARD, PROMETHEUS_RULE, RULES, outputs, stale

ROOT = Path(__file__).parent.parent


def test_every_generated_file_is_committed_and_current() -> None:
    out_of_date = stale(outputs(Slo()), ROOT)
    assert out_of_date == [], f"{out_of_date}: run python scripts/generate.py and commit the result"


def test_the_check_notices_a_hand_edited_file(tmp_path: Path) -> None:
    files = outputs(Slo())
    for path, text in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    assert stale(files, tmp_path) == []
    (tmp_path / RULES).write_text((tmp_path / RULES).read_text().replace("> 0.144", "> 0.5"))
    assert stale(files, tmp_path) == [RULES]


def _generate(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the script as a user would, from outside the repository's import path."""
    command = [sys.executable, str(ROOT / "scripts" / "generate.py"), *args, "--out", str(out)]
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)  # noqa: S603


def test_a_custom_slo_changes_the_rules_and_the_dashboard_together(tmp_path: Path) -> None:
    result = _generate(tmp_path, "--objective", "0.995")
    assert result.returncode == 0, result.stderr
    assert "> 0.072" in (tmp_path / RULES).read_text()  # 14.4 x 0.005
    assert (tmp_path / PROMETHEUS_RULE).read_text() != (ROOT / PROMETHEUS_RULE).read_text()
    assert "0.995" in (tmp_path / DASHBOARD).read_text()


def test_the_script_refuses_an_slo_no_series_can_measure(tmp_path: Path) -> None:
    result = _generate(tmp_path, "--threshold", "3000")
    assert result.returncode == 2
    assert "not a lag bucket bound" in result.stderr
