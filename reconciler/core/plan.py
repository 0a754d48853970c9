"""Resolve an item's old image against its table's compiled rules into a ``DeletionPlan``.

Scope is enforced here, before anything runs: every S3 target in a plan lies under one of the item's allowed
scope prefixes: its own, rendered from its identifiers, or (for a linked item whose link says so) its
parent's. What fails the check becomes an ``Unsafe`` entry that is counted, logged and dead-lettered, and
never executed. If an identifier is unsafe the item has no scope at all, so nothing of it is executed.
"""

from __future__ import annotations

import decimal
import hashlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum

from reconciler.core.dynamodb_json import Image
from reconciler.core.scope import S3Location, ScopeViolation, check_in_scope, quotable, render_all
from reconciler.core.spec import EntitySpec, LinkSpec, ScopeMode, TableSpec, begins_with


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
    """Find the linked items whose ``attribute`` equals ``value`` (through ``index`` if set), whose
    ``sort_attribute`` begins with ``sort_prefix`` if set, and that are of ``entity`` if set."""

    table: str
    attribute: str
    value: object
    index: str | None
    sort_attribute: str | None = None
    sort_prefix: str | None = None
    entity: str | None = None
    scope: ScopeMode = ScopeMode.OWN
    inherited: tuple[S3Location, ...] = ()
    """Scopes rendered from the parent, for ``scope`` parent or both."""

    def matches(self, image: Image) -> bool:
        """Whether ``image`` is linked by this query: the test its Query and conditional delete make."""
        return image.get(self.attribute) == self.value and begins_with(
            image, self.sort_attribute, self.sort_prefix
        )


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
    def blocked(self) -> bool:
        """An identifier could not render: the item has no scope, and nothing of it is planned."""
        return any(u.target == "scope" and u.reason is UnsafeReason.IDENTIFIER for u in self.unsafe)

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
    entity: EntitySpec, image: Image, scopes: tuple[S3Location, ...]
) -> tuple[list[S3Location], list[Unsafe]]:
    objects: list[S3Location] = []
    unsafe: list[Unsafe] = []
    for attribute in entity.object_attributes:
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
                    target = str(location) if quotable(location) else attribute
                    unsafe.append(Unsafe(target, UnsafeReason.OUT_OF_SCOPE, str(exc)))
                    continue
                objects.append(location)
    return objects, unsafe


def _link(link: LinkSpec, image: Image, allowed: tuple[S3Location, ...]) -> LinkQuery | Unsafe | None:
    value = image.get(link.value_from)
    if value is None:
        return None
    if not isinstance(value, str | bytes | decimal.Decimal):
        return Unsafe(
            link.value_from,
            UnsafeReason.LINK_VALUE,
            "link value must be a string, number or binary",
        )
    if value in {"", b""}:
        return Unsafe(link.value_from, UnsafeReason.LINK_VALUE, "link value is empty")
    inherited: tuple[S3Location, ...] = ()
    if link.scope is not ScopeMode.OWN:
        try:
            # Rendered over this item, the linked items' parent; without scopes of its own, the link passes on
            # the parent's own allowed scopes.
            inherited = render_all(link.scopes, {}, parent=image) if link.scopes else allowed
        except ScopeViolation as exc:
            return Unsafe(f"link to {link.table}", UnsafeReason.IDENTIFIER, str(exc))
    return LinkQuery(
        table=link.table,
        attribute=link.attribute,
        value=value,
        index=link.index,
        sort_attribute=link.sort_attribute,
        sort_prefix=link.sort_prefix,
        entity=link.entity,
        scope=link.scope,
        inherited=inherited,
    )


def _allowed(mode: ScopeMode, own: tuple[S3Location, ...], via: LinkQuery | None) -> tuple[S3Location, ...]:
    inherited = via.inherited if via is not None else ()
    match mode:
        case ScopeMode.OWN:
            return own
        case ScopeMode.PARENT:
            return inherited
        case ScopeMode.BOTH:
            return tuple(dict.fromkeys((*own, *inherited)))


def resolve(table: TableSpec, image: Image, via: LinkQuery | None = None) -> DeletionPlan:
    """Resolve ``image`` (an item of ``table``, reached through ``via`` if it is a linked item) into a
    scope-checked plan. Pure."""
    key = {name: image[name] for name in table.key if name in image}
    entity = table.entity_of(image)
    if entity is None:  # an item of no kind the rules describe: nothing is linked to it
        return DeletionPlan(table.name, key, (), (), (), (), ())
    mode = via.scope if via is not None else ScopeMode.OWN
    try:
        own = render_all(entity.scopes, image) if mode is not ScopeMode.PARENT else ()
        prefixes = render_all(entity.prefixes, image)
    except ScopeViolation as exc:
        refused = Unsafe("scope", UnsafeReason.IDENTIFIER, str(exc))
        return DeletionPlan(table.name, key, (), (), (), (), (refused,))
    scopes = _allowed(mode, own, via)
    unsafe: list[Unsafe] = []
    safe_prefixes: list[S3Location] = []
    for prefix in prefixes:
        try:
            check_in_scope(prefix, scopes)
        except ScopeViolation as exc:
            unsafe.append(Unsafe(str(prefix), UnsafeReason.OUT_OF_SCOPE, str(exc)))
        else:
            safe_prefixes.append(prefix)
    objects, object_unsafe = _objects(entity, image, scopes)
    unsafe.extend(object_unsafe)
    links: list[LinkQuery] = []
    for link in entity.links:
        match _link(link, image, scopes):
            case LinkQuery() as query:
                links.append(query)
            case Unsafe() as refused:
                unsafe.append(refused)
            case None:
                pass
    # An object under a prefix that is deleted anyway needs no call of its own.
    objects = [o for o in dict.fromkeys(objects) if not any(o.is_within(p) for p in safe_prefixes)]
    return DeletionPlan(
        table=table.name,
        key=key,
        scopes=scopes,
        objects=tuple(objects),
        prefixes=tuple(dict.fromkeys(safe_prefixes)),
        links=tuple(links),
        unsafe=tuple(unsafe),
    )
