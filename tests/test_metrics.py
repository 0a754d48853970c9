"""The metrics module: known series exist from the start, and the poll age is computed at scrape time."""

from __future__ import annotations

import importlib.metadata

from prometheus_client import CollectorRegistry, generate_latest

import reconciler
from reconciler.core.classify import Cause
from reconciler.observability.metrics import Metrics
from reconciler.rules import Rules


def _exposition(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_lag_histograms_and_record_counters_start_at_zero_so_a_catch_up_burst_is_seen(rules: Rules) -> None:
    """Without a zero sample before them, the first observations of a new process are invisible to rate()."""
    metrics = Metrics(CollectorRegistry())
    metrics.initialize(rules.compile())
    text = _exposition(metrics)
    for cause in Cause:
        assert f'reconciler_deletion_lag_seconds_count{{cause="{cause}"}} 0.0' in text
        assert f'reconciler_pipeline_lag_seconds_count{{cause="{cause}"}} 0.0' in text
        assert f'reconciler_deletions_unfinished_total{{cause="{cause}"}} 0.0' in text
        assert (
            f'reconciler_stream_records_total{{cause="{cause}",event="REMOVE",table="transcripts"}} 0.0'
            in text
        )
    assert 'reconciler_ttl_service_lag_seconds_count{cause="ttl"} 0.0' in text
    assert 'reconciler_ttl_service_lag_seconds_count{cause="requested"}' not in text  # no TTL to be late for


def test_the_sweepers_enforcement_lag_for_the_slo_starts_at_zero_per_source_and_is_never_negative(
    rules: Rules,
) -> None:
    """The SLO counts the sweeper's deletions from the first one; an early delete is on time, not negative."""
    metrics = Metrics(CollectorRegistry())
    metrics.initialize(rules.compile())
    assert 'reconciler_enforcement_lag_seconds_count{table="transcripts"} 0.0' in _exposition(metrics)
    metrics.observe_enforced("transcripts", -5.0)
    metrics.observe_enforced("transcripts", 4000.0)
    labels = {"table": "transcripts"}
    sample = metrics.registry.get_sample_value
    assert sample("reconciler_enforcement_lag_seconds_sum", labels) == 4000.0
    assert sample("reconciler_enforcement_lag_seconds_bucket", {**labels, "le": "1.0"}) == 1.0
    assert sample("reconciler_enforcement_lag_seconds_bucket", {**labels, "le": "3600.0"}) == 1.0
    assert sample("reconciler_enforcement_lag_seconds_count", labels) == 2.0


def test_the_poll_age_grows_with_the_clock_between_polls() -> None:
    now = [1000.0]
    metrics = Metrics(CollectorRegistry(), clock=lambda: now[0])
    metrics.last_poll.labels("transcripts", "shardId-1").set(990.0)
    labels = {"table": "transcripts", "shard": "shardId-1"}
    assert metrics.registry.get_sample_value("reconciler_last_successful_poll_age_seconds", labels) == 10.0
    now[0] = 1600.0
    assert metrics.registry.get_sample_value("reconciler_last_successful_poll_age_seconds", labels) == 610.0
    metrics.forget_shard("transcripts", "shardId-1")
    assert "reconciler_last_successful_poll_age_seconds{" not in _exposition(metrics)


def test_build_info_names_the_running_version() -> None:
    text = _exposition(Metrics(CollectorRegistry()))
    assert 'reconciler_build_info{python="' in text
    assert f'version="{reconciler.__version__}"}} 1.0' in text
    assert reconciler.__version__ == importlib.metadata.version("deletion-reconciler")  # one source of truth
