"""The demo's figures: metrics read over both replicas' registries, and the summary it prints."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

from prometheus_client import CollectorRegistry

from reconciler.observability.metrics import LAG_BUCKETS

Print = Callable[[str], None]
ARTIFACTS = "reconciler_artifacts_total"


class Samples(Protocol):
    def get_sample_value(self, name: str, labels: dict[str, str] | None = None) -> float | None: ...


class Replicas:
    """The replicas' registries read as one: every figure is summed over them."""

    def __init__(self, registries: list[CollectorRegistry]) -> None:
        self._registries = registries

    def get_sample_value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        return sum(r.get_sample_value(name, labels) or 0.0 for r in self._registries)


def sample(registry: Samples, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def quantile(registry: Samples, name: str, q: float, **labels: str) -> float:
    """``histogram_quantile`` over the worker's own histogram (linear within a bucket, as Prometheus does)."""
    bounds = [*LAG_BUCKETS, math.inf]
    counts = [sample(registry, f"{name}_bucket", **labels, le=_le(b)) for b in bounds]
    total = counts[-1]
    if total == 0:
        return math.nan
    rank, lower, below = q * total, 0.0, 0.0
    for bound, cumulative in zip(bounds, counts, strict=True):
        if cumulative >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * ((rank - below) / max(cumulative - below, 1e-9))
        lower, below = bound, cumulative
    return lower


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def summary(  # noqa: PLR0917 - the figures the summary prints
    registry: Samples, out: Print, remaining: int, touched: int, elapsed: float, letters: int
) -> None:
    """Print the summary. A record delivered again after the kill is refused again (and counted again in
    the refusals), but its dead letter is the same one."""
    out("")
    out("records by cause (both replicas: what the killed one had not checkpointed was read again):")
    for cause in ("ttl", "expired", "requested"):
        n = sample(
            registry,
            "reconciler_stream_records_total",
            table="transcripts",
            event="REMOVE",
            cause=cause,
        )
        out(f"  {cause:<10} {int(n)}")
    ignored = sum(
        sample(registry, "reconciler_stream_records_total", table="transcripts", event=e, cause="none")
        for e in ("INSERT", "MODIFY")
    )
    out(f"  {'ignored':<10} {int(ignored)} (INSERT/MODIFY)")
    out("artifacts deleted by kind:")
    for kind in ("object_version", "delete_marker", "item"):
        out(f"  {kind:<15} {int(sample(registry, ARTIFACTS, kind=kind, outcome='deleted'))}")
    unsafe = sum(
        sample(registry, "reconciler_unsafe_targets_total", table="transcripts", reason=r)
        for r in ("out_of_scope", "not_an_s3_uri", "unsafe_identifier", "unusable_link_value")
    )
    out(
        f"unsafe targets refused (never executed): {int(unsafe)}, in {int(letters)} dead letter"
        " (1 expected: the tampered audio_url)"
    )
    out("lag percentiles, seconds (estimated from histogram buckets):")
    for cause in ("ttl", "expired", "requested"):
        parts = []
        for metric in ("deletion_lag", "ttl_service_lag", "pipeline_lag"):
            name = f"reconciler_{metric}_seconds"
            p50, p99 = (
                quantile(registry, name, 0.5, cause=cause),
                quantile(registry, name, 0.99, cause=cause),
            )
            if not math.isnan(p50):
                parts.append(f"{metric} p50={p50:.1f} p99={p99:.1f}")
        out(f"  {cause:<10} " + ("; ".join(parts) or "-"))
    enforced = quantile(registry, "reconciler_enforcement_lag_seconds", 0.5, table="transcripts")
    if not math.isnan(enforced):
        out(
            f"  enforcement lag p50={enforced:.1f} (from expiry plus the grace: the overdue ones were due"
            " days before the worker started)"
        )
    out(f"artifacts remaining for deleted items: {remaining}")
    out(f"artifacts of live items touched: {touched}")
    out(f"finished in {elapsed:.1f}s")
