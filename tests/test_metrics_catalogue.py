"""docs/metrics.md lists exactly the metrics the worker exports, with their types and labels."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from reconciler.observability.metrics import Metrics
from reconciler.rules import Rules

CATALOGUE = Path(__file__).parent.parent / "docs" / "metrics.md"
ROW = re.compile(r"^\| `(reconciler_\w+)` \| (\w+) \| ([^|]*) \| ([^|]+) \| ([^|]+) \|$", re.MULTILINE)


def _documented() -> dict[str, tuple[str, frozenset[str]]]:
    rows = ROW.findall(CATALOGUE.read_text())
    return {
        name: (kind, frozenset(re.findall(r"`(\w+)`", labels)))
        for name, kind, labels, _unit, _meaning in rows
    }


def _exported(rules: Rules) -> dict[str, tuple[str, frozenset[str]]]:
    metrics = Metrics(CollectorRegistry(), clock=lambda: 100.0)
    metrics.initialize(rules.compile())
    metrics.initialize_shadow(rules.compile())  # a dry run's series (reconciler run --dry-run)
    metrics.last_poll.labels("transcripts", "shardId-1").set(50.0)  # the poll age has samples only then
    metrics.iterator_age.labels("transcripts", "shardId-1").set(0.0)
    metrics.failures.labels("poll", "TransientError").inc()
    metrics.records.labels("transcripts", "REMOVE", "ttl").inc()
    for histogram in (metrics.deletion_lag, metrics.ttl_service_lag, metrics.pipeline_lag):
        histogram.labels("ttl").observe(1.0)
    metrics.observe_enforced("transcripts", 1.0)  # the sweeper's; its series start at zero per source
    exported = {}
    for family in metrics.registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        labels = {k for s in family.samples for k in s.labels if k != "le"}
        exported[name] = (family.type, frozenset(labels))
    return exported


def test_the_catalogue_names_every_exported_metric_with_its_type_and_labels(rules: Rules) -> None:
    assert _documented() == _exported(rules)


def test_the_catalogue_parser_sees_every_row() -> None:
    """Guards the test above: a row the pattern missed would otherwise vanish from both sides unnoticed."""
    rows = [line for line in CATALOGUE.read_text().splitlines() if line.startswith("| `reconciler_")]
    assert len(rows) == len(_documented()) >= 14
