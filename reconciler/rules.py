"""The artifact rules file: per table (and per entity type inside a table), what is linked to an item and
where it may live, and which removals cascade.

Validated by pydantic when loaded, so a mistake is reported with the file and field before the worker starts,
then compiled into the core's plain specs (``reconciler.core.spec``) with every template parsed once.
``reconciler schema`` prints the JSON Schema of this file. Files written for earlier releases load unchanged:
every key added since is optional.
"""

from __future__ import annotations

import decimal
import tomllib
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from reconciler.age_rules import AgeRule
from reconciler.core.classify import Cause
from reconciler.core.graph import find_cycle
from reconciler.core.scope import ScopeViolation, Template
from reconciler.core.spec import (
    CascadeSpec,
    EntitySpec,
    ExpiryIndex,
    IdentityCondition,
    ImageCondition,
    LinkSpec,
    RuleSet,
    ScopeMode,
    TableSpec,
)
from reconciler.errors import ConfigError

_Name = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_.-]+$")]
_Attribute = Annotated[str, Field(min_length=1, max_length=255)]
_Marker = Annotated[str, Field(min_length=1, max_length=255)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _template(source: str) -> Template:
    try:
        return Template.parse(source)
    except ScopeViolation as exc:
        raise ValueError(f"{source!r}: {exc}") from exc


def _own_templates(sources: tuple[str, ...], what: str) -> tuple[str, ...]:
    for source in sources:
        template = _template(source)
        if not source.endswith("/"):
            raise ValueError(f"{what} {source!r} must end with '/'")
        if template.parent_fields:
            raise ValueError(f"{what} {source!r}: {{parent.*}} placeholders belong in a link's scopes")
    return sources


class LinkRule(_Frozen):
    """Items of a table that belong to this one and are deleted with it, with their own artifacts."""

    table: _Name = Field(description="The linked table; it must have rules of its own under [tables].")
    attribute: _Attribute = Field(
        description="Attribute of the linked table to match: its partition key, or the index's."
    )
    value_from: _Attribute = Field(description="Attribute of this item whose value is matched.")
    index: _Name | None = Field(default=None, description="Query this GSI instead of the table's own key.")
    sort_attribute: _Attribute | None = Field(
        default=None,
        description="The sort key (of the table, or of the index) that sort_begins_with applies to.",
    )
    sort_begins_with: _Marker | None = Field(
        default=None,
        description="Only items whose sort key begins with this text (single-table design: 'OUTPUT#').",
    )
    entity: _Name | None = Field(
        default=None, description="Only items of this entity type of the linked table (see entities)."
    )
    scope: Literal["own", "parent", "both"] = Field(
        default="own",
        description="What the linked items' S3 targets are checked against: scopes rendered from their own"
        " identifiers ('own'), from this (the parent) item's ('parent': this link's scopes, or the parent's"
        " own scopes when it has none), or either ('both').",
    )
    scopes: tuple[str, ...] = Field(
        default=(),
        description="s3://bucket/prefix/ templates over the parent's identifiers, written {parent.NAME} or"
        " {parent.NAME|after:MARKER}, for scope 'parent' or 'both'.",
    )

    @field_validator("scopes")
    @classmethod
    def _parent_templates(cls, scopes: tuple[str, ...]) -> tuple[str, ...]:
        for source in scopes:
            template = _template(source)
            if not source.endswith("/") or not template.parent_fields or template.fields:
                raise ValueError(
                    f"link scope {source!r} must end with '/' and use only {{parent.NAME}} placeholders"
                )
        return scopes

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.sort_begins_with is not None and self.sort_attribute is None:
            raise ValueError("sort_begins_with needs sort_attribute")
        if self.scopes and self.scope == "own":
            raise ValueError("a link with scopes of its own needs scope = 'parent' or 'both'")
        return self

    def compile(self) -> LinkSpec:
        return LinkSpec(
            table=self.table,
            attribute=self.attribute,
            value_from=self.value_from,
            index=self.index,
            sort_attribute=self.sort_attribute,
            sort_prefix=self.sort_begins_with,
            entity=self.entity,
            scope=ScopeMode(self.scope),
            scopes=tuple(map(_template, self.scopes)),
        )


class MatchRule(_Frozen):
    """How an entity type is recognised: an attribute (usually the sort key) that begins with a marker."""

    attribute: _Attribute
    begins_with: _Marker


class _Artifacts(_Frozen):
    """What one kind of item points at: shared by a table's own rules and its entity types."""

    scopes: tuple[str, ...] = Field(
        default=(),
        description="s3://bucket/prefix/ templates over the item's identifiers ({NAME} or"
        " {NAME|after:MARKER}); every S3 target must lie under one. Each must end with '/' and contain the"
        " partition key. May be empty for items whose targets are checked against their parent's scopes"
        " (a link's scope).",
    )
    object_attributes: tuple[_Attribute, ...] = Field(
        default=(),
        description="Attributes holding s3:// URIs of objects (a string, a list or a map of strings).",
    )
    prefixes: tuple[str, ...] = Field(
        default=(),
        description="s3://bucket/prefix/ templates: everything under them is deleted. Each must name every"
        " key attribute and lie under one of the scopes.",
    )
    links: tuple[LinkRule, ...] = Field(default=(), description="Linked items, in this table or others.")

    @field_validator("scopes")
    @classmethod
    def _scopes_are_templates(cls, scopes: tuple[str, ...]) -> tuple[str, ...]:
        return _own_templates(scopes, "scope")

    @field_validator("prefixes")
    @classmethod
    def _prefixes_are_templates(cls, prefixes: tuple[str, ...]) -> tuple[str, ...]:
        return _own_templates(prefixes, "prefix")

    def check_names_item(self, key: tuple[str, ...]) -> None:
        # A scope without the partition key is shared by many items: a tampered URI could reach a sibling.
        for source in self.scopes:
            if key[0] not in _template(source).fields:
                raise ValueError(f"scope {source!r} must contain the partition key {{{key[0]}}}")
        for source in self.prefixes:
            # Everything under a prefix is deleted: it must name the whole item, not a group of items.
            missing = [k for k in key if k not in _template(source).fields]
            if missing:
                raise ValueError(f"prefix {source!r} must contain every key attribute; missing {missing}")
            if not any(source.startswith(scope) for scope in self.scopes):
                raise ValueError(f"prefix {source!r} does not start with any of the scopes")

    @property
    def has_s3_targets(self) -> bool:
        return bool(self.object_attributes or self.prefixes)

    def compile_entity(self, name: str, match: MatchRule | None = None) -> EntitySpec:
        return EntitySpec(
            name=name,
            scopes=tuple(map(_template, self.scopes)),
            object_attributes=self.object_attributes,
            prefixes=tuple(map(_template, self.prefixes)),
            links=tuple(link.compile() for link in self.links),
            match_attribute=match.attribute if match else None,
            match_prefix=match.begins_with if match else None,
        )

    def templates(self) -> tuple[Template, ...]:
        return (*map(_template, self.scopes), *map(_template, self.prefixes))


class EntityRules(_Artifacts):
    """One entity type of a single-table design, recognised by a key prefix."""

    match: MatchRule = Field(description="e.g. { attribute = 'SK', begins_with = 'TRANSCRIPT#' }")


class SkipRule(_Frozen):
    """A removal that must not cascade: an old-image attribute that equals (or does not equal) a value, or
    a stream record's userIdentity."""

    attribute: _Attribute | None = None
    equals: str | int | bool | None = None
    not_equals: str | int | bool | None = None
    principal: str | None = Field(default=None, description="userIdentity principalId, e.g. an admin role.")
    type: str | None = Field(default=None, description="userIdentity type, e.g. 'Service'.")

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        on_image = self.attribute is not None
        compared = (self.equals is not None) + (self.not_equals is not None)
        on_identity = self.principal is not None or self.type is not None
        if on_image == on_identity or (on_image and compared != 1) or (on_identity and compared):
            raise ValueError(
                "a skip condition is either {attribute, equals} or {attribute, not_equals},"
                " or {principal and/or type} of userIdentity"
            )
        return self

    def compile(self) -> ImageCondition | IdentityCondition:
        if self.attribute is None:
            return IdentityCondition(self.principal, self.type)
        given = self.equals if self.equals is not None else self.not_equals
        # Numbers in decoded images are Decimals.
        value = decimal.Decimal(given) if isinstance(given, int) and not isinstance(given, bool) else given
        return ImageCondition(self.attribute, value, negate=self.not_equals is not None)


class CascadeRules(_Frozen):
    """Which removals of a source table delete what is linked. Default: every cause, no skip."""

    causes: tuple[Literal["ttl", "expired", "requested"], ...] = Field(
        default=("ttl", "expired", "requested"),
        min_length=1,
        description="Causes that cascade: 'ttl', 'expired', 'requested'.",
    )
    skip: tuple[SkipRule, ...] = Field(
        default=(),
        description="Removals matching any of these are counted (outcome 'filtered') and delete nothing:"
        " a data migration's marker, an admin role's deletions.",
    )

    def compile(self) -> CascadeSpec:
        conditions = [rule.compile() for rule in self.skip]
        return CascadeSpec(
            causes=frozenset(Cause(c) for c in self.causes),
            skip_images=tuple(c for c in conditions if isinstance(c, ImageCondition)),
            skip_identities=tuple(c for c in conditions if isinstance(c, IdentityCondition)),
        )


class ExpiryIndexRule(_Frozen):
    """A sparse GSI whose sort key is the TTL attribute: the sweeper Queries it per partition value."""

    name: _Name = Field(description="The index name.")
    partition_attribute: _Attribute = Field(description="The index's partition key.")
    partition_values: tuple[str | int, ...] = Field(
        min_length=1,
        max_length=1000,
        description="Every value the partition key takes (each a sweep segment: one lease, one Query).",
    )

    @model_validator(mode="after")
    def _distinct(self) -> Self:
        if len(set(self.partition_values)) != len(self.partition_values):
            raise ValueError(f"expiry index {self.name!r}: partition_values repeat a value")
        return self

    def compile(self) -> ExpiryIndex:
        return ExpiryIndex(self.name, self.partition_attribute, self.partition_values)


class TableRules(_Artifacts):
    """What is linked to one item of a table, the scope every linked S3 target must lie in, and (for
    single-table designs) entity types with rules of their own."""

    key: tuple[_Attribute, ...] = Field(
        min_length=1, max_length=2, description="Key attributes: partition[, sort]."
    )
    ttl_attribute: _Attribute | None = Field(
        default=None, description="The table's TTL attribute (epoch seconds)."
    )
    entities: dict[_Name, EntityRules] = Field(
        default_factory=dict,
        description="Entity types in this table, tried in order; an item matching none uses the table's"
        " own rules above.",
    )
    cascade: CascadeRules = Field(default_factory=CascadeRules, description="Which removals cascade.")
    expiry_index: ExpiryIndexRule | None = Field(
        default=None,
        description="A sparse GSI (partition key with known values, sort key the TTL attribute) the sweeper"
        " Queries instead of Scanning the table: it reads only the items that are due.",
    )
    created_attribute: _Attribute | None = Field(
        default=None,
        description="When an item was written: a Number of epoch seconds or an ISO 8601 string with a time"
        " zone. Only on a linked table: the orphan sweep deletes its items whose parents are all gone only"
        " once they are older than orphan_min_age_seconds by it, and keeps those without one.",
    )

    @model_validator(mode="after")
    def _expiry_index_sorts_by_ttl(self) -> Self:
        index = self.expiry_index
        if index is not None and self.ttl_attribute is None:
            raise ValueError(f"expiry index {index.name!r} needs the table's ttl_attribute (its sort key)")
        if index is not None and index.partition_attribute == self.ttl_attribute:
            raise ValueError(f"expiry index {index.name!r}: its partition key cannot be the TTL attribute")
        return self

    @model_validator(mode="after")
    def _scopes_name_the_item(self) -> Self:
        self.check_names_item(self.key)
        for entity in self.entities.values():
            entity.check_names_item(self.key)
        return self

    @model_validator(mode="after")
    def _prefixes_of_kinds_never_meet(self) -> Self:
        """Everything under a prefix is deleted, so two kinds' prefix templates must not be able to render
        the same (or a nested) prefix: `x/{SK|after:A#}/` and `x/{SK|after:B#}/` both render `x/1/`."""
        found = [(kind, _template(p)) for kind, rules in self.kinds().items() for p in rules.prefixes]
        for n, (kind, first) in enumerate(found):
            for other, second in found[n + 1 :]:
                same = first.source == second.source and not _has_parts(first)
                if kind != other and first.bucket == second.bucket and not same and _can_meet(first, second):
                    raise ValueError(
                        f"prefixes {first.source!r} and {second.source!r} could render the same prefix for"
                        " items of two kinds; give them different literal segments"
                    )
        return self

    def kinds(self) -> dict[str, _Artifacts]:
        """The entity types, then the table's own rules (named "")."""
        return {**self.entities, "": self}

    def all_links(self) -> list[LinkRule]:
        return [link for rules in self.kinds().values() for link in rules.links]

    def scope_templates(self) -> list[Template]:
        """Every scope any item of this table can be checked against: its kinds' own, and those its links
        hand on to their linked items."""
        own = [_template(s) for rules in self.kinds().values() for s in rules.scopes]
        return own + [_template(s) for link in self.all_links() for s in link.scopes]

    def compile(self, name: str) -> TableSpec:
        entities = [e.compile_entity(n, e.match) for n, e in self.entities.items()]
        if not self.entities or self.scopes or self.has_s3_targets or self.links:
            entities.append(self.compile_entity(""))
        return TableSpec(
            name=name,
            key=self.key,
            ttl_attribute=self.ttl_attribute,
            entities=tuple(entities),
            cascade=self.cascade.compile(),
            created_attribute=self.created_attribute,
            expiry_index=self.expiry_index.compile() if self.expiry_index is not None else None,
        )


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
    age_rules: tuple[AgeRule, ...] = Field(
        default=(),
        description="Objects deleted by age for listed accounts (reconciler sweep --once --age).",
    )
    _compiled: RuleSet | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> Self:
        for name in self.sources:
            if name not in self.tables:
                raise ValueError(f"source table {name!r} has no rules under [tables]")
        for name, table in self.tables.items():
            for kind, rules in table.kinds().items():
                self._check_kind(name, table, kind, rules)
        self._check_own_scopes()
        self._check_acyclic()
        self._check_created_attributes()
        self._check_age_rules()
        base = (info.context or {}).get("base") if info is not None else None
        self._compiled = RuleSet.of(
            frozenset(self.buckets),
            self.sources,
            {n: t.compile(n) for n, t in self.tables.items()},
            tuple(rule.compile(base) for rule in self.age_rules),
        )
        return self

    def _check_age_rules(self) -> None:
        names = [rule.name for rule in self.age_rules]
        for rule in self.age_rules:
            if names.count(rule.name) > 1:
                raise ValueError(f"two age rules are named {rule.name!r}")
            if rule.bucket not in self.buckets:
                raise ValueError(f"age rule {rule.name!r}: bucket {rule.bucket!r} is not in buckets")

    def _check_kind(self, name: str, table: TableRules, kind: str, rules: _Artifacts) -> None:
        where = f"table {name!r}" + (f" entity {kind!r}" if kind else "")
        templates = [*rules.templates(), *(t for link in rules.links for t in map(_template, link.scopes))]
        for template in templates:
            if template.bucket not in self.buckets:
                raise ValueError(f"{where}: bucket {template.bucket!r} is not in buckets")
        for link in rules.links:
            target = self.tables.get(link.table)
            if target is None:
                raise ValueError(f"{where} links to {link.table!r}, which has no rules")
            if link.entity is not None and link.entity not in target.entities:
                raise ValueError(
                    f"{where} links to entity {link.entity!r}, which {link.table!r} does not have"
                )
            if (
                link.sort_attribute is not None
                and link.index is None
                and link.sort_attribute != target.key[-1]
            ):
                raise ValueError(
                    f"{where}: sort_attribute {link.sort_attribute!r} is not {link.table!r}'s sort key"
                )
            for source in link.scopes:
                if table.key[0] not in _template(source).parent_fields:
                    raise ValueError(f"link scope {source!r} must contain the parent's partition key")
            if link.scope != "own" and not link.scopes and not self._has_scopes(name, kind, rules):
                raise ValueError(
                    f"{where}: the link to {link.table!r} hands on this item's scopes, but it has none;"
                    " give the link scopes of its own"
                )

    def _has_scopes(
        self, table: str, kind: str, rules: _Artifacts, seen: frozenset[str] = frozenset()
    ) -> bool:
        """Whether items of this kind have scopes at run time: their own, or their parents' through links that
        all hand theirs on (followed up the chain; a cycle hands on nothing, and is refused elsewhere)."""
        if rules.scopes:
            return True
        node = _node(table, kind)
        if table in self.sources or node in seen:
            return False
        links = self._links_into(table, kind)
        return bool(links) and all(
            link.scope != "own" and bool(link.scopes or self._has_scopes(name, k, r, seen | {node}))
            for name, k, r, link in links
        )

    def _links_into(self, table: str, kind: str) -> list[tuple[str, str, _Artifacts, LinkRule]]:
        """Every link that reaches items of ``kind`` in ``table``, with the table and kind it starts from."""
        return [
            (name, k, r, link)
            for name, t in self.tables.items()
            for k, r in t.kinds().items()
            for link in r.links
            if link.table == table and (link.entity is None or link.entity == kind)
        ]

    def _check_own_scopes(self) -> None:
        """Items with S3 targets need scopes: their own, or their parent's through every link into them."""
        for name, table in self.tables.items():
            for kind, rules in table.kinds().items():
                if rules.scopes or not rules.has_s3_targets:
                    continue
                where = f"table {name!r}" + (f" entity {kind!r}" if kind else "")
                if name in self.sources:
                    raise ValueError(f"{where} has S3 targets but no scopes (a source has no parent)")
                links = [link for *_, link in self._links_into(name, kind)]
                if rules.prefixes or not links or any(link.scope == "own" for link in links):
                    raise ValueError(
                        f"{where} has S3 targets but no scopes: give it scopes, or link to it only with"
                        " scope = 'parent' or 'both' (prefixes always need scopes of their own)"
                    )

    def _check_created_attributes(self) -> None:
        """A created attribute dates linked items for the orphan sweep: a table nothing links to has none to
        date, and a TTL attribute is when an item expires, not when it was written."""
        linked = {link.table for table in self.tables.values() for link in table.all_links()}
        for name, table in self.tables.items():
            if table.created_attribute is None:
                continue
            if name not in linked:
                raise ValueError(f"table {name!r}: created_attribute dates linked items; nothing links here")
            if table.created_attribute == table.ttl_attribute:
                raise ValueError(f"table {name!r}: created_attribute cannot be the TTL attribute")

    def _check_acyclic(self) -> None:
        """Entity types are the nodes: a link within one table from one type to another is not a cycle."""
        graph: dict[str, list[str]] = {}
        for name, table in self.tables.items():
            for kind, rules in table.kinds().items():
                targets = []
                for link in rules.links:
                    kinds = [link.entity] if link.entity else list(self.tables[link.table].kinds())
                    targets += [_node(link.table, k) for k in kinds]
                graph[_node(name, kind)] = targets
        cycle = find_cycle(graph)
        if cycle is not None:
            raise ValueError(f"links form a cycle: {' -> '.join(cycle)}")

    def compile(self) -> RuleSet:
        """The rules as the core's immutable specs (compiled once, when the file was validated)."""
        assert self._compiled is not None  # noqa: S101 - set by the validator of every instance
        return self._compiled


def _shape(template: Template) -> list[str | None]:
    """The key's segments: literal text, or None for a placeholder."""
    shape: list[str | None] = []
    for literal, placeholder in template.parts:
        shape += [segment for segment in literal.split("/") if segment]
        if placeholder is not None:
            shape.append(None)
    return shape


def _can_meet(first: Template, second: Template) -> bool:
    """Whether some rendering of one could equal, or lie under, some rendering of the other."""
    return all(a is None or b is None or a == b for a, b in zip(_shape(first), _shape(second), strict=False))


def _has_parts(template: Template) -> bool:
    return any(p.after is not None for p in template.placeholders)


def _node(table: str, kind: str) -> str:
    return f"{table}.{kind}" if kind else table


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
        return Rules.model_validate(data, context={"base": path.parent})
    except ValidationError as exc:
        raise ConfigError(f"{path} is not a valid rules file:\n{exc}") from exc
