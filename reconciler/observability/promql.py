"""What every generated Prometheus rule shares: the job and the labels kept per deployment, durations, alerts.

One Prometheus may scrape several deployments of the worker (one per namespace or cluster, under the same job
name). ``Scope.keep`` names the target labels that tell them apart; every aggregation keeps them, so each
recording rule has one series per deployment and each alert fires per deployment, with those labels set.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

JOB = "deletion-reconciler"
RUNBOOK = "docs/runbook.md"
MINUTE = 60
HOUR = 3600
DAY = 86400

Rule = dict[str, Any]

LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
# Labels the rules select, group or match on already (the worker's own and Prometheus's), or that an alert
# sets: keeping one of them again would group by it twice or overwrite it.
RESERVED = frozenset(
    {
        "job", "instance", "le", "table", "shard", "cause", "stage", "error", "kind", "outcome", "reason",
        "event", "transition", "version", "python", "severity", "alertname", "verification", "rule",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Scope:
    """The worker's job label and the target labels (``namespace``, ``cluster``) kept in every aggregation."""

    job: str = JOB
    keep: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for label in self.keep:
            if not LABEL_NAME.match(label) or label.startswith("__"):
                raise ValueError(f"{label!r} is not a label name a target can carry")
            if label in RESERVED:
                raise ValueError(f"{label!r} is a label the rules use already; keep another one")
        if len(set(self.keep)) != len(self.keep):
            raise ValueError(f"labels to keep are repeated: {', '.join(self.keep)}")

    @property
    def on(self) -> str:
        """The matcher every selector carries."""
        return f'job="{self.job}"'

    def labels(self, *more: str) -> str:
        """``job``, the kept labels, then ``more``: the inside of a ``by (...)`` or ``on (...)``."""
        return ", ".join(("job", *self.keep, *more))

    def by(self, *more: str) -> str:
        return f"by ({self.labels(*more)})"

    def select(self, metric: str, *matchers: str) -> str:
        """``metric{job="...",<matchers>}``, as prometheus-client and the rules write selectors."""
        return f"{metric}{{{','.join((self.on, *matchers))}}}"


def duration(seconds: float) -> str:
    """A PromQL duration in the largest whole unit (``3600`` is ``1h``, ``90`` is ``90s``)."""
    whole = max(round(seconds), 1)
    for unit, size in (("d", DAY), ("h", HOUR), ("m", MINUTE)):
        if whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def nominal(seconds: int) -> str:
    """The unscaled window's name in a recording rule, so dashboards read the same series at any scale."""
    return duration(seconds)


def words(seconds: int) -> str:
    """``600`` as "10 minutes", ``43200`` as "12 hours": alert text that follows the thresholds."""
    for unit, size in (("day", DAY), ("hour", HOUR), ("minute", MINUTE)):
        if seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'' if count == 1 else 's'}"
    return f"{seconds} seconds"


def alert(
    name: str,
    expr: str,
    *,
    hold: float,
    severity: str,
    summary: str,
    description: str,
    anchor: str | None = None,
) -> Rule:
    rule: Rule = {"alert": name, "expr": expr}
    if hold:
        rule["for"] = duration(hold)
    rule["labels"] = {"severity": severity}
    rule["annotations"] = {
        "summary": summary,
        "description": description,
        "runbook_url": anchor or name.lower(),  # the runbook's heading anchor; link_runbook adds the URL
    }
    return rule


def link_runbook(rules: Iterable[Rule], runbook: str) -> None:
    """Point each alert's ``runbook_url`` at its section, ``<runbook>#<anchor>``: absolute if runbook is."""
    for rule in rules:
        rule["annotations"]["runbook_url"] = f"{runbook}#{rule['annotations']['runbook_url']}"
