"""The ``[[age_rules]]`` of the rules file: validated by pydantic when loaded, compiled into
``core.spec.AgeRuleSpec``. ``reconciler.rules.Rules`` holds them and checks what needs the whole file (the
bucket is in ``buckets``, names are unique).

Refused at load time: a scope that does not end with '/', starts with a placeholder (the whole bucket) or
holds more than one placeholder (the account) or one of the parent's; a list of accounts without a
placeholder to match them; both an accounts table and an accounts file; a ``max_age`` that is not a positive
duration of at most a century.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator, model_validator

from reconciler.core.scope import ScopeViolation, Template
from reconciler.core.spec import AccountsFile, AccountsTable, AgeRuleSpec

_Name = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_.-]+$")]
_Attribute = Annotated[str, Field(min_length=1, max_length=255)]
_AGE = re.compile(r"([1-9][0-9]*)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_AGE_SECONDS = (
    100 * 366 * 86400
)  # a century: any longer is a typo, and overflows a datetime sooner or later


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def parse_scope(source: str) -> Template:
    try:
        return Template.parse(source)
    except ScopeViolation as exc:
        raise ValueError(f"{source!r}: {exc}") from exc


class AccountsTableRule(_Frozen):
    """A DynamoDB table whose items name the accounts an age rule applies to (read with a Scan that
    projects the attribute: ``dynamodb:Scan`` on the table)."""

    table: _Name
    attribute: _Attribute = Field(description="The attribute holding the account, as the scope renders it.")
    filter_attribute: _Attribute | None = Field(
        default=None, description="Only items whose filter_attribute equals filter_value."
    )
    filter_value: str | int | bool | None = None

    @model_validator(mode="after")
    def _filter_whole(self) -> Self:
        if (self.filter_attribute is None) != (self.filter_value is None):
            raise ValueError("filter_attribute and filter_value go together")
        return self

    def compile(self) -> AccountsTable:
        return AccountsTable(self.table, self.attribute, self.filter_attribute, self.filter_value)


class AgeRule(_Frozen):
    """Objects deleted by age alone, for the accounts listed (or for every object under the scope's static
    prefix when no list is given)."""

    name: _Name
    scope: str = Field(
        description="s3://bucket/static/{account}/ : one {placeholder} at most, a whole path segment, after a"
        " fixed first segment; the bucket must be in buckets."
    )
    max_age: str | StrictInt = Field(
        description="Objects whose newest version is older than this are deleted: seconds, or a number with"
        " a unit s, m, h or d ('1h', '30d')."
    )
    accounts_table: AccountsTableRule | None = None
    accounts_file: str | None = Field(
        default=None,
        min_length=1,
        description="A text file, one account a line ('#' starts a comment line); a relative path is read"
        " from the rules file's directory.",
    )

    @field_validator("scope")
    @classmethod
    def _scope_is_safe(cls, source: str) -> str:
        template = parse_scope(source)
        if not source.endswith("/"):
            raise ValueError(f"age scope {source!r} must end with '/'")
        if template.parent_fields:
            raise ValueError(f"age scope {source!r}: {{parent.*}} placeholders belong in a link's scopes")
        if len(template.placeholders) > 1:
            raise ValueError(f"age scope {source!r} may hold one {{placeholder}} only: the account")
        if not template.parts[0][0]:
            raise ValueError(
                f"age scope {source!r} must start with a fixed segment, like"
                f" s3://{template.bucket}/some-prefix/...: a scope without one is the whole bucket"
            )
        return source

    @field_validator("max_age")
    @classmethod
    def _positive_age(cls, value: str | int) -> str | int:
        if seconds(value) is None:
            raise ValueError(
                f"max_age {value!r} is not a positive number of seconds or like '1h', '30d'"
                " (at most a century)"
            )
        return value

    @model_validator(mode="after")
    def _one_list(self) -> Self:
        if self.accounts_table is not None and self.accounts_file is not None:
            raise ValueError(f"age rule {self.name!r}: accounts_table or accounts_file, not both")
        listed = self.accounts_table is not None or self.accounts_file is not None
        if listed and not parse_scope(self.scope).placeholders:
            raise ValueError(
                f"age rule {self.name!r} lists accounts, but its scope has no {{placeholder}} to match them"
            )
        return self

    @property
    def bucket(self) -> str:
        return parse_scope(self.scope).bucket

    def compile(self, base: Path | None) -> AgeRuleSpec:
        """The rule as the core's spec; a relative accounts file is read from ``base`` (the rules file's
        directory) when given."""
        accounts: AccountsTable | AccountsFile | None = None
        if self.accounts_table is not None:
            accounts = self.accounts_table.compile()
        elif self.accounts_file is not None:
            path = Path(self.accounts_file)
            accounts = AccountsFile(str(path if base is None or path.is_absolute() else base / path))
        age = seconds(self.max_age)
        assert age is not None  # noqa: S101 - checked by the validator
        return AgeRuleSpec(self.name, parse_scope(self.scope), age, accounts)


def seconds(value: str | int) -> int | None:
    """``max_age`` in seconds, or None if it is not a positive duration of at most a century."""
    if isinstance(value, int):
        found = value
    else:
        match = _AGE.fullmatch(value.strip())
        if match is None:
            return None
        found = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    return found if 0 < found <= MAX_AGE_SECONDS else None
