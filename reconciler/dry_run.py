"""``reconciler plan``: what a real run would do with an image or stream records, without deleting anything.

Without ``--resolve`` it prints each plan as the core resolves it (no AWS call). With ``--resolve`` it runs
the real executor in dry-run mode: the same listings (``ListObjectVersions``) and link queries (``Query``,
``GetItem``) a real run makes, read-only, so every version, delete marker and linked item a real run would
delete is named, and every refusal with its reason, linked items' included.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.core.decide import decide
from reconciler.core.inputs import PlanInput
from reconciler.core.plan import DeletionPlan, Unsafe, resolve
from reconciler.core.records import StreamRecord, Undecodable
from reconciler.core.spec import RuleSet
from reconciler.errors import ConfigError
from reconciler.execution import Executor, Planned, ScopedUnsafe


@dataclass(slots=True)
class Entry:
    """One input's verdict: planned (and, resolved, what would go), ignored, filtered or refused."""

    label: str
    table: str
    verdict: str  # "plan", "ignored", "filtered", "undecodable", "no_image"
    cause: str | None = None
    detail: str = ""
    plan: DeletionPlan | None = None
    resolved: bool = False
    planned: list[Planned] = field(default_factory=list)
    refused: list[ScopedUnsafe] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def refuses(self) -> bool:
        """Something a real run would not delete: a refused target, or a record it would dead-letter."""
        return self.verdict in {"undecodable", "no_image"} or bool(self.refused)


def plan_inputs(rules: RuleSet, inputs: Iterable[PlanInput], default_table: str) -> list[Entry]:
    """Classify and resolve each input as the worker would. Pure."""
    entries = []
    for item in inputs:
        table = item.table or default_table
        if table not in rules.tables:
            raise ConfigError(f"table {table!r} has no rules")
        entries.append(_entry(rules, item, table))
    return entries


def _entry(rules: RuleSet, item: PlanInput, table: str) -> Entry:
    spec = rules.tables[table]
    record = item.record
    if isinstance(record, Undecodable):
        return Entry(item.label, table, "undecodable", detail=record.reason)
    image = item.image
    cause = None
    if isinstance(record, StreamRecord):
        decision = decide(record, spec)
        cause = decision.cause.value if decision.cause else None
        if decision.verdict != "delete":
            return Entry(item.label, table, decision.verdict, cause, detail=decision.detail)
        image = record.old_image
    assert image is not None  # noqa: S101 - an input is an image or a record
    plan = resolve(spec, image)
    refused = [ScopedUnsafe(table, dict(plan.key), u) for u in plan.unsafe]
    return Entry(item.label, table, "plan", cause, plan=plan, refused=refused)


async def resolve_entries(entries: Iterable[Entry], executor: Executor) -> None:
    """Fill in what a real run would delete, by the dry-run executor's read-only calls."""
    for entry in entries:
        if entry.plan is None:
            continue
        result = await executor.execute(entry.plan)
        entry.resolved = True
        entry.planned = result.planned
        entry.refused = result.unsafe
        entry.errors = [str(e) for e in result.errors]


def _unsafe(scoped: ScopedUnsafe) -> dict[str, Any]:
    u: Unsafe = scoped.unsafe
    return {"table": scoped.table, "target": u.target, "reason": u.reason.value, "detail": u.detail}


def _key(key: Mapping[str, object]) -> dict[str, str]:
    return {k: str(v) for k, v in key.items()}


def to_json(entries: Iterable[Entry]) -> list[dict[str, Any]]:
    found = []
    for entry in entries:
        data: dict[str, Any] = {"input": entry.label, "table": entry.table, "verdict": entry.verdict}
        if entry.cause:
            data["cause"] = entry.cause
        if entry.detail:
            data["detail"] = entry.detail
        if entry.plan is not None:
            plan = entry.plan
            data["key"] = _key(plan.key)
            data["scopes"] = [str(s) for s in plan.scopes]
            data["objects"] = [str(o) for o in plan.objects]
            data["prefixes"] = [str(p) for p in plan.prefixes]
            data["links"] = [
                {"table": q.table, "attribute": q.attribute, "value": str(q.value), "index": q.index}
                | ({"sort_begins_with": q.sort_prefix} if q.sort_prefix else {})
                | ({"entity": q.entity} if q.entity else {})
                for q in plan.links
            ]
        data["refused"] = [_unsafe(s) for s in entry.refused]
        if entry.resolved:
            data["would_delete"] = [{"kind": p.kind, "where": p.where, "what": p.what} for p in entry.planned]
            data["errors"] = entry.errors
        found.append(data)
    return found


def to_text(entries: Iterable[Entry]) -> str:
    lines: list[str] = []
    for entry in entries:
        head = f"{entry.label}: {entry.table}"
        if entry.cause:
            head += f" ({entry.cause})"
        if entry.plan is not None:
            head += " " + ", ".join(f"{k}={v}" for k, v in entry.plan.key.items())
        lines.append(f"{head}: {entry.verdict}" + (f": {entry.detail}" if entry.detail else ""))
        if entry.plan is not None:
            plan = entry.plan
            lines += [f"  scope     {s}" for s in plan.scopes]
            lines += [f"  object    {o}" for o in plan.objects]
            lines += [f"  prefix    {p}" for p in plan.prefixes]
            lines += [f"  link      {q.table} where {q.attribute} = {q.value}" for q in plan.links]
        for p in entry.planned:
            lines.append(f"  delete    {p.kind:<14} {p.where} {p.what}")
        lines += [
            f"  refuse    {s.unsafe.reason.value}: {s.unsafe.target} ({s.unsafe.detail})"
            for s in entry.refused
        ]
        lines += [f"  error     {e}" for e in entry.errors]
    return "\n".join(lines)
