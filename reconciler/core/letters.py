"""A dead letter's plan: what its record still asked for, stored as metadata so the work can be redriven.

A letter holds no image. Its plan names the item's table and key, the scopes its targets were checked
against, the objects and prefixes (bucket and key), the link queries (table, key condition and the scopes
handed down to linked items) and what the scope check refused. Versions are not stored: redrive lists every
version under each target again, as the first run did. ``check`` re-runs the scope checks against the rules
before redrive makes any call, so a stored plan that was altered (a target moved out of its scope, a scope
widened, a link the rules do not have) is refused, never executed. Pure: no I/O, no clock.
"""

from __future__ import annotations

import decimal
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from reconciler.core.plan import DeletionPlan, LinkQuery
from reconciler.core.scope import S3Location, ScopeViolation, Template, check_in_scope
from reconciler.core.spec import LinkSpec, RuleSet, ScopeMode, TableSpec
from reconciler.errors import DecodeError

PLAN_FORMAT = 1
# A letter is one DynamoDB item (at most 400 KB): its target names are capped by number and by UTF-8 bytes
# (an S3 key may be 1,024 bytes), its plan by characters, so every letter can be written.
MAX_LETTER_TARGETS = 1000
MAX_LETTER_BYTES = 200_000
MAX_PLAN_CHARACTERS = 100_000


def utf8_bytes(text: str) -> int:
    """The size DynamoDB counts for ``text``."""
    return len(text.encode("utf-8", "surrogatepass"))


def capped(named: Iterable[str], total: int) -> tuple[str, ...]:
    """The first of ``total`` target names that fit a letter, then a line saying how many more there were."""
    kept: list[str] = []
    size = 0
    for text in named:
        if len(kept) == MAX_LETTER_TARGETS or size + utf8_bytes(text) > MAX_LETTER_BYTES:
            break
        kept.append(text)
        size += utf8_bytes(text)
    if total > len(kept):
        kept.append(f"... and {total - len(kept)} more")
    return tuple(kept)


@dataclass(frozen=True, slots=True)
class Refused:
    """A target the scope check refused (never executed), of the item in ``table``."""

    table: str
    target: str
    reason: str


@dataclass(frozen=True, slots=True)
class LetterPlan:
    table: str
    key: Mapping[str, object]
    scopes: tuple[S3Location, ...] = ()
    objects: tuple[S3Location, ...] = ()
    prefixes: tuple[S3Location, ...] = ()
    links: tuple[LinkQuery, ...] = ()
    refused: tuple[Refused, ...] = field(default=())

    @classmethod
    def of(cls, plan: DeletionPlan, refused: Iterable[Refused] = ()) -> LetterPlan:
        own = (Refused(plan.table, u.target, u.reason.value) for u in plan.unsafe)
        return cls(
            table=plan.table,
            key=dict(plan.key),
            scopes=plan.scopes,
            objects=plan.objects,
            prefixes=plan.prefixes,
            links=plan.links,
            refused=tuple(dict.fromkeys((*own, *refused))),
        )

    def deletion_plan(self) -> DeletionPlan:
        """The executable part: refused targets are not in it."""
        return DeletionPlan(self.table, self.key, self.scopes, self.objects, self.prefixes, self.links, ())

    @property
    def characters(self) -> int:
        """About how much room the plan takes in a letter."""
        return len(repr(self.to_data()))

    def to_data(self) -> dict[str, object]:
        """Plain values (str, Decimal, bytes, lists and maps) for the dead-letter store."""
        return {
            "format": PLAN_FORMAT,
            "table": self.table,
            "key": dict(self.key),
            "scopes": [str(s) for s in self.scopes],
            "objects": [str(o) for o in self.objects],
            "prefixes": [str(p) for p in self.prefixes],
            "links": [_link_data(q) for q in self.links],
            "refused": [{"table": r.table, "target": r.target, "reason": r.reason} for r in self.refused],
        }

    @classmethod
    def from_data(cls, data: object) -> LetterPlan:
        """The plan ``to_data`` wrote; DecodeError if it is not one."""
        plan = _mapping(data, "plan")
        if plan.get("format") != PLAN_FORMAT:
            raise DecodeError("stored plan has an unknown format")
        return cls(
            table=_text(plan, "table"),
            key=dict(_mapping(plan.get("key"), "plan key")),
            scopes=_locations(plan, "scopes"),
            objects=_locations(plan, "objects"),
            prefixes=_locations(plan, "prefixes"),
            links=tuple(_link(item) for item in _list(plan, "links")),
            refused=tuple(
                Refused(_text(m, "table"), _text(m, "target"), _text(m, "reason"))
                for m in (_mapping(item, "refusal") for item in _list(plan, "refused"))
            ),
        )


def check(plan: LetterPlan, rules: RuleSet) -> list[str]:
    """Why the executable part of ``plan`` may not run (empty if it may). Every scope and prefix must be
    one the rules render for the item's table and key (a placeholder over a key attribute must hold the
    key's value), every object and prefix must lie in those scopes, and every link must be one of the
    table's, with the key's value when it links by a key attribute, handing down only scopes its rules
    render for this parent. Identifiers that are not part of the key cannot be checked: no image is kept."""
    table = rules.tables.get(plan.table)
    if table is None:
        return [f"table {plan.table!r} is not in the rules"]
    problems: list[str] = []
    if set(plan.key) != set(table.key):
        problems.append(f"the key names {sorted(plan.key)}, not the key of {plan.table}")
    scopes = [t for e in table.entities for t in e.scopes]
    prefixes = [t for e in table.entities for t in e.prefixes]
    unknown = [s for s in plan.scopes if not _admitted(s, scopes, plan.key)]
    unknown += [p for p in plan.prefixes if not _admitted(p, prefixes, plan.key)]
    problems += [f"{location}: not a scope or prefix the rules render for this key" for location in unknown]
    for target in (*plan.objects, *plan.prefixes):
        try:
            check_in_scope(target, plan.scopes)
        except ScopeViolation as exc:
            problems.append(f"{target}: {exc}")
    for query in plan.links:
        problems += _check_link(query, table, plan)
    return problems


def recheck_refused(plan: LetterPlan) -> list[str]:
    """Each refused target with the scope check's answer now: refused targets are never executed, whatever
    the answer (a linked item's target was refused against that item's own scopes, which are not stored)."""
    answers = []
    for refused in plan.refused:
        try:
            check_in_scope(S3Location.parse(refused.target), plan.scopes)
        except ScopeViolation as exc:
            answers.append(f"{refused.target}: {refused.reason} ({exc})")
        else:
            answers.append(f"{refused.target}: {refused.reason} (refused for an item in {refused.table})")
    return answers


def _admitted(
    location: S3Location, templates: Iterable[Template], key: Mapping[str, object], *, parent: bool = False
) -> bool:
    """Rendered by one of ``templates`` for an item with ``key`` (as their parent, for a link's scopes)."""
    return any(t.admits(location, {}, key) if parent else t.admits(location, key) for t in templates)


def _check_link(query: LinkQuery, table: TableSpec, plan: LetterPlan) -> list[str]:
    name = f"link to {query.table} where {query.attribute}"
    spec = next((s for e in table.entities for s in e.links if _same_link(s, query)), None)
    if spec is None:
        return [f"{name}: not a link the rules have"]
    if not isinstance(query.value, str | bytes | decimal.Decimal) or query.value in {"", b""}:
        return [f"{name}: unusable link value"]
    if spec.value_from in plan.key and plan.key[spec.value_from] != query.value:
        return [f"{name}: the value is not the item's {spec.value_from}"]
    if query.scope is ScopeMode.OWN:
        return [f"{name}: hands down scopes its rules do not"] if query.inherited else []
    if spec.scopes:
        unknown = [s for s in query.inherited if not _admitted(s, spec.scopes, plan.key, parent=True)]
        return [f"{name}: {s} is not a scope the link renders for this item" for s in unknown]
    return [f"{name}: {s} is not one of the item's scopes" for s in query.inherited if s not in plan.scopes]


def _same_link(spec: LinkSpec, query: LinkQuery) -> bool:
    where = (spec.table, spec.attribute, spec.index, spec.sort_attribute, spec.sort_prefix, spec.entity)
    found = (query.table, query.attribute, query.index, query.sort_attribute, query.sort_prefix, query.entity)
    return where == found and spec.scope is query.scope


def _link_data(query: LinkQuery) -> dict[str, object]:
    optional = {
        "index": query.index,
        "sort_attribute": query.sort_attribute,
        "sort_prefix": query.sort_prefix,
        "entity": query.entity,
    }
    return {
        "table": query.table,
        "attribute": query.attribute,
        "value": query.value,
        "scope": query.scope.value,
        "inherited": [str(s) for s in query.inherited],
        **{name: value for name, value in optional.items() if value is not None},
    }


def _link(data: object) -> LinkQuery:
    link = _mapping(data, "link")
    try:
        scope = ScopeMode(_text(link, "scope"))
    except ValueError as exc:
        raise DecodeError("stored link has an unknown scope mode") from exc
    return LinkQuery(
        table=_text(link, "table"),
        attribute=_text(link, "attribute"),
        value=link.get("value"),
        index=_optional_text(link, "index"),
        sort_attribute=_optional_text(link, "sort_attribute"),
        sort_prefix=_optional_text(link, "sort_prefix"),
        entity=_optional_text(link, "entity"),
        scope=scope,
        inherited=_locations(link, "inherited"),
    )


def _mapping(value: object, what: str) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise DecodeError(f"stored {what} is not a map")
    return value


def _list(data: Mapping[str, object], name: str) -> list[object]:
    value = data.get(name, [])
    if not isinstance(value, list):
        raise DecodeError(f"stored plan field {name!r} is not a list")
    return value


def _text(data: Mapping[str, object], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str):
        raise DecodeError(f"stored plan field {name!r} is not a string")
    return value


def _optional_text(data: Mapping[str, object], name: str) -> str | None:
    return _text(data, name) if name in data else None


def _locations(data: Mapping[str, object], name: str) -> tuple[S3Location, ...]:
    try:
        return tuple(S3Location.parse(item) for item in _list(data, name))
    except ScopeViolation as exc:
        raise DecodeError(f"stored plan field {name!r} holds a bad s3:// URI: {exc}") from exc
