"""Scope templates run in reverse: from an S3 object back to the items whose scope holds it.

The planner renders an item's scopes from its identifiers (``plan.resolve``); an orphan sweep needs the
other direction. ``walk_roots`` names the static prefixes to list, per bucket; ``OwnerIndex.owners`` maps
one listed key to every item whose scope template matches it, by matching the template's literal text and
taking each placeholder's whole path segment (a placeholder is one segment, so ``/907/`` never matches
``/9070/``). Every match is checked by rendering the template again over the recovered values.

The sweep may delete an object only if all of these hold (besides its own minimum age):

- the answer is not empty: an object that no template matches is no item's, as the rules see it, and stays;
- it holds no ``Unresolvable``: the object lies under a template that cannot name one item (its
  placeholders do not include every key attribute, a key value could be a string or a number, the template
  ends with a placeholder, the key has an empty, '.' or '..' segment). Such objects are reported, and never
  deleted;
- every ``Owner``'s item is missing (an object can lie under the scopes of several items; the templates of
  every table in the rules are tried, reachable from a source or not, since an extra owner only keeps more).

An object under a link's scope (``{parent.NAME}`` templates) belongs to the parent: the link hands that
scope to children deleted with the parent, so a child that is still there does not keep the object.

Keys hold values as decoded images do (``str`` or ``Decimal``). A segment such as ``906`` renders from the
string "906" and from the number 906 alike; the rules do not say which, so give the key types (from the
table's ``AttributeDefinitions``) or such keys are ``Unresolvable``. Pure: no I/O, no clock.
"""

from __future__ import annotations

import decimal
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from reconciler.core.dynamodb_json import MAX_ADJUSTED_EXPONENT, MAX_DIGITS
from reconciler.core.scope import (
    Placeholder,
    S3Location,
    ScopeViolation,
    Template,
    check_segment,
    has_unsafe_segments,
)
from reconciler.core.spec import EntitySpec, RuleSet, TableSpec

KeyValue = str | decimal.Decimal

# How an integral DynamoDB number renders as a segment (scope.identifier_text): str(int(value)).
_INTEGER = re.compile(r"-?[1-9][0-9]*|0")


class KeyType(StrEnum):
    """A key attribute's type, as ``AttributeDefinitions`` gives it."""

    STRING = "S"
    NUMBER = "N"
    BINARY = "B"


KeyTypes = Mapping[str, Mapping[str, KeyType]]
"""Per table, per key attribute, its type."""


class UnresolvableReason(StrEnum):
    """Low-cardinality reasons, usable as a metric label."""

    PARTIAL_KEY = "partial_key"
    """The template does not name every key attribute: it holds the objects of several items."""
    KEY_TYPE = "key_type_unknown"
    """A key value reads as a string or as a number, and the key's type was not given."""
    UNSAFE_KEY = "unsafe_key"
    """The object's key has an empty, '.' or '..' segment or a control character: the worker refuses it."""
    OPEN_ENDED = "open_ended_template"
    """The template ends with a placeholder, so the object's segment could be any of its beginnings."""


@dataclass(frozen=True, slots=True)
class Owner:
    """An item whose scope holds the object: ``key`` is its full primary key, in the table's key order."""

    table: str
    entity: str
    key: tuple[tuple[str, KeyValue], ...]
    template: str
    """The source of the scope template that matched."""
    scope: S3Location
    """The scope prefix the template renders for this item; the object lies under it."""

    @property
    def item_key(self) -> dict[str, KeyValue]:
        return dict(self.key)


@dataclass(frozen=True, slots=True)
class Unresolvable:
    """The object lies under ``template`` of ``table`` but no single item can be named: never delete it."""

    table: str
    entity: str
    template: str
    reason: UnresolvableReason
    detail: str


Ownership = Owner | Unresolvable


@dataclass(frozen=True, slots=True)
class _Candidate:
    """A scope template and the items it names: ``inherited`` for a link's scope, which is the parent's."""

    table: TableSpec
    entity: EntitySpec
    template: Template
    inherited: bool

    def unresolvable(self, reason: UnresolvableReason, detail: str) -> Unresolvable:
        return Unresolvable(self.table.name, self.entity.name, self.template.source, reason, detail)


def static_prefix(template: Template) -> str:
    """The key text before the template's first placeholder: all that is known of the keys under it."""
    return template.parts[0][0]  # the literal of the first part runs up to the first placeholder


def reachable_tables(rules: RuleSet) -> list[str]:
    """The sources and every table linked from them, directly or not: the only tables the worker reads."""
    found = list(dict.fromkeys(rules.sources))
    for name in found:  # grows while it is walked: links form no cycle, so this ends
        links = (link for entity in rules.tables[name].entities for link in entity.links)
        found += [link.table for link in links if link.table not in found]
    return found


def scope_templates(rules: RuleSet) -> list[Template]:
    """Every scope an item of a reachable table can be checked against: its kinds' own, and those its
    links hand on to their linked items."""
    found: list[Template] = []
    for name in reachable_tables(rules):
        entities = rules.tables[name].entities
        found += [template for entity in entities for template in entity.scopes]
        found += [template for entity in entities for link in entity.links for template in link.scopes]
    return found


def outermost(prefixes: Iterable[str]) -> tuple[str, ...]:
    """The prefixes, sorted and deduplicated, leaving out those under another."""
    unique = set(prefixes)
    return tuple(sorted(p for p in unique if not any(p != q and p.startswith(q) for q in unique)))


def walk_roots(rules: RuleSet) -> dict[str, tuple[str, ...]]:
    """Per bucket, the prefixes to list to see every object under a scope the worker can reach. A scope that
    starts with a placeholder makes it the whole bucket (``""``)."""
    found: dict[str, list[str]] = {}
    for template in scope_templates(rules):
        found.setdefault(template.bucket, []).append(static_prefix(template))
    return {bucket: outermost(prefixes) for bucket, prefixes in sorted(found.items())}


@dataclass(frozen=True, slots=True)
class OwnerIndex:
    """The scope templates of every table, by bucket: built once, then asked once per listed object."""

    candidates: Mapping[str, tuple[_Candidate, ...]]
    key_types: KeyTypes

    @classmethod
    def of(cls, rules: RuleSet, key_types: KeyTypes | None = None) -> OwnerIndex:
        found: dict[str, dict[tuple[str, str, str, bool], _Candidate]] = {}
        for table in rules.tables.values():
            for entity in table.entities:
                # A template that names the other side's identifiers never renders (plan.resolve refuses it).
                own = [t for t in entity.scopes if not t.parent_fields]
                inherited = [t for link in entity.links for t in link.scopes if not t.fields]
                for template, via_link in [*((t, False) for t in own), *((t, True) for t in inherited)]:
                    candidate = _Candidate(table, entity, template, via_link)
                    ident = (table.name, entity.name, template.source, via_link)
                    found.setdefault(template.bucket, {}).setdefault(ident, candidate)
        candidates = {bucket: tuple(by_ident.values()) for bucket, by_ident in found.items()}
        return cls(MappingProxyType(candidates), MappingProxyType(dict(key_types or {})))

    def owners(self, bucket: str, key: str) -> list[Ownership]:
        """Every item whose scope holds ``s3://bucket/key``, or an ``Unresolvable`` for a template that
        holds it but cannot name one item. Empty if no template matches: then the object is no item's, and
        the sweep must leave it (see the module's docstring for when an object may be deleted)."""
        found: list[Ownership] = []
        for candidate in self.candidates.get(bucket, ()):
            types = self.key_types.get(candidate.table.name, {})
            match = _match(candidate, S3Location(bucket, key), types)
            if match is not None and match not in found:
                found.append(match)
        return found


def owners(rules: RuleSet, bucket: str, key: str, key_types: KeyTypes | None = None) -> list[Ownership]:
    """``OwnerIndex.of(rules, key_types).owners(bucket, key)``, for one object (a sweep builds one index)."""
    return OwnerIndex.of(rules, key_types).owners(bucket, key)


def _segments(template: Template, key: str) -> list[tuple[Placeholder, str]] | None:
    """The segment each placeholder takes in ``key`` if ``key`` has the template's literal text around
    them (so lies under some rendering of it), else None. A placeholder takes up to the next '/'."""
    taken: list[tuple[Placeholder, str]] = []
    position = 0
    for literal, placeholder in template.parts:
        if not key.startswith(literal, position):
            return None
        position += len(literal)
        if placeholder is not None:
            end = key.find("/", position)
            end = len(key) if end < 0 else end  # then the literal after it ('/...') cannot match
            taken.append((placeholder, key[position:end]))
            position = end
    return taken


def _values(taken: list[tuple[Placeholder, str]]) -> dict[str, str] | None:
    """Each attribute's whole text (its marker put back), or None if no item renders these segments: one is
    not a possible identifier, or an attribute named twice took two values."""
    values: dict[str, str] = {}
    for placeholder, text in taken:
        try:
            check_segment(text, placeholder.attribute)
        except ScopeViolation:
            return None
        whole = (placeholder.after or "") + text
        if values.setdefault(placeholder.attribute, whole) != whole:
            return None
    return values


def _number(text: str) -> decimal.Decimal | None:
    """The DynamoDB number that renders as ``text``, if one does."""
    if not _INTEGER.fullmatch(text):
        return None
    digits = text.removeprefix("-")
    if len(digits.rstrip("0")) > MAX_DIGITS or len(digits) > MAX_ADJUSTED_EXPONENT + 1:
        return None
    return decimal.Decimal(text)


def _typed_key(
    candidate: _Candidate, values: Mapping[str, str], types: Mapping[str, KeyType]
) -> dict[str, KeyValue] | Unresolvable | None:
    """The item's key with each value typed; None if no item of the table renders these values."""
    key: dict[str, KeyValue] = {}
    for name in candidate.table.key:
        text, number = values[name], _number(values[name])
        match types.get(name):
            case KeyType.STRING:
                key[name] = text
            case KeyType.NUMBER if number is not None:
                key[name] = number
            case KeyType.NUMBER | KeyType.BINARY:  # a binary value never renders a scope
                return None
            case _ if number is not None:
                detail = f"key attribute {name!r} reads as a string or a number; its type was not given"
                return candidate.unresolvable(UnresolvableReason.KEY_TYPE, detail)
            case _:  # a number renders as an integer: anything else was a string
                key[name] = text
    return key


def _match(candidate: _Candidate, target: S3Location, types: Mapping[str, KeyType]) -> Ownership | None:
    values = _recover(candidate, target.key)
    if not isinstance(values, dict):
        return values
    key = _typed_key(candidate, values, types)
    if not isinstance(key, dict):
        return key
    return _owner(candidate, target, key, {**values, **key})


def _recover(candidate: _Candidate, key: str) -> dict[str, str] | Unresolvable | None:
    """The text of every attribute the template names, if ``key`` lies under it and they name one item."""
    template = candidate.template
    taken = _segments(template, key)
    if taken is None:
        return None
    if template.parts[-1][1] is not None:
        detail = "the template ends with a placeholder, not '/'"
        return candidate.unresolvable(UnresolvableReason.OPEN_ENDED, detail)
    values = _values(taken)
    if values is None:
        return None
    if has_unsafe_segments(key):
        detail = "the key has an empty, '.' or '..' segment or a control character"
        return candidate.unresolvable(UnresolvableReason.UNSAFE_KEY, detail)
    missing = [name for name in candidate.table.key if name not in values]
    if missing:
        detail = f"the template does not name key attribute(s) {', '.join(missing)}"
        return candidate.unresolvable(UnresolvableReason.PARTIAL_KEY, detail)
    return values


def _owner(
    candidate: _Candidate, target: S3Location, key: Mapping[str, KeyValue], image: Mapping[str, object]
) -> Owner | None:
    """The owner, if an item with these values is of the candidate's kind and renders a scope holding the
    target (the forward renderer has the last word)."""
    entity = candidate.entity
    if entity.match_attribute in image and not entity.matches(image):
        return None
    try:
        if candidate.inherited:
            scope = candidate.template.render({}, parent=image)
        else:
            scope = candidate.template.render(image)
    except ScopeViolation:
        return None
    if not target.is_within(scope):
        return None
    ordered = tuple((name, key[name]) for name in candidate.table.key)
    return Owner(candidate.table.name, entity.name, ordered, candidate.template.source, scope)
