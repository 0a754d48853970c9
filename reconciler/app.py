"""Wiring: settings and rules in, a ready-to-run ``Worker`` (with its AWS clients) out."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
from collections.abc import AsyncIterator, Callable

from botocore.exceptions import BotoCoreError, ClientError
from prometheus_client import REGISTRY, CollectorRegistry

from reconciler.adapters.accounts import DynamoDBAccountDirectory
from reconciler.adapters.aws import AwsClients, AwsSettings, Caller, RetryPolicy, translate
from reconciler.adapters.dynamodb import DynamoDBItemStore
from reconciler.adapters.keys import key_types
from reconciler.adapters.leases import DynamoDBLeaseStore
from reconciler.adapters.letters import DynamoDBDeadLetterStore
from reconciler.adapters.probes import AwsResourceProbe
from reconciler.adapters.receipts import DynamoDBReceiptStore
from reconciler.adapters.s3 import S3ArtifactStore
from reconciler.adapters.streams import DynamoDBStreamSource
from reconciler.adapters.sweep import DynamoDBExpiredItems, DynamoDBSweepPositions
from reconciler.adapters.tables import CHECKPOINTS, DEAD_LETTERS, create_table, create_worker_tables
from reconciler.age import AgeSweep, age_job
from reconciler.batching import CoalescingArtifactStore, CoalescingItemStore
from reconciler.core.parents import ParentIndex
from reconciler.core.reverse import reachable_tables
from reconciler.core.spec import RuleSet
from reconciler.execution import Executor
from reconciler.observability.metrics import Metrics
from reconciler.orphans import OrphanSweep, orphan_job
from reconciler.ports import ArtifactStore, DeadLetterStore, ItemStore
from reconciler.preflight import OwnTable, Preflight, requirements
from reconciler.processing import RecordProcessor
from reconciler.receipts import ReceiptWriter
from reconciler.rules import Rules
from reconciler.schedule import Scheduler
from reconciler.settings import Settings
from reconciler.shadow import ReadOnlyArtifacts, ReadOnlyItems, ShadowDeadLetters, ShadowReport
from reconciler.sweeper import ReadBudget, Sweeper, sweepable
from reconciler.worker import Collaborators, Worker


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _preflight(settings: Settings, spec: RuleSet, clients: AwsClients, call: Caller) -> Preflight:
    """The start-up checks; with ``create_tables``, the worker's tables are created first. A dry run's own
    table is its lease table alone, and it proves no delete grant: it writes to nothing else."""

    async def create() -> None:
        try:
            if settings.dry_run:
                keys = CHECKPOINTS
                await create_table(
                    clients.dynamodb, settings.lease_table, keys.attributes, keys.ttl_attribute, call=call
                )
            else:
                await create_worker_tables(
                    clients.dynamodb,
                    settings.checkpoint_table,
                    settings.dead_letter_table,
                    call,
                    receipts=settings.receipt_table,
                )
        except (BotoCoreError, ClientError) as exc:  # the waiter's own errors, as our tree says
            raise translate(exc) from exc

    own = {
        settings.checkpoint_table: OwnTable("checkpoint table"),
        settings.dead_letter_table: OwnTable(
            "dead-letter table", frozenset(index.name for index in DEAD_LETTERS.indexes)
        ),
        settings.receipt_table: OwnTable("receipt table"),
    }
    if settings.dry_run:
        own = {settings.lease_table: OwnTable("shadow checkpoint table")}
    return Preflight(
        requirements(
            spec,
            own,
            swept=[t for t in spec.sources if sweepable(spec.tables[t])] if _enforcing(settings) else (),
            scanned=ParentIndex.of(spec).linked if settings.orphan_sweep else (),
        ),
        AwsResourceProbe(clients.dynamodb, clients.streams, clients.s3, call, read_only=settings.dry_run),
        create_tables=create if settings.create_tables else None,
    )


def _one_shot(rules: Rules, registry: CollectorRegistry) -> tuple[RuleSet, Metrics, Caller]:
    """What a command that runs one sweep needs: the compiled rules, metrics and the retry policy."""
    spec = rules.compile()
    metrics = Metrics(registry)
    metrics.initialize(spec)
    return spec, metrics, Caller(RetryPolicy())


def worker_id(settings: Settings) -> str:
    """This replica's name in the lease table: ``worker_id`` (the pod name in Kubernetes), else host and
    process, so two workers on one host never share a name."""
    return settings.worker_id or f"{socket.gethostname()}-{os.getpid()}"


def _shadowed(
    settings: Settings, metrics: Metrics, artifacts: ArtifactStore, items: ItemStore, letters: DeadLetterStore
) -> tuple[ArtifactStore, ItemStore, DeadLetterStore, ShadowReport | None]:
    """A dry run's stores: the same reads, deletes refused, dead letters only logged and counted."""
    if not settings.dry_run:
        return artifacts, items, letters, None
    return (
        ReadOnlyArtifacts(artifacts),
        ReadOnlyItems(items),
        ShadowDeadLetters(metrics),
        ShadowReport(metrics),
    )


@contextlib.asynccontextmanager
async def build_worker(
    settings: Settings,
    rules: Rules,
    registry: CollectorRegistry | None = None,
    retry: RetryPolicy | None = None,
    aws: AwsSettings | None = None,
) -> AsyncIterator[Worker]:
    """Open the AWS clients, create the worker's tables if asked, and yield a wired ``Worker``."""
    # The process-wide registry by default, so process metrics and stamina's retry counter are exported too.
    spec = rules.compile()
    metrics = Metrics(registry if registry is not None else REGISTRY)
    metrics.initialize(spec)
    if settings.dry_run:
        metrics.initialize_shadow(spec)
    call = Caller(retry or RetryPolicy())
    aws = aws or AwsSettings.of(settings)
    async with AwsClients(aws) as clients:
        # A dry run deletes nothing: it writes and serves no receipt.
        receipts = None
        if not settings.dry_run:
            receipts = DynamoDBReceiptStore(
                clients.dynamodb, call, settings.receipt_table, settings.receipt_retention_days
            )
        async with _pipeline(settings, spec, metrics, clients, call, receipts) as processor:
            owner = worker_id(settings)
            leases = DynamoDBLeaseStore(
                clients.leases, call, settings.lease_table, owner, lease_seconds=settings.lease_seconds
            )
            sweeper = None
            if _enforcing(settings):
                sweeper = _sweeper(settings, spec, clients, call, processor, metrics, leases, owner)
            letters = DynamoDBDeadLetterStore(clients.dynamodb, call, settings.dead_letter_table)
            scheduler = _scheduler(settings, spec, clients, call, metrics, leases, owner)
            parts = Collaborators(
                source=DynamoDBStreamSource(
                    clients.dynamodb, clients.streams, call, settings.describe_stream_per_second
                ),
                leases=leases,
                processor=processor,
                metrics=metrics,
                owner=owner,
                dead_letters=None if settings.dry_run else letters,  # a dry run holds no letters to count
                preflight=_preflight(settings, spec, clients, call) if settings.preflight else None,
                receipts=receipts,
                sweeper=sweeper if sweeper is not None and sweeper.tables else None,
                scheduler=scheduler,
            )
            yield Worker(settings, spec, parts, clock=utcnow)


def _enforcing(settings: Settings) -> bool:
    """Whether the worker runs expiry enforcement, which deletes expired items: never in a dry run
    (``reconciler sweep --once --dry-run`` lists what it would enforce)."""
    return settings.enforce_expiry and not settings.dry_run


@contextlib.asynccontextmanager
async def _pipeline(  # noqa: PLR0917 - the processor's collaborators, passed through
    settings: Settings,
    spec: RuleSet,
    metrics: Metrics,
    clients: AwsClients,
    call: Caller,
    receipts: DynamoDBReceiptStore | None,
) -> AsyncIterator[RecordProcessor]:
    """The record processor on AWS; requests still being shared are sent and answered before it closes."""
    # Records in flight share DeleteObjects requests per bucket, and re-creation checks share
    # BatchGetItem requests per table.
    items = CoalescingItemStore(DynamoDBItemStore(clients.dynamodb, call))
    artifacts = CoalescingArtifactStore(S3ArtifactStore(clients.s3, call))
    letters = DynamoDBDeadLetterStore(clients.dynamodb, call, settings.dead_letter_table)
    artifact_store, item_store, dead_letters, shadow = _shadowed(settings, metrics, artifacts, items, letters)
    executor = Executor(
        spec, artifact_store, item_store, metrics, fanout=settings.record_fanout, dry_run=settings.dry_run
    )
    writer = None if receipts is None else ReceiptWriter(receipts, artifacts, items, spec, metrics, utcnow)
    try:
        yield RecordProcessor(
            rules=spec,
            executor=executor,
            dead_letters=dead_letters,
            metrics=metrics,
            clock=utcnow,
            items=item_store,
            receipts=writer,
            shadow=shadow,
        )
    finally:
        await artifacts.close()
        await items.close()


def _sweeper(  # noqa: PLR0917 - the sweeper's collaborators, passed through
    settings: Settings,
    spec: RuleSet,
    clients: AwsClients,
    call: Caller,
    processor: RecordProcessor,
    metrics: Metrics,
    leases: DynamoDBLeaseStore,
    owner: str,
) -> Sweeper:
    return Sweeper(
        settings=settings,
        rules=spec,
        found=DynamoDBExpiredItems(clients.dynamodb, call),
        positions=DynamoDBSweepPositions(clients.leases, call, settings.checkpoint_table),
        leases=leases,
        processor=processor,
        metrics=metrics,
        owner=owner,
        clock=utcnow,
    )


@contextlib.asynccontextmanager
async def build_sweeper(
    settings: Settings, rules: Rules, registry: CollectorRegistry, aws: AwsSettings | None = None
) -> AsyncIterator[Sweeper]:
    """A sweeper on AWS without a worker around it (``reconciler sweep --once``)."""
    spec, metrics, call = _one_shot(rules, registry)
    aws = aws or AwsSettings.of(settings)
    async with AwsClients(aws) as clients:
        receipts = DynamoDBReceiptStore(
            clients.dynamodb, call, settings.receipt_table, settings.receipt_retention_days
        )
        async with _pipeline(settings, spec, metrics, clients, call, receipts) as processor:
            owner = worker_id(settings)
            leases = DynamoDBLeaseStore(
                clients.leases, call, settings.checkpoint_table, owner, lease_seconds=settings.lease_seconds
            )
            yield _sweeper(settings, spec, clients, call, processor, metrics, leases, owner)


@contextlib.asynccontextmanager
async def build_orphan_sweep(
    settings: Settings,
    rules: Rules,
    registry: CollectorRegistry,
    aws: AwsSettings | None = None,
    clock: Callable[[], dt.datetime] = utcnow,
) -> AsyncIterator[OrphanSweep]:
    """An orphan sweep on AWS (``reconciler sweep --once --orphans``): the key types of every table the
    worker reads come from ``DescribeTable`` first; linked tables are Scanned under the sweeper's read
    budget."""
    spec, metrics, call = _one_shot(rules, registry)
    aws = aws or AwsSettings.of(settings)
    async with AwsClients(aws) as clients:
        yield await _orphan_sweep(settings, spec, clients, call, metrics, clock)


async def _orphan_sweep(  # noqa: PLR0917 - the sweep's collaborators, passed through
    settings: Settings,
    spec: RuleSet,
    clients: AwsClients,
    call: Caller,
    metrics: Metrics,
    clock: Callable[[], dt.datetime],
) -> OrphanSweep:
    """The orphan sweep on AWS; ``DescribeTable`` gives the key types of every table the worker reads. In a
    dry run its stores refuse deletes too, beside the sweep's own ``dry_run``."""
    artifacts: ArtifactStore = S3ArtifactStore(clients.s3, call)
    linked = DynamoDBItemStore(clients.dynamodb, call)  # reads only: the Scan of linked tables
    items: ItemStore = linked
    if settings.dry_run:
        artifacts, items = ReadOnlyArtifacts(artifacts), ReadOnlyItems(items)
    return OrphanSweep(
        spec,
        await key_types(clients.dynamodb, call, reachable_tables(spec)),
        artifacts,
        items,
        metrics,
        clock,
        dt.timedelta(seconds=settings.orphan_min_age_seconds),
        linked=linked,
        read_budget=ReadBudget(settings.sweep_read_units_per_second),
    )


def _scheduler(  # noqa: PLR0917 - the jobs' collaborators, passed through
    settings: Settings,
    spec: RuleSet,
    clients: AwsClients,
    call: Caller,
    metrics: Metrics,
    leases: DynamoDBLeaseStore,
    owner: str,
) -> Scheduler | None:
    """The worker's scheduled jobs, leased in its lease table (a dry run's own, in shadow mode); None
    without any."""

    async def orphans() -> OrphanSweep:
        return await _orphan_sweep(settings, spec, clients, call, metrics, utcnow)

    jobs = [orphan_job(settings, orphans)] if settings.orphan_sweep else []
    if settings.age_sweep and spec.age_rules:
        artifacts: ArtifactStore = S3ArtifactStore(clients.s3, call)
        if settings.dry_run:
            artifacts = ReadOnlyArtifacts(artifacts)
        accounts = DynamoDBAccountDirectory(clients.dynamodb, call)
        jobs.append(age_job(settings, AgeSweep(spec, artifacts, accounts, metrics, utcnow)))
    if not jobs:
        return None
    positions = DynamoDBSweepPositions(clients.leases, call, settings.lease_table)
    return Scheduler(jobs, leases, positions, metrics, settings, owner, utcnow)


@contextlib.asynccontextmanager
async def build_age_sweep(
    settings: Settings,
    rules: Rules,
    registry: CollectorRegistry,
    aws: AwsSettings | None = None,
    clock: Callable[[], dt.datetime] = utcnow,
) -> AsyncIterator[AgeSweep]:
    """The age rules' sweep on AWS (``reconciler sweep --once --age``)."""
    spec, metrics, call = _one_shot(rules, registry)
    aws = aws or AwsSettings.of(settings)
    async with AwsClients(aws) as clients:
        yield AgeSweep(
            spec,
            S3ArtifactStore(clients.s3, call),
            DynamoDBAccountDirectory(clients.dynamodb, call),
            metrics,
            clock,
        )
