"""S3 locations, identifier safety and scope checks.

The scope of an item is a set of ``s3://bucket/prefix/`` locations rendered from templates over the item's own
identifiers. A target is in scope only if it is in the same bucket and its key starts with a rendered scope
prefix. Identifiers must be plain tokens so that no value can widen or escape a prefix.
"""

from __future__ import annotations

import decimal
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from reconciler.core.dynamodb_json import Image

# Plain tokens only: UUIDs, account ids, dates. No '/', no wildcard, no whitespace or control characters.
_SAFE_IDENTIFIER = re.compile(r"[A-Za-z0-9_.:@+=,-]{1,256}")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
S3_SCHEME = "s3://"


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
        return cls(bucket=bucket, key=key)

    def __str__(self) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self.key}"

    def is_within(self, scope: S3Location) -> bool:
        """True if this location is the scope itself or lies under it."""
        return self.bucket == scope.bucket and self.key.startswith(scope.key)


def has_unsafe_segments(key: str) -> bool:
    """Keys with '.' or '..' segments, empty segments or control characters are refused outright."""
    if any(ord(ch) < 0x20 or ch == "\x7f" for ch in key):  # noqa: PLR2004 - ASCII control range
        return True
    segments = key.split("/")
    inner = segments[:-1] if key.endswith("/") else segments
    return any(segment in {"", ".", ".."} for segment in inner)


def identifier_text(name: str, image: Image) -> str:
    """The text of identifier ``name`` in ``image``, or ScopeViolation if it is missing or unsafe."""
    value = image.get(name)
    if isinstance(value, decimal.Decimal) and value == value.to_integral_value():
        text = str(int(value)) if value.is_finite() else ""
    elif isinstance(value, str):
        text = value
    else:
        raise ScopeViolation(f"identifier {name!r} is missing or not a string or integer")
    if not _SAFE_IDENTIFIER.fullmatch(text) or ".." in text or text == ".":
        raise ScopeViolation(f"identifier {name!r} is not a safe path token")
    return text


@dataclass(frozen=True, slots=True)
class Template:
    """An ``s3://bucket/...{name}...`` template. Built only through ``Template.parse``."""

    source: str
    bucket: str
    parts: tuple[tuple[str, str | None], ...]  # (literal, placeholder or None)

    @classmethod
    def parse(cls, source: str) -> Template:
        bucket = source.removeprefix(S3_SCHEME).partition("/")[0]
        if "{" in bucket or "}" in bucket:
            raise ScopeViolation("the bucket of a template must be literal")
        location = S3Location.parse(source)
        parts: list[tuple[str, str | None]] = []
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
                    f"{segment!r}: a {{placeholder}} must be a whole path segment, like /{{id}}/"
                )
            parts.append((literal, match.group(1)))
            literal = separator
        if literal:
            parts.append((literal, None))
        return cls(source=source, bucket=location.bucket, parts=tuple(parts))

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(field for _, field in self.parts if field is not None)

    def render(self, image: Image) -> S3Location:
        """Render over ``image``; ScopeViolation if an identifier is missing or unsafe."""
        key = "".join(literal + (identifier_text(f, image) if f else "") for literal, f in self.parts)
        return S3Location(bucket=self.bucket, key=key)


def check_in_scope(target: S3Location, scopes: Iterable[S3Location]) -> None:
    """Raise ScopeViolation unless ``target`` lies under one of ``scopes`` and has a clean key."""
    if has_unsafe_segments(target.key):
        raise ScopeViolation("key has empty, '.' or '..' segments or control characters")
    if not any(target.is_within(scope) for scope in scopes):
        raise ScopeViolation("target is outside the item's scope")


def render_all(templates: Iterable[Template], image: Mapping[str, object]) -> tuple[S3Location, ...]:
    return tuple(template.render(image) for template in templates)
