"""S3 locations, identifier safety and scope checks.

The scope of an item is a set of ``s3://bucket/prefix/`` locations rendered from templates over the item's own
identifiers (or, for a link that says so, its parent's). A target is in scope only if it is in the same bucket
and its key starts with a rendered scope prefix. An identifier renders as one whole path segment, so it is
refused only when it could change a path's meaning: empty, ``.``, ``..``, holding ``/``, a control character
or an unpaired surrogate (not UTF-8, which S3 keys are), or longer than an S3 key (1,024 bytes). ``#``, ``%``,
``~``, ``+``, spaces and letters of any script are ordinary characters of a segment.
"""

from __future__ import annotations

import decimal
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from reconciler.core.dynamodb_json import Image

# A placeholder: an attribute, optionally of the parent (parent.NAME), optionally after a marker (|after:M).
_PLACEHOLDER = re.compile(r"\{(parent\.)?([A-Za-z_][A-Za-z0-9_]*)(?:\|after:([^{}|/]+))?\}")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # ASCII control characters
S3_SCHEME = "s3://"
MAX_KEY_BYTES = 1024  # https://docs.aws.amazon.com/AmazonS3/latest/userguide/object-keys.html


class ScopeViolation(ValueError):  # noqa: N818 - a violation is what it is
    """Raised by the helpers here; the planner turns it into an ``Unsafe`` outcome."""


@dataclass(frozen=True, slots=True, order=True)
class S3Location:
    """A bucket and a key (an object) or a key prefix ending in '/'."""

    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: object) -> S3Location:
        if not isinstance(uri, str) or not uri.startswith(S3_SCHEME):
            raise ScopeViolation("not an s3:// URI")
        bucket, sep, key = uri[len(S3_SCHEME) :].partition("/")
        if not sep or not key:
            raise ScopeViolation("URI names no key")
        if not _BUCKET.fullmatch(bucket):
            raise ScopeViolation("URI bucket is not a valid bucket name")
        if not _is_utf8(key):
            # S3 keys are UTF-8: no object has this key, and a target quoting it could not be logged or
            # written to the dead-letter table. Refused by its attribute's name.
            raise ScopeViolation("URI key holds an unpaired surrogate (S3 keys are UTF-8)")
        return cls(bucket=bucket, key=key)

    def __str__(self) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self.key}"

    def is_within(self, scope: S3Location) -> bool:
        """True if this location is the scope itself or lies under it."""
        return self.bucket == scope.bucket and self.key.startswith(scope.key)


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def quotable(location: S3Location) -> bool:
    """Whether a refused target may be named in logs and dead letters by its URI: only if its key could be an
    S3 key (at most 1,024 bytes). A longer "key" is text of any kind, so its attribute is named instead."""
    return len(location.key.encode("utf-8", "surrogatepass")) <= MAX_KEY_BYTES


def has_unsafe_segments(key: str) -> bool:
    """Keys with '.' or '..' segments, empty segments or control characters are refused outright."""
    if _CONTROL.search(key):
        return True
    segments = key.split("/")
    inner = segments[:-1] if key.endswith("/") else segments
    return any(segment in {"", ".", ".."} for segment in inner)


def check_segment(text: str, name: str) -> str:
    """``text`` if it can be one whole path segment, else ScopeViolation naming the identifier ``name``."""
    if text in {"", ".", ".."} or "/" in text:
        raise ScopeViolation(f"identifier {name!r} is empty, '.', '..' or holds '/'")
    if any(unicodedata.category(ch) in {"Cc", "Cs"} for ch in text):
        raise ScopeViolation(f"identifier {name!r} holds a control character or an unpaired surrogate")
    if len(text.encode("utf-8")) > MAX_KEY_BYTES:
        raise ScopeViolation(f"identifier {name!r} is longer than an S3 key")
    return text


def identifier_text(name: str, image: Image, after: str | None = None) -> str:
    """The text of identifier ``name`` in ``image`` (the part after ``after`` if given), or ScopeViolation if
    it is missing, lacks the marker, or cannot be a path segment."""
    value = image.get(name)
    if isinstance(value, decimal.Decimal) and value.is_finite() and value == value.to_integral_value():
        text = str(int(value))
    elif isinstance(value, str):
        text = value
    else:
        raise ScopeViolation(f"identifier {name!r} is missing or not a string or integer")
    if after is not None:
        # The value must START with the marker: "X#TENANT#acme" must not render like "TENANT#acme".
        if not text.startswith(after):
            raise ScopeViolation(f"identifier {name!r} does not start with its marker")
        text = text[len(after) :]
    return check_segment(text, name)


@dataclass(frozen=True, slots=True)
class Placeholder:
    """One ``{...}`` of a template: an attribute of the item (or of its parent), whole or after a marker."""

    attribute: str
    after: str | None = None
    parent: bool = False

    def render(self, image: Image, parent: Image | None) -> str:
        if self.parent:
            if parent is None:
                raise ScopeViolation(f"{{parent.{self.attribute}}} has no parent item to render from")
            image = parent
        return identifier_text(self.attribute, image, self.after)


@dataclass(frozen=True, slots=True)
class Template:
    """An ``s3://bucket/...{name}...`` template, parsed once. Built only through ``Template.parse``."""

    source: str
    bucket: str
    parts: tuple[tuple[str, Placeholder | None], ...]  # (literal, placeholder or None)

    @classmethod
    def parse(cls, source: str) -> Template:
        bucket = source.removeprefix(S3_SCHEME).partition("/")[0]
        if "{" in bucket or "}" in bucket:
            raise ScopeViolation("the bucket of a template must be literal")
        location = S3Location.parse(source)
        parts: list[tuple[str, Placeholder | None]] = []
        literal = ""
        segments = location.key.split("/")
        for index, segment in enumerate(segments):
            separator = "/" if index < len(segments) - 1 else ""
            if separator and segment in {"", ".", ".."}:
                # "a//b/" or "a/../b/" names another path than it seems to: a scope must mean what it says.
                raise ScopeViolation(f"{source!r} has an empty, '.' or '..' path segment")
            if "{" not in segment and "}" not in segment:
                literal += segment + separator
                continue
            # A placeholder is a whole path segment: "{a}-{b}/" could render the same key for two items.
            match = _PLACEHOLDER.fullmatch(segment)
            if match is None:
                raise ScopeViolation(
                    f"{segment!r}: a placeholder must be a whole path segment, like /{{id}}/,"
                    " /{id|after:MARKER}/ or /{parent.id}/"
                )
            parent, attribute, after = match.groups()
            parts.append((literal, Placeholder(attribute, after, parent=parent is not None)))
            literal = separator
        if literal:
            parts.append((literal, None))
        return cls(source=source, bucket=location.bucket, parts=tuple(parts))

    @property
    def placeholders(self) -> tuple[Placeholder, ...]:
        return tuple(p for _, p in self.parts if p is not None)

    @property
    def fields(self) -> tuple[str, ...]:
        """The item's own attributes the template names (each renders injectively: whole, or after a
        marker the value must start with)."""
        return tuple(p.attribute for p in self.placeholders if not p.parent)

    @property
    def parent_fields(self) -> tuple[str, ...]:
        return tuple(p.attribute for p in self.placeholders if p.parent)

    def render(self, image: Image, parent: Image | None = None) -> S3Location:
        """Render over ``image`` (and ``parent``); ScopeViolation if an identifier is missing or unsafe."""
        key = "".join(literal + (p.render(image, parent) if p else "") for literal, p in self.parts)
        return S3Location(bucket=self.bucket, key=key)

    def admits(self, location: S3Location, known: Image, parent: Image | None = None) -> bool:
        """Whether an item could render this template as ``location``: its bucket and literal text, one safe
        path segment for each placeholder, and for each placeholder whose attribute ``known`` (or, for
        ``{parent.x}``, ``parent``) holds, the segment that value renders. A stored scope is checked with it
        when no image is left to render from (a dead letter's plan, whose key is what is known)."""
        if location.bucket != self.bucket:
            return False
        pattern = "".join(re.escape(literal) + ("([^/]+)" if p else "") for literal, p in self.parts)
        match = re.fullmatch(pattern, location.key)
        if match is None:
            return False
        try:
            for placeholder, segment in zip(self.placeholders, match.groups(), strict=True):
                check_segment(segment, placeholder.attribute)
                source = parent if placeholder.parent else known
                bound = source is not None and placeholder.attribute in source
                if bound and placeholder.render(source or {}, source) != segment:
                    return False
        except ScopeViolation:
            return False
        return True


def check_in_scope(target: S3Location, scopes: Iterable[S3Location]) -> None:
    """Raise ScopeViolation unless ``target`` lies under one of ``scopes`` and has a clean key."""
    if has_unsafe_segments(target.key):
        raise ScopeViolation("key has empty, '.' or '..' segments or control characters")
    if not any(target.is_within(scope) for scope in scopes):
        raise ScopeViolation("target is outside the item's scope")


def render_all(
    templates: Iterable[Template], image: Mapping[str, object], parent: Image | None = None
) -> tuple[S3Location, ...]:
    return tuple(template.render(image, parent) for template in templates)
