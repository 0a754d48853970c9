"""Pre-flight: every resource the rules and settings name is checked before a single record is consumed.

A missing source table, a stream that is off or carries no old images, a missing bucket, linked table or
index, or a missing IAM grant is a deployment mistake: the worker names each one, in one line, and exits
with its own code (4) instead of discovering it one failed deletion at a time. Transient trouble (throttling,
a 5xx, a credentials service that is down) is not a mistake: the checks wait it out with backoff, for as long
as it lasts, and the worker never exits on a throttle.

What is checked (``reconciler/adapters/probes.py`` makes the calls, all read-only or refused by design):

- source tables: ``DescribeTable`` (exists, stream on, old images), the stream's ``DescribeStream``,
  ``GetShardIterator`` and ``GetRecords``, and ``BatchGetItem`` (the re-creation check); with expiry
  enforcement on, ``Scan`` (``Limit=1``) and the impossible conditional ``DeleteItem`` (below) too;
- linked tables: ``DescribeTable`` (exists, with every index a link names), ``Query`` on each, and
  ``DeleteItem`` with a condition that can never hold, so the grant is proven and nothing is deleted; with
  the orphan sweep on, ``Scan`` (``Limit=1``) of each linked table it reads;
- buckets: ``ListObjectVersions`` (``MaxKeys=1``) under each scope's (and each age rule's) static prefix: the
  bucket exists and the worker may list versions there;
- age rules' accounts tables: ``DescribeTable`` and a one-item ``Scan``;
- the worker's own tables, unless it creates them: ``DescribeTable``.

S3 deletion grants are not checked: S3 has no call that proves ``s3:DeleteObjectVersion`` without deleting.
A missing one shows as ``AccessError`` on the first deletion: the record waits (never dead-lettered) and
``reconciler_failures_total{error="AccessError"}`` rises.

The list of what to check is a pure function of the rules (``requirements``); the loop is ``Preflight``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from reconciler.core.reverse import outermost, reachable_tables, static_prefix, walk_roots
from reconciler.core.spec import AccountsTable, ExpiryIndex, RuleSet, TableSpec
from reconciler.errors import MissingCredentialsError, ReconcilerError

log = structlog.get_logger("reconciler.preflight")


@dataclass(frozen=True, slots=True, order=True)
class Problem:
    """One deployment mistake: the resource it concerns, and what is wrong with it."""

    resource: str
    detail: str

    def __str__(self) -> str:
        return f"{self.resource}: {self.detail}"


class PreflightError(ReconcilerError):
    """Resources the rules or settings name are missing, unusable or not permitted."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = tuple(sorted(set(problems)))
        count = len(self.problems)
        lines = "\n".join(f"  {problem}" for problem in self.problems)
        super().__init__(f"pre-flight found {count} problem{'s' if count != 1 else ''}:\n{lines}")


@dataclass(frozen=True, slots=True)
class OwnTable:
    """One of the worker's own tables: what it is for, and the indexes the worker queries."""

    role: str
    indexes: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Requirements:
    """What the worker will touch: the sources, each linked table with the indexes links query, each bucket
    with the static prefixes of its scopes, and the worker's own tables (name to role)."""

    sources: tuple[str, ...]
    linked: Mapping[str, frozenset[str]]
    buckets: Mapping[str, tuple[str, ...]]
    own_tables: Mapping[str, OwnTable] = field(default_factory=dict)
    swept: frozenset[str] = frozenset()
    tables: Mapping[str, TableSpec] = field(default_factory=dict)
    """The rules' tables: a swept source's expiry index is checked instead of a Scan."""
    """Sources whose expiry the sweeper enforces: Scan and DeleteItem are checked too."""
    scanned: frozenset[str] = frozenset()
    """Linked tables the orphan sweep reads whole: Scan is checked too."""
    accounts_tables: frozenset[str] = frozenset()
    """Tables the age rules read their accounts from (a Scan)."""


def requirements(
    rules: RuleSet,
    own_tables: Mapping[str, OwnTable] | None = None,
    swept: Iterable[str] = (),
    scanned: Iterable[str] = (),
) -> Requirements:
    """Every resource the rules can make the worker touch: the sources, the tables linked from them
    (directly or not), and the buckets of their scopes, each with the prefixes to list. Pure."""
    linked: dict[str, set[str]] = {}
    for name in reachable_tables(rules):
        for link in (link for entity in rules.tables[name].entities for link in entity.links):
            linked.setdefault(link.table, set()).update([link.index] if link.index else [])
    buckets = {bucket: list(prefixes) for bucket, prefixes in walk_roots(rules).items()}
    for rule in rules.age_rules:
        buckets.setdefault(rule.scope.bucket, []).append(static_prefix(rule.scope))
    return Requirements(
        sources=rules.sources,
        linked={table: frozenset(indexes) for table, indexes in sorted(linked.items())},
        buckets={bucket: outermost(prefixes) for bucket, prefixes in sorted(buckets.items())},
        own_tables=dict(own_tables or {}),
        swept=frozenset(swept),
        tables=rules.tables,
        scanned=frozenset(scanned),
        accounts_tables=frozenset(
            rule.accounts.table for rule in rules.age_rules if isinstance(rule.accounts, AccountsTable)
        ),
    )


class ResourceProbe(Protocol):
    """Read-only checks of one resource each: the problems found (empty when fine). Raises a retriable
    ``ReconcilerError`` when AWS could not answer (throttled, unavailable, no credentials yet)."""

    async def source(
        self, table: str, *, sweep: bool = False, index: ExpiryIndex | None = None, ttl: str | None = None
    ) -> list[Problem]: ...

    async def linked(self, table: str, indexes: frozenset[str], *, scan: bool = False) -> list[Problem]: ...

    async def bucket(self, bucket: str, prefixes: tuple[str, ...]) -> list[Problem]: ...

    async def own_table(self, table: str, own: OwnTable) -> list[Problem]: ...

    async def accounts_table(self, table: str) -> list[Problem]: ...


Check = Callable[[], Awaitable[list[Problem]]]


class Preflight:
    """Create the worker's tables if asked, then run every check; retriable failures are waited out."""

    def __init__(
        self,
        needs: Requirements,
        probe: ResourceProbe,
        *,
        create_tables: Callable[[], Awaitable[object]] | None = None,
        first_wait: float = 1.0,
        max_wait: float = 60.0,
    ) -> None:
        self._needs = needs
        self._probe = probe
        self._create_tables = create_tables
        self._first_wait = first_wait
        self._max_wait = max_wait

    def checks(self) -> dict[str, Check]:
        needs, probe = self._needs, self._probe
        checks: dict[str, Check] = {}
        for table in needs.sources:
            spec = needs.tables.get(table)
            checks[f"source table {table!r}"] = functools.partial(
                probe.source,
                table,
                sweep=table in needs.swept,
                index=spec.expiry_index if spec is not None else None,
                ttl=spec.ttl_attribute if spec is not None else None,
            )
        for table, indexes in needs.linked.items():
            checks[f"linked table {table!r}"] = functools.partial(
                probe.linked, table, indexes, scan=table in needs.scanned
            )
        for bucket, prefixes in needs.buckets.items():
            checks[f"bucket {bucket!r}"] = functools.partial(probe.bucket, bucket, prefixes)
        for table, own in needs.own_tables.items():
            checks[f"{own.role} {table!r}"] = functools.partial(probe.own_table, table, own)
        for table in sorted(needs.accounts_tables):
            checks[f"accounts table {table!r}"] = functools.partial(probe.accounts_table, table)
        return checks

    async def run(self, stopping: asyncio.Event, beat: Callable[[], None] = lambda: None) -> bool:
        """Check everything; False if ``stopping`` was set while waiting. Raises ``PreflightError``."""
        if self._create_tables is not None:
            created = await self._until_answered({"the worker's tables": self._created}, stopping, beat)
            if created is None:
                return False
        checks = self.checks()
        problems = await self._until_answered(dict(checks), stopping, beat)
        if problems is None:
            return False
        if problems:
            for problem in problems:
                log.error("preflight.problem", resource=problem.resource, detail=problem.detail)
            raise PreflightError(problems)
        log.info("preflight.passed", checks=len(checks))
        return True

    async def _created(self) -> list[Problem]:
        assert self._create_tables is not None  # noqa: S101 - only scheduled when set
        await self._create_tables()
        return []

    async def _until_answered(
        self, checks: dict[str, Check], stopping: asyncio.Event, beat: Callable[[], None]
    ) -> list[Problem] | None:
        """Run the checks, again and again for those AWS could not answer; None if stopped meanwhile."""
        problems: list[Problem] = []
        wait = self._first_wait
        while checks:
            names = list(checks)
            results = await asyncio.gather(*(checks[n]() for n in names), return_exceptions=True)
            waiting: dict[str, Check] = {}
            for name, result in zip(names, results, strict=True):
                if isinstance(result, MissingCredentialsError):  # nothing to wait for: none configured
                    problems.append(Problem("AWS credentials", f"{result} (none in the default chain)"))
                elif isinstance(result, ReconcilerError) and result.retriable:
                    waiting[name] = checks[name]
                    log.warning(
                        "preflight.waiting",
                        check=name,
                        error=str(result),
                        error_type=type(result).__name__,
                        wait=wait,
                    )
                elif isinstance(result, ReconcilerError):  # AWS refused for good: a problem of its own
                    problems.append(Problem(name, str(result)))
                elif isinstance(result, BaseException):
                    raise result
                else:
                    problems.extend(result)
            checks = waiting
            if checks:
                beat()  # waiting out a throttle is not a hang: liveness stays green
                try:
                    await asyncio.wait_for(stopping.wait(), timeout=wait)
                except TimeoutError:
                    pass
                else:
                    return None
                wait = min(wait * 2, self._max_wait)
        return problems
