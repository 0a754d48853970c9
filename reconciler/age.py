"""The age sweep: delete objects by age alone, for the accounts an age rule lists.

Some artifacts follow an account's retention rather than an item: an LLM gateway's inputs and outputs kept an
hour for accounts that asked for it. For each age rule (``core.spec.AgeRuleSpec``) one pass reads the
accounts (a DynamoDB table through ``AccountDirectory``, or a file, read again on every pass), lists
``ListObjectVersions`` under each account's rendered prefix (or under the scope's static prefix when the rule
lists no accounts), and deletes every version and delete marker of each object whose newest version is older
than the rule's ``max_age``, by version id, at most 1,000 a request. ``core.age.decide`` checks each object
against the prefix it was listed under before anything is deleted; a version written after the listing
stays. A dry run lists only.

``AgeSweep.sweep`` is one pass over every rule; ``reconciler sweep --once --age`` runs it. Logs carry rule,
bucket, key and counts, never an item's content.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from reconciler.core.age import Prefix, Verdict, account_prefixes, decide, parse_accounts_file
from reconciler.core.spec import AccountsFile, AgeRuleSpec, RuleSet
from reconciler.errors import ConfigError, ReconcilerError
from reconciler.observability.metrics import Metrics
from reconciler.ports import AccountDirectory, ArtifactStore, ObjectVersion
from reconciler.schedule import Job
from reconciler.settings import Settings

log = structlog.get_logger("reconciler.age")

Clock = Callable[[], dt.datetime]
MAX_DELETE_VERSIONS = 1000  # DeleteObjects takes at most 1,000 keys


@dataclass(frozen=True, slots=True)
class AgedObject:
    """An object past its rule's age: its versions, and how old its newest one is."""

    rule: str
    bucket: str
    key: str
    versions: tuple[ObjectVersion, ...]
    age: dt.timedelta


@dataclass(slots=True)
class AgeReport:
    """What one pass saw and did. ``expired`` lists what was (or, in a dry run, would be) deleted."""

    rules: int = 0
    prefixes: int = 0
    pages: int = 0
    objects: int = 0
    expired: list[AgedObject] = field(default_factory=list)
    deleted: int = 0
    versions_deleted: int = 0
    young: int = 0
    kept: int = 0
    """Objects past their age kept anyway: outside their prefix, another account's, or refused by S3."""
    invalid_accounts: int = 0
    """Account values that cannot be a path segment, so render no prefix."""
    stopped: bool = False
    """The pass was stopped (SIGTERM, or its lease lost) before every prefix was listed."""


class AgeSweep:
    def __init__(
        self,
        rules: RuleSet,
        artifacts: ArtifactStore,
        accounts: AccountDirectory,
        metrics: Metrics,
        clock: Clock,
    ) -> None:
        self._rules = rules
        self._artifacts = artifacts
        self._accounts = accounts
        self._metrics = metrics
        self._clock = clock

    async def sweep(self, *, dry_run: bool, stopping: asyncio.Event | None = None) -> AgeReport:
        """One pass over every age rule; in a dry run, nothing is deleted. Once ``stopping`` is set, the pass
        ends before the next account's prefix (``report.stopped``). A rule that fails (an unreadable accounts
        file, a listing AWS refused) is logged and counted and the other rules still run; the pass then
        raises the first such error, so the run counts as failed."""
        report = AgeReport()
        halt = stopping or asyncio.Event()
        failed: list[ReconcilerError] = []
        for rule in self._rules.age_rules:
            if halt.is_set():
                report.stopped = True
                break
            report.rules += 1
            try:
                await self._rule(rule, report, halt, dry_run=dry_run)
            except ReconcilerError as exc:
                failed.append(exc)
                self._metrics.failures.labels("age", type(exc).__name__).inc()
                log.error("age.rule_failed", rule=rule.name, error=str(exc), error_type=type(exc).__name__)
        log.info(
            "age.swept",
            dry_run=dry_run,
            stopped=report.stopped,
            failed_rules=len(failed),
            rules=report.rules,
            prefixes=report.prefixes,
            pages=report.pages,
            objects=report.objects,
            expired=len(report.expired),
            deleted=report.deleted,
            versions_deleted=report.versions_deleted,
            young=report.young,
            kept=report.kept,
        )
        if failed:
            raise failed[0]
        return report

    async def _rule(
        self, rule: AgeRuleSpec, report: AgeReport, halt: asyncio.Event, *, dry_run: bool
    ) -> None:
        now = self._clock()
        for prefix in await self._prefixes(rule, report):
            if halt.is_set():
                report.stopped = True
                return
            report.prefixes += 1
            walk = _RuleWalk(self._artifacts, self._metrics, rule, prefix, now, report)
            await walk.run(dry_run=dry_run)

    async def _prefixes(self, rule: AgeRuleSpec, report: AgeReport) -> list[Prefix]:
        values = await self._account_values(rule)
        prefixes, refused = account_prefixes(rule, values)
        if refused:
            report.invalid_accounts += refused
            self._metrics.age_kept.labels(rule.name, "invalid_account").inc(refused)
            log.warning("age.accounts_refused", rule=rule.name, count=refused)
        if values is not None:
            log.info("age.accounts", rule=rule.name, accounts=len(prefixes))
        return prefixes

    async def _account_values(self, rule: AgeRuleSpec) -> list[object] | None:
        source = rule.accounts
        if source is None:
            return None
        if isinstance(source, AccountsFile):
            return list(await read_accounts_file(Path(source.path)))
        return [value async for value in self._accounts.accounts(source)]


def age_job(settings: Settings, sweep: AgeSweep) -> Job:
    """The age rules as the worker's scheduled job ``age``: every ``age_sweep_seconds``, one replica at a
    time; a dry run in shadow mode."""

    async def run(stopping: asyncio.Event) -> None:
        await sweep.sweep(dry_run=settings.dry_run, stopping=stopping)

    return Job("age", settings.age_sweep_seconds, run)


async def read_accounts_file(path: Path) -> list[str]:
    """The accounts listed in ``path``; ConfigError if it cannot be read."""
    try:
        text = await asyncio.to_thread(path.read_text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read accounts file {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"accounts file {path} is not UTF-8 text (byte {exc.start})") from exc
    return parse_accounts_file(text)


@dataclass(frozen=True, slots=True)
class _RuleWalk:
    """One rule's listing of one prefix, and the deletes it leads to."""

    _artifacts: ArtifactStore
    _metrics: Metrics
    _rule: AgeRuleSpec
    _prefix: Prefix
    _now: dt.datetime
    _report: AgeReport

    async def run(self, *, dry_run: bool) -> None:
        """List the prefix; a key's versions may run on to the next page, so the last key waits for it."""
        pending: dict[str, list[ObjectVersion]] = {}
        async for page in self._artifacts.list_versions(self._prefix.location, exact=False):
            self._report.pages += 1
            self._metrics.age_pages.labels(self._rule.name).inc()
            for version in page.versions:
                pending.setdefault(version.key, []).append(version)
            last = page.versions[-1].key if page.versions and page.more else None
            done = {k: v for k, v in pending.items() if k != last}
            pending = {last: pending[last]} if last is not None else {}
            await self._objects(done, dry_run=dry_run)
        await self._objects(pending, dry_run=dry_run)

    async def _objects(self, listed: dict[str, list[ObjectVersion]], *, dry_run: bool) -> None:
        expired = [
            aged for key, versions in listed.items() if (aged := self._judge(key, versions)) is not None
        ]
        for aged in expired:
            self._report.expired.append(aged)
            log.info(
                "age.expired",
                dry_run=dry_run,
                rule=self._rule.name,
                bucket=aged.bucket,
                key=aged.key,
                versions=len(aged.versions),
                age_seconds=int(aged.age.total_seconds()),
            )
        if not dry_run and expired:
            await self._delete(expired)

    def _judge(self, key: str, versions: Sequence[ObjectVersion]) -> AgedObject | None:
        """The object if it is to be deleted, else None (counted)."""
        self._report.objects += 1
        written = [v.last_modified for v in versions]
        verdict = decide(self._rule, self._prefix, key, written, self._now)
        if verdict is Verdict.YOUNG:
            self._report.young += 1
            return None
        if verdict is not Verdict.EXPIRED:
            self._report.kept += 1
            self._metrics.age_kept.labels(self._rule.name, verdict.value).inc()
            bucket = self._prefix.location.bucket
            log.warning("age.kept", rule=self._rule.name, bucket=bucket, key=key, reason=verdict.value)
            return None
        newest = max(when for when in written if when is not None)
        bucket = self._prefix.location.bucket
        return AgedObject(self._rule.name, bucket, key, tuple(versions), self._now - newest)

    async def _delete(self, expired: Sequence[AgedObject]) -> None:
        """Every version of each object, by version id, at most 1,000 a request."""
        bucket = self._prefix.location.bucket
        versions = [v for aged in expired for v in aged.versions]
        refused: set[str] = set()
        for start in range(0, len(versions), MAX_DELETE_VERSIONS):
            done = await self._artifacts.delete_versions(
                bucket, versions[start : start + MAX_DELETE_VERSIONS]
            )
            count = len(done.deleted) + len(done.absent)
            self._report.versions_deleted += count
            self._metrics.age_versions_deleted.labels(self._rule.name).inc(count)
            for version, code in done.refused:
                refused.add(version.key)
                log.warning("age.refused", rule=self._rule.name, bucket=bucket, key=version.key, code=code)
        for aged in expired:
            if aged.key in refused:
                self._report.kept += 1
                self._metrics.age_kept.labels(self._rule.name, "refused").inc()
                continue
            self._report.deleted += 1
            self._metrics.age_deletions.labels(self._rule.name).inc()
            log.info(
                "age.deleted", rule=self._rule.name, bucket=bucket, key=aged.key, versions=len(aged.versions)
            )
