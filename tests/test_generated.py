"""The committed rules, PrometheusRule and dashboard JSON are exactly what their one source generates."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.observability.slo import Slo
from scripts.generate import DASHBOARD, PROMETHEUS_RULE, RULES, main, outputs, stale

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


def test_the_script_writes_alert_rules_and_dashboard_per_deployment_with_kept_labels(tmp_path: Path) -> None:
    assert main(["--keep-labels", "namespace,cluster", "--out", str(tmp_path)]) == 0
    rules = (tmp_path / RULES).read_text()
    assert "sum by (job, namespace, cluster) (rate(reconciler_pipeline_lag_seconds_bucket" in rules
    assert "by (job) " not in rules
    # every aggregation of the shipped rules, and two more: TargetMissing names a vanished deployment
    assert rules.count("by (job, namespace, cluster") == (ROOT / RULES).read_text().count("by (job") + 2
    dashboard = (tmp_path / DASHBOARD).read_text()
    assert 'namespace=~\\"$namespace\\",cluster=~\\"$cluster\\"' in dashboard
    assert (tmp_path / PROMETHEUS_RULE).read_text().count("namespace, cluster") > 20


def test_the_script_gives_alerts_absolute_runbook_urls_from_a_base_url(tmp_path: Path) -> None:
    base = "https://git.example.com/deletion-reconciler/blob/main/docs/runbook.md"
    assert main(["--runbook", base, "--out", str(tmp_path)]) == 0
    urls = re.findall(r"runbook_url: (\S+)", (tmp_path / RULES).read_text())
    default = re.findall(r"runbook_url: (\S+)", (ROOT / RULES).read_text())
    assert len(urls) == len(default) > 15
    assert all(url.startswith(f"{base}#") for url in urls)
    assert all(url.startswith("docs/runbook.md#") for url in default)  # relative unless a URL is given
    assert [u.split("#")[1] for u in urls] == [u.split("#")[1] for u in default]


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--runbook", "docs/runbook.md", "absolute http(s) URL"),
        ("--runbook", "https://git.example.com/runbook.md#top", "without an #anchor"),
        ("--runbook", "ftp://git.example.com/runbook.md", "absolute http(s) URL"),
        ("--keep-labels", "namespace,table", "the rules use already"),
        ("--keep-labels", "name-space", "not a label name"),
    ],
)
def test_the_script_refuses_an_alert_runbook_or_kept_label_it_cannot_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, message: str
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([flag, value, "--out", str(tmp_path)])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / RULES).exists()
