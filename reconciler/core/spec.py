"""Compiled rules: plain, immutable specs the core resolves against, with templates parsed once.

``reconciler.rules`` reads and validates the TOML file and compiles it into these; the core never sees the
file format, pydantic or the file system.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from reconciler.core.classify import Cause
from reconciler.core.dynamodb_json import Image
from reconciler.core.records import StreamRecord
from reconciler.core.scope import Template


def begins_with(image: Image, attribute: str | None, prefix: str | None) -> bool:
    """True without a condition; else whether ``image[attribute]`` is a string starting with ``prefix``."""
    if attribute is None or prefix is None:
        return True
    value = image.get(attribute)
    return isinstance(value, str) and value.startswith(prefix)


class ScopeMode(StrEnum):
    """What a linked item's S3 targets are checked against."""

    OWN = "own"
    """Scopes rendered from the linked item's own identifiers (its table's or entity's ``scopes``)."""
    PARENT = "parent"
    """Scopes rendered from the parent's identifiers: the link's ``scopes``, or the parent's own."""
    BOTH = "both"
    """Either."""


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """Items of ``table`` whose ``attribute`` equals the parent's ``value_from`` (through ``index`` if set),
    optionally only those whose ``sort_attribute`` begins with ``sort_prefix`` and that are of ``entity``."""

    table: str
    attribute: str
    value_from: str
    index: str | None = None
    sort_attribute: str | None = None
    sort_prefix: str | None = None
    entity: str | None = None
    scope: ScopeMode = ScopeMode.OWN
    scopes: tuple[Template, ...] = ()
    """Templates over the parent's identifiers (``{parent.x}``), for ``scope`` parent or both."""


@dataclass(frozen=True, slots=True)
class EntitySpec:
    """One kind of item: the whole table, or the items of a single table whose ``match_attribute`` begins
    with ``match_prefix`` (``SK`` beginning ``TRANSCRIPT#``)."""

    name: str
    scopes: tuple[Template, ...] = ()
    object_attributes: tuple[str, ...] = ()
    prefixes: tuple[Template, ...] = ()
    links: tuple[LinkSpec, ...] = ()
    match_attribute: str | None = None
    match_prefix: str | None = None

    def matches(self, image: Image) -> bool:
        return begins_with(image, self.match_attribute, self.match_prefix)


@dataclass(frozen=True, slots=True)
class ImageCondition:
    """An old-image attribute that equals (or, with ``negate``, does not equal) ``value``. It holds only when
    the attribute is present: an item written before the attribute existed still cascades. Values compare
    by kind too: ``true`` is not the number 1."""

    attribute: str
    value: object
    negate: bool = False

    def holds(self, image: Image | None) -> bool:
        if image is None or self.attribute not in image:
            return False
        actual = image[self.attribute]
        equal = type(actual) is type(self.value) and actual == self.value
        return not equal if self.negate else equal


@dataclass(frozen=True, slots=True)
class IdentityCondition:
    """The stream record's ``userIdentity``: both given fields must match."""

    principal: str | None = None
    type: str | None = None

    def holds(self, record: StreamRecord) -> bool:
        return (self.principal is None or record.principal == self.principal) and (
            self.type is None or record.identity_type == self.type
        )


@dataclass(frozen=True, slots=True)
class CascadeSpec:
    """Which REMOVEs of a source table delete what is linked: by cause, unless a skip condition holds."""

    causes: frozenset[Cause] = frozenset(Cause)
    skip_images: tuple[ImageCondition, ...] = ()
    skip_identities: tuple[IdentityCondition, ...] = ()

    def filtered(self, cause: Cause, record: StreamRecord) -> str | None:
        """Why this removal does not cascade (a low-cardinality reason), or None if it does."""
        if cause not in self.causes:
            return f"cause {cause.value} does not cascade"
        for condition in self.skip_images:
            if condition.holds(record.old_image):
                verb = "is not" if condition.negate else "is"
                return f"old image {condition.attribute} {verb} the configured value"
        if any(condition.holds(record) for condition in self.skip_identities):
            return "userIdentity matches a skip condition"
        return None


@dataclass(frozen=True, slots=True)
class ExpiryIndex:
    """A sparse global secondary index for the expiry sweeper: its partition key ``partition_attribute``
    takes each of ``partition_values`` (one Query each, in place of a Scan segment) and its sort key is the
    table's TTL attribute, so a Query reads only the items that are due."""

    name: str
    partition_attribute: str
    partition_values: tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class TableSpec:
    name: str
    key: tuple[str, ...]
    ttl_attribute: str | None = None
    entities: tuple[EntitySpec, ...] = ()
    """Named entities first, in file order; the table's own rules last (the entity named "")."""
    cascade: CascadeSpec = field(default_factory=CascadeSpec)
    created_attribute: str | None = None
    expiry_index: ExpiryIndex | None = None
    """Where the sweeper finds due items of a big table: a Query per partition value instead of a Scan."""
    """When an item was written (epoch seconds or ISO 8601): the orphan sweep deletes only older items."""

    def entity_of(self, image: Image) -> EntitySpec | None:
        return next((e for e in self.entities if e.matches(image)), None)

    def entity(self, name: str) -> EntitySpec | None:
        return next((e for e in self.entities if e.name == name), None)


@dataclass(frozen=True, slots=True)
class AccountsTable:
    """The accounts an age rule applies to: the ``attribute`` of every item of ``table`` (read with a Scan
    that projects it), only of the items whose ``filter_attribute`` equals ``filter_value`` if one is set."""

    table: str
    attribute: str
    filter_attribute: str | None = None
    filter_value: str | int | bool | None = None


@dataclass(frozen=True, slots=True)
class AccountsFile:
    """The accounts an age rule applies to: one a line of a text file (``#`` starts a comment line)."""

    path: str


@dataclass(frozen=True, slots=True)
class AgeRuleSpec:
    """Objects under ``scope`` whose newest version is older than ``max_age`` are deleted: under each listed
    account's rendering of the scope when ``accounts`` is set, else under the scope's static prefix."""

    name: str
    scope: Template
    max_age_seconds: int
    accounts: AccountsTable | AccountsFile | None = None


@dataclass(frozen=True, slots=True)
class RuleSet:
    buckets: frozenset[str]
    sources: tuple[str, ...]
    tables: Mapping[str, TableSpec]
    age_rules: tuple[AgeRuleSpec, ...] = ()

    @classmethod
    def of(
        cls,
        buckets: frozenset[str],
        sources: tuple[str, ...],
        tables: Mapping[str, TableSpec],
        age_rules: tuple[AgeRuleSpec, ...] = (),
    ) -> RuleSet:
        return cls(buckets, sources, MappingProxyType(dict(tables)), age_rules)
