"""Links run in reverse: from an item of a linked table back to the items that could own it.

``reverse.OwnerIndex`` maps an S3 key back to its owner items; this is its analogue for linked DynamoDB
items. A link (``LinkSpec``: items of ``table`` whose ``attribute`` equals the parent's ``value_from``) holds
the parent's value, so the parent's key is known only when ``value_from`` is the parent table's whole
primary key. Then the parent's entity is checked where it can be, on the key itself (a single-table
``match`` on the key); a match on any other attribute cannot be checked, and any item at that key counts
as the parent (so keeps more, never less).

The orphan sweep may delete a linked item only if all of these hold (besides its own minimum age):

- it has parents: an item no link matches (another kind, a sort key without the link's prefix, no link
  value) is no child, as the rules see it, and stays;
- none of them is ``UnknownParent``: a link whose ``value_from`` is not the parent's whole key (a
  single-table parent keyed by ``PK`` and ``SK`` that links by ``PK`` alone), a link that hands on scopes
  needing more of the parent than its key (``{parent.account_id}``, or the parent's own scopes), or a parent
  table the worker does not read. Such items are reported and never deleted: a parent is never guessed;
- every ``Parent`` is missing (``orphaned``): an item linked from two parents stays while either exists.

A ``Parent`` carries the ``LinkQuery`` its cascade would have used: the delete's condition (the item still
links to that parent) and the scopes the link hands on. Pure: no I/O, no clock.
"""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from reconciler.core.dynamodb_json import Image
from reconciler.core.plan import LinkQuery, key_hash
from reconciler.core.reverse import KeyType, KeyTypes, reachable_tables
from reconciler.core.scope import S3Location, ScopeViolation, render_all
from reconciler.core.spec import EntitySpec, LinkSpec, RuleSet, ScopeMode, TableSpec, begins_with

_PYTHON_TYPES = {KeyType.STRING: str, KeyType.NUMBER: decimal.Decimal, KeyType.BINARY: bytes}


class ParentReason(StrEnum):
    """Why a linked item's parent cannot be named: low-cardinality, usable as a metric label."""

    PARTIAL_KEY = "partial_key"
    """The link's ``value_from`` is not the parent table's whole key: it names several possible items."""
    PARENT_SCOPE = "parent_scope"
    """The link hands on scopes that need parent attributes beyond its key: they cannot be rendered."""
    NOT_READ = "parent_table_not_read"
    """The parent's table is neither a source nor linked from one: the worker cannot read it."""


@dataclass(frozen=True, slots=True)
class Parent:
    """An item that may own the linked item: ``key`` is its whole primary key."""

    table: str
    entity: str
    key: tuple[tuple[str, object], ...]
    query: LinkQuery
    """The query the parent's cascade would find the linked item with: the delete's condition, and the
    scopes (rendered from the parent's key) it hands on."""

    @property
    def item_key(self) -> dict[str, object]:
        return dict(self.key)

    @property
    def ident(self) -> tuple[str, str]:
        return (self.table, key_hash(self.table, self.item_key))


@dataclass(frozen=True, slots=True)
class UnknownParent:
    """The item may belong to an item of ``table`` that cannot be named: never delete it."""

    table: str
    entity: str
    reason: ParentReason
    detail: str


Parentage = Parent | UnknownParent


@dataclass(frozen=True, slots=True)
class _Edge:
    """One link into a table, with the parent table and entity it starts from."""

    parent: TableSpec
    entity: EntitySpec
    link: LinkSpec
    readable: bool
    key_type: KeyType | None
    """The type of the parent's key attribute ``value_from``, if given."""

    def unknown(self, reason: ParentReason, detail: str) -> UnknownParent:
        return UnknownParent(self.parent.name, self.entity.name, reason, detail)

    @property
    def problem(self) -> UnknownParent | None:
        """Why no item this link matches can name its parent, whatever its values (the rules say so)."""
        link, parent = self.link, self.parent
        if not self.readable:
            return self.unknown(
                ParentReason.NOT_READ, f"{parent.name!r} is neither a source nor linked from one"
            )
        if parent.key != (link.value_from,):
            detail = f"value_from {link.value_from!r} is not {parent.name!r}'s whole key"
            return self.unknown(ParentReason.PARTIAL_KEY, detail)
        if link.scope is ScopeMode.OWN:
            return None
        if not link.scopes:
            detail = "the link hands on the parent's own scopes, which need its whole item"
            return self.unknown(ParentReason.PARENT_SCOPE, detail)
        if any(set(t.parent_fields) - set(parent.key) for t in link.scopes):
            detail = "the link's scopes name parent attributes beyond its key"
            return self.unknown(ParentReason.PARENT_SCOPE, detail)
        return None


@dataclass(frozen=True, slots=True)
class ParentIndex:
    """The links into each linked table, built once, then asked once per scanned item."""

    tables: Mapping[str, TableSpec]
    edges: Mapping[str, tuple[_Edge, ...]]
    linked: tuple[str, ...]
    """The tables to sweep: those linked from a table the worker reads, in the order they are reached,
    where some link could name its items' parent."""
    unswept: Mapping[str, tuple[UnknownParent, ...]]
    """The other tables linked from a table the worker reads: no link into them can name a parent (the
    rules say so), so every item there would be kept; they are not read at all."""

    @classmethod
    def of(cls, rules: RuleSet, key_types: KeyTypes | None = None) -> ParentIndex:
        """With the parents' ``key_types`` (``DescribeTable``), a link value of another type names no
        parent (no item's key can hold it, so no cascade ever found the item through it)."""
        readable = reachable_tables(rules)
        edges: dict[str, list[_Edge]] = {}
        for table in rules.tables.values():
            types = (key_types or {}).get(table.name, {})
            for entity in table.entities:
                for link in entity.links:
                    edge = _Edge(table, entity, link, table.name in readable, types.get(link.value_from))
                    edges.setdefault(link.table, []).append(edge)
        reached = [name for name in readable if any(e.readable for e in edges.get(name, ()))]
        linked = tuple(n for n in reached if any(e.problem is None for e in edges[n]))
        unswept = {n: tuple(filter(None, (e.problem for e in edges[n]))) for n in reached if n not in linked}
        frozen = {name: tuple(found) for name, found in edges.items()}
        return cls(rules.tables, MappingProxyType(frozen), linked, MappingProxyType(unswept))

    def attributes(self, table: str) -> tuple[str, ...]:
        """What a Scan of ``table`` must read to judge its items: the key, every link's attribute and sort
        key, the entities' match attributes and the created attribute. Never more (no item content)."""
        spec = self.tables[table]
        names = [*spec.key]
        for edge in self.edges.get(table, ()):
            names += [edge.link.attribute, *filter(None, [edge.link.sort_attribute])]
        names += [e.match_attribute for e in spec.entities if e.match_attribute is not None]
        if spec.created_attribute is not None:
            names.append(spec.created_attribute)
        return tuple(dict.fromkeys(names))

    def parents(self, table: str, image: Image) -> list[Parentage]:
        """Every item that could own ``image`` (an item of ``table``), or an ``UnknownParent`` for a link
        that holds it but cannot name its parent. Empty if no link matches it: then it is nobody's child."""
        spec = self.tables[table]
        found: list[Parentage] = []
        for edge in self.edges.get(table, ()):
            parent = _parent(edge, spec, image)
            if parent is not None and parent not in found:
                found.append(parent)
        return found


def orphaned(parents: Sequence[Parentage], present: Collection[tuple[str, str]]) -> bool:
    """Whether an item with these parents is an orphan, ``present`` holding the ``Parent.ident`` of every
    parent that exists: it has parents, all of them named, and every one of them is missing."""
    return (
        bool(parents)
        and all(isinstance(p, Parent) for p in parents)
        and not any(p.ident in present for p in parents if isinstance(p, Parent))
    )


def _linked_by(link: LinkSpec, spec: TableSpec, image: Image) -> bool:
    """Whether ``link`` matches ``image``: the test its Query (and the entity filter after it) makes."""
    value = image.get(link.attribute)
    if not isinstance(value, str | bytes | decimal.Decimal) or value in {"", b""}:
        return False  # no key (of the table or an index) holds such a value: no Query finds the item
    if not begins_with(image, link.sort_attribute, link.sort_prefix):
        return False
    if link.entity is None:
        return True
    entity = spec.entity_of(image)
    return entity is not None and entity.name == link.entity


def _parent(edge: _Edge, spec: TableSpec, image: Image) -> Parentage | None:
    link = edge.link
    if not _linked_by(link, spec, image):
        return None
    key = {link.value_from: image[link.attribute]}
    if edge.entity.match_attribute in key and not edge.entity.matches(key):
        return None  # no item of the parent's kind has this key
    if edge.key_type is not None and not isinstance(key[link.value_from], _PYTHON_TYPES[edge.key_type]):
        return None  # no item of the parent's table has a key of this type
    if edge.problem is not None:
        return edge.problem
    inherited = _inherited(edge, key)
    if isinstance(inherited, UnknownParent):
        return inherited
    query = LinkQuery(
        table=link.table,
        attribute=link.attribute,
        value=image[link.attribute],
        index=link.index,
        sort_attribute=link.sort_attribute,
        sort_prefix=link.sort_prefix,
        entity=link.entity,
        scope=link.scope,
        inherited=inherited,
    )
    return Parent(edge.parent.name, edge.entity.name, tuple(key.items()), query)


def _inherited(edge: _Edge, key: Image) -> tuple[S3Location, ...] | UnknownParent:
    """The scopes the link hands on, rendered from the parent's key alone (all that is known of it)."""
    if edge.link.scope is ScopeMode.OWN:
        return ()
    try:
        return render_all(edge.link.scopes, {}, parent=key)
    except ScopeViolation:  # a key value that cannot be a path segment: the parent could not render it
        detail = "the link's scopes do not render over the parent's key"
        return edge.unknown(ParentReason.PARENT_SCOPE, detail)


def created_at(value: object) -> dt.datetime | None:
    """When an item was written, from its created attribute: a Number of epoch seconds, or an ISO 8601
    string with a time zone. None for anything else (a naive time could be any zone's): never old."""
    if isinstance(value, decimal.Decimal) and value.is_finite():
        try:
            return dt.datetime.fromtimestamp(float(value), dt.UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            return None
        return parsed if parsed.tzinfo is not None and parsed.utcoffset() is not None else None
    return None
