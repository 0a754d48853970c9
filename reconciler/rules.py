"""The artifact rules: per table, what is linked to an item and where it may live.

Validated by pydantic when loaded, so a mistake is reported with the file and field before the worker starts.
``reconciler schema`` prints the JSON Schema of this file.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from reconciler.core.graph import find_cycle
from reconciler.core.scope import ScopeViolation, Template
from reconciler.errors import ConfigError

_Name = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_.-]+$")]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _template(source: str) -> str:
    try:
        Template.parse(source)
    except ScopeViolation as exc:
        raise ValueError(f"{source!r}: {exc}") from exc
    return source


class LinkRule(_Frozen):
    """Items of another table that belong to this one and are deleted with it, with their own artifacts."""

    table: _Name = Field(description="The linked table; it must have rules of its own under [tables].")
    attribute: str = Field(
        min_length=1,
        description="Attribute of the linked table to match: its partition key, or the index's.",
    )
    value_from: str = Field(min_length=1, description="Attribute of this item whose value is matched.")
    index: _Name | None = Field(default=None, description="Query this GSI instead of the table's own key.")


class TableRules(_Frozen):
    """What is linked to one item of a table, and the scope every linked S3 target must lie in."""

    key: tuple[str, ...] = Field(min_length=1, max_length=2, description="Key attributes: partition[, sort].")
    ttl_attribute: str | None = Field(default=None, description="The table's TTL attribute (epoch seconds).")
    scopes: tuple[str, ...] = Field(
        min_length=1,
        description="s3://bucket/prefix/ templates over the item's identifiers; every S3 target must lie"
        " under one. Each must end with '/' and contain at least one {placeholder}.",
    )
    object_attributes: tuple[str, ...] = Field(
        default=(),
        description="Attributes holding s3:// URIs of objects (a string, a list or a map of strings).",
    )
    prefixes: tuple[str, ...] = Field(
        default=(), description="s3://bucket/prefix/ templates: everything under them is deleted."
    )
    links: tuple[LinkRule, ...] = Field(default=(), description="Linked items in other tables.")

    @field_validator("scopes")
    @classmethod
    def _scopes_are_narrow(cls, scopes: tuple[str, ...]) -> tuple[str, ...]:
        for source in scopes:
            template = Template.parse(_template(source))
            if not template.fields or not source.endswith("/"):
                raise ValueError(f"scope {source!r} must end with '/' and contain a {{placeholder}}")
        return scopes

    @field_validator("prefixes")
    @classmethod
    def _prefixes_are_templates(cls, prefixes: tuple[str, ...]) -> tuple[str, ...]:
        for source in prefixes:
            if not _template(source).endswith("/"):
                raise ValueError(f"prefix {source!r} must end with '/'")
        return prefixes

    @model_validator(mode="after")
    def _scopes_name_the_item(self) -> Self:
        # A scope without the partition key is shared by many items: a tampered URI could reach a sibling.
        for template in self.prefix_templates():
            # Everything under a prefix is deleted: it must name the whole item, not a group of items.
            missing = [k for k in self.key if k not in template.fields]
            if missing:
                raise ValueError(
                    f"prefix {template.source!r} must contain every key attribute; missing {missing}"
                )
        for template in self.scope_templates():
            if self.key[0] not in template.fields:
                raise ValueError(
                    f"scope {template.source!r} must contain the partition key {{{self.key[0]}}}"
                )
        return self

    @model_validator(mode="after")
    def _prefixes_lie_in_a_scope(self) -> Self:
        for prefix in self.prefixes:
            if not any(prefix.startswith(scope) for scope in self.scopes):
                raise ValueError(f"prefix {prefix!r} does not start with any of the scopes")
        return self

    def scope_templates(self) -> tuple[Template, ...]:
        return tuple(Template.parse(s) for s in self.scopes)

    def prefix_templates(self) -> tuple[Template, ...]:
        return tuple(Template.parse(s) for s in self.prefixes)


class Rules(_Frozen):
    """The whole rules file."""

    buckets: tuple[str, ...] = Field(
        min_length=1,
        description="Every bucket the worker may delete from; all scopes must name one.",
    )
    sources: tuple[_Name, ...] = Field(
        min_length=1, description="Tables whose streams are read (NEW_AND_OLD_IMAGES or OLD_IMAGE)."
    )
    tables: dict[_Name, TableRules] = Field(description="Rules per table, sources and linked tables alike.")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        for name in self.sources:
            if name not in self.tables:
                raise ValueError(f"source table {name!r} has no rules under [tables]")
        for name, table in self.tables.items():
            for template in (*table.scope_templates(), *table.prefix_templates()):
                if template.bucket not in self.buckets:
                    raise ValueError(f"table {name!r}: bucket {template.bucket!r} is not in buckets")
            for link in table.links:
                if link.table not in self.tables:
                    raise ValueError(f"table {name!r} links to {link.table!r}, which has no rules")
        self._check_acyclic()
        return self

    def _check_acyclic(self) -> None:
        graph = {name: [link.table for link in table.links] for name, table in self.tables.items()}
        cycle = find_cycle(graph)
        if cycle is not None:
            raise ValueError(f"links form a cycle: {' -> '.join(cycle)}")


def load_rules(path: Path) -> Rules:
    """Read and validate a TOML rules file; ConfigError says what is wrong and where."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read rules file {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"rules file {path} is not UTF-8 text (byte {exc.start})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    try:
        return Rules.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path} is not a valid rules file:\n{exc}") from exc
