"""Resolve an item's old image against its table's rules into a ``DeletionPlan``.

Scope is enforced here, before anything runs: every S3 target in a plan lies under one of the item's own
scope prefixes. What fails the check becomes an ``Unsafe`` entry that is counted, logged and dead-lettered,
and never executed. If an identifier is unsafe the item has no scope at all, so nothing of it is executed.
"""

from __future__ import annotations

import decimal
import hashlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum

from reconciler.core.dynamodb_json import Image
from reconciler.core.scope import S3Location, ScopeViolation, check_in_scope, render_all
from reconciler.rules import LinkRule, TableRules


class UnsafeReason(StrEnum):
    """Low-cardinality reasons, used as a metric label."""

    IDENTIFIER = "unsafe_identifier"
    NOT_A_URI = "not_an_s3_uri"
    OUT_OF_SCOPE = "out_of_scope"
    LINK_VALUE = "unusable_link_value"


@dataclass(frozen=True, slots=True)
class Unsafe:
    """A refused target. ``target`` names an attribute, a template or an S3 URI, never item content."""

    target: str
    reason: UnsafeReason
    detail: str


@dataclass(frozen=True, slots=True)
class LinkQuery:
    """Find the linked items whose ``attribute`` equals ``value`` (through ``index`` if set)."""

    table: str
    attribute: str
    value: object
    index: str | None


@dataclass(frozen=True, slots=True)
class DeletionPlan:
    """Everything to delete for one item, already scope-checked."""

    table: str
    key: Mapping[str, object]
    scopes: tuple[S3Location, ...]
    objects: tuple[S3Location, ...]
    prefixes: tuple[S3Location, ...]
    links: tuple[LinkQuery, ...]
    unsafe: tuple[Unsafe, ...]

    @property
    def is_safe(self) -> bool:
        return not self.unsafe

    @property
    def has_work(self) -> bool:
        return bool(self.objects or self.prefixes or self.links)


def key_hash(table: str, key: Mapping[str, object]) -> str:
    """A short, stable, non-reversible name for an item key, for logs and metrics-free correlation."""
    text = table + "\x00" + "\x00".join(f"{k}={key[k]!r}" for k in sorted(key))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _uris(value: object) -> Iterator[object]:
    """The URI candidates of an object attribute: a string, a list/set of them or a map of them."""
    if isinstance(value, Mapping):
        yield from value.values()
    elif isinstance(value, list | tuple | frozenset | set):
        yield from value
    else:
        yield value


# A version-qualified object URL, as S3's console and SDK helpers write it: "...key?versionId=ID".
_VERSION_QUERY = re.compile(r"\?versionId=[^/?]*\Z")


def readings(location: S3Location) -> tuple[S3Location, ...]:
    """What an ``s3://`` URI can name. Its key is literal, '#', '?', '%' and '+' included, as the AWS CLI and
    SDKs read it: s3:// URIs have no query and no fragment. The one exception is a trailing
    ``?versionId=ID``, which names a version of the key before it; since every version of a target is
    deleted, both readings are planned (each scope-checked), so the object meant goes whichever it was."""
    match = _VERSION_QUERY.search(location.key)
    if match is None or match.start() == 0:
        return (location,)
    return (location, S3Location(location.bucket, location.key[: match.start()]))


def _objects(
    rules: TableRules, image: Image, scopes: tuple[S3Location, ...]
) -> tuple[list[S3Location], list[Unsafe]]:
    objects: list[S3Location] = []
    unsafe: list[Unsafe] = []
    for attribute in rules.object_attributes:
        if attribute not in image or image[attribute] is None:
            continue  # nothing linked through this attribute
        for candidate in _uris(image[attribute]):
            try:
                parsed = S3Location.parse(candidate)
            except ScopeViolation as exc:
                unsafe.append(Unsafe(attribute, UnsafeReason.NOT_A_URI, str(exc)))
                continue
            for location in readings(parsed):
                try:
                    check_in_scope(location, scopes)
                except ScopeViolation as exc:
                    unsafe.append(Unsafe(str(location), UnsafeReason.OUT_OF_SCOPE, str(exc)))
                    continue
                objects.append(location)
    return objects, unsafe


def _link(rule: LinkRule, image: Image) -> LinkQuery | Unsafe | None:
    value = image.get(rule.value_from)
    if value is None:
        return None
    if not isinstance(value, str | bytes | decimal.Decimal):
        return Unsafe(
            rule.value_from,
            UnsafeReason.LINK_VALUE,
            "link value must be a string, number or binary",
        )
    if value in {"", b""}:
        return Unsafe(rule.value_from, UnsafeReason.LINK_VALUE, "link value is empty")
    return LinkQuery(table=rule.table, attribute=rule.attribute, value=value, index=rule.index)


def resolve(table: str, rules: TableRules, image: Image) -> DeletionPlan:
    """Resolve ``image`` (an item of ``table``) into a scope-checked plan. Pure."""
    key = {name: image[name] for name in rules.key if name in image}
    try:
        scopes = render_all(rules.scope_templates(), image)
        prefixes = render_all(rules.prefix_templates(), image)
    except ScopeViolation as exc:
        refused = Unsafe("scope", UnsafeReason.IDENTIFIER, str(exc))
        return DeletionPlan(table, key, (), (), (), (), (refused,))
    unsafe: list[Unsafe] = []
    safe_prefixes: list[S3Location] = []
    for prefix in prefixes:
        try:
            check_in_scope(prefix, scopes)
        except ScopeViolation as exc:
            unsafe.append(Unsafe(str(prefix), UnsafeReason.OUT_OF_SCOPE, str(exc)))
        else:
            safe_prefixes.append(prefix)
    objects, object_unsafe = _objects(rules, image, scopes)
    unsafe.extend(object_unsafe)
    links: list[LinkQuery] = []
    for rule in rules.links:
        match _link(rule, image):
            case LinkQuery() as query:
                links.append(query)
            case Unsafe() as refused:
                unsafe.append(refused)
            case None:
                pass
    # An object under a prefix that is deleted anyway needs no call of its own.
    objects = [o for o in dict.fromkeys(objects) if not any(o.is_within(p) for p in safe_prefixes)]
    return DeletionPlan(
        table=table,
        key=key,
        scopes=scopes,
        objects=tuple(objects),
        prefixes=tuple(dict.fromkeys(safe_prefixes)),
        links=tuple(links),
        unsafe=tuple(unsafe),
    )
