"""Shared fixtures. Retries run without waiting in tests (stamina's testing mode)."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import logging
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import stamina
import structlog
from prometheus_client import CollectorRegistry

from reconciler.adapters.aws import AwsClients, AwsSettings, RetryPolicy
from reconciler.app import build_worker
from reconciler.consumer import ShardConsumer
from reconciler.core.spec import RuleSet
from reconciler.demo.layout import Layout
from reconciler.demo.moto_server import CREDENTIALS, REGION, moto_server, reset
from reconciler.execution import Executor
from reconciler.observability.metrics import Metrics
from reconciler.ports import ReceiptStore, Shard
from reconciler.processing import Origin, RecordProcessor
from reconciler.receipts import ReceiptWriter
from reconciler.redrive import Redriver
from reconciler.rules import Rules, load_rules
from reconciler.settings import Settings
from reconciler.testing import (
    FakeArtifactStore,
    FakeDeadLetterStore,
    FakeItemStore,
    FakeLeaseStore,
    FakeStreamSource,
    FixedClock,
    eventually,
    stream_record,
)

DEMO_RULES = Path(__file__).parent.parent / "reconciler" / "demo" / "rules.toml"


@pytest.fixture(autouse=True)
def _instant_retries() -> Iterator[None]:
    """Retries still happen (3 attempts) but without sleeping."""
    with stamina.set_testing(True, attempts=3):
        yield


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """Whatever a test configured (the demo sets its own level), the next one starts from the defaults."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quiet = {
        name: logging.getLogger(name).level for name in ("botocore", "aiobotocore", "urllib3", "s3transfer")
    }
    yield
    structlog.reset_defaults()
    root.handlers, root.level = handlers, level
    for name, previous in quiet.items():
        logging.getLogger(name).setLevel(previous)


@pytest.fixture(scope="session")
def endpoint() -> Iterator[str]:
    """One moto server on a free loopback port for the whole session; ``layout`` resets it per test."""
    with moto_server() as url:
        yield url


@pytest.fixture
async def layout(endpoint: str) -> AsyncIterator[Layout]:
    reset(endpoint)
    async with AwsClients(
        AwsSettings(region=REGION, endpoint_url=endpoint, credentials=CREDENTIALS)
    ) as clients:
        created = Layout(clients.s3, clients.dynamodb)
        await created.create()
        yield created


def worker_env(endpoint: str, **variables: str) -> dict[str, str]:
    """The environment of a ``reconciler run`` process on the moto server at ``endpoint``: the standard AWS
    variables, any free HTTP port, its own tables created, JSON logs; ``variables`` add ``RECONCILER_*``."""
    return {
        "PATH": os.environ["PATH"],
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": CREDENTIALS[0],
        "AWS_SECRET_ACCESS_KEY": CREDENTIALS[1],
        "AWS_DEFAULT_REGION": REGION,
        "RECONCILER_HTTP_PORT": "0",
        "RECONCILER_CREATE_TABLES": "true",
        "RECONCILER_LOG_JSON": "true",
        "RECONCILER_ORPHAN_SWEEP": "false",  # a test that wants it says so; the others list no bucket for it
        "RECONCILER_AGE_SWEEP": "false",  # likewise
        **{f"RECONCILER_{name.upper()}": value for name, value in variables.items()},
    }


def fast_settings(**overrides: object) -> Settings:
    """Settings for workers on fakes: quick polls and backoffs, any free port."""
    fast: dict[str, object] = {
        "config": DEMO_RULES,
        "http_port": 0,
        "idle_poll_seconds": 0.01,
        "max_idle_poll_seconds": 0.02,
        "retry_backoff_seconds": 0.01,
        "discovery_seconds": 0.05,
        "shutdown_grace_seconds": 2,
        "checkpoint_seconds": 0,
        "heartbeat_seconds": 0.02,
        "lease_seconds": 0.2,
    }
    return Settings.model_validate(fast | overrides)


@pytest.fixture(scope="session")
def rules() -> Rules:
    return load_rules(DEMO_RULES)


@dataclass
class World:
    """The pipeline wired to in-memory fakes."""

    rules: RuleSet
    artifacts: FakeArtifactStore
    items: FakeItemStore
    dead_letters: FakeDeadLetterStore
    registry: CollectorRegistry
    metrics: Metrics
    clock: FixedClock
    executor: Executor
    processor: RecordProcessor

    def sample(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def add_transcript(self, account: str, transcript: str, *, versions: int = 2) -> None:
        """A transcript's audio, files, speech outputs and LLM requests, as the demo lays them out."""
        own = f"{account}/{transcript}"
        self.artifacts.put("stt-uploads", f"{own}/audio.wav", versions)
        for name in ("transcript.json", "captions.vtt"):
            self.artifacts.put("stt-transcripts", f"{own}/{name}", versions)
        for kind in ("translation", "speaker_identification"):
            self.artifacts.put("stt-understanding", f"{own}/{kind}.json")
            self.items.put(
                "speech_outputs",
                {
                    "transcript_id": transcript,
                    "output_type": kind,
                    "account_id": account,
                    "output_url": f"s3://stt-understanding/{own}/{kind}.json",
                },
            )
        request = f"{transcript}-llm0"
        self.artifacts.put("stt-llm-gateway", f"{account}/{request}/input.json")
        self.items.put(
            "llm_requests",
            {
                "request_id": request,
                "transcript_id": transcript,
                "account_id": account,
                "input_url": f"s3://stt-llm-gateway/{account}/{request}/input.json",
            },
        )

    def image(self, account: str, transcript: str, expires_at: int = 1_764_000_000) -> dict[str, object]:
        return {
            "transcript_id": transcript,
            "account_id": account,
            "expires_at": decimal.Decimal(expires_at),
            "audio_url": f"s3://stt-uploads/{account}/{transcript}/audio.wav",
        }

    def redriver(self, *, dry_run: bool = False, receipts: ReceiptStore | None = None) -> Redriver:
        """A redrive over this world's letters and stores (deleting nothing in a ``dry_run``); with
        ``receipts`` it writes the items' receipts there."""
        executor = self.executor
        if dry_run:
            executor = Executor(self.rules, self.artifacts, self.items, self.metrics, dry_run=True)
        writer = None
        if receipts is not None:
            writer = ReceiptWriter(receipts, self.artifacts, self.items, self.rules, self.metrics, self.clock)
        return Redriver(
            rules=self.rules,
            store=self.dead_letters,
            executor=executor,
            items=self.items,
            metrics=self.metrics,
            clock=self.clock,
            dry_run=dry_run,
            receipts=writer,
        )

    def held_by(self, account: str, transcript: str) -> int:
        """Versions and items of one transcript still present."""
        versions = sum(
            1
            for bucket in self.artifacts.buckets.values()
            for v in bucket
            if v.key.startswith((f"{account}/{transcript}/", f"{account}/{transcript}-llm"))
        )
        items = sum(
            1
            for table in self.items.tables.values()
            for item in table
            if item.get("transcript_id") == transcript
        )
        return versions + items


@pytest.fixture
def world(rules: Rules) -> World:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    artifacts, items, dead_letters = FakeArtifactStore(), FakeItemStore(), FakeDeadLetterStore()
    clock = FixedClock(dt.datetime(2025, 11, 24, 16, 0, tzinfo=dt.UTC))
    spec = rules.compile()
    executor = Executor(spec, artifacts, items, metrics)
    processor = RecordProcessor(
        rules=spec, executor=executor, dead_letters=dead_letters, metrics=metrics, clock=clock, items=items
    )
    return World(spec, artifacts, items, dead_letters, registry, metrics, clock, executor, processor)


def consumer_for(  # noqa: PLR0917 - the consumer's collaborators
    world: World,
    source: FakeStreamSource,
    shard: Shard,
    checkpoints: FakeLeaseStore,
    settings: Settings,
    slots: asyncio.Semaphore | None = None,
) -> ShardConsumer:
    """A shard consumer of the `transcripts` stream wired to the world's processor, holding its lease."""
    return ShardConsumer(
        origin=Origin("transcripts", shard.stream_arn, shard.shard_id),
        lease=checkpoints.grant(shard.stream_arn, shard.shard_id, "transcripts"),
        source=source,
        leases=checkpoints,
        processor=world.processor,
        metrics=world.metrics,
        settings=settings,
        clock=world.clock,
        slots=slots,
    )


def closed_shard(world: World, removals: int) -> tuple[FakeStreamSource, Shard]:
    """A closed shard holding ``removals`` TTL removals, of transcripts tr-1, tr-2, ..."""
    source = FakeStreamSource()
    shard = source.add_shard("transcripts", "shardId-1", closed=True)
    for n in range(1, removals + 1):
        world.add_transcript("acct-1", f"tr-{n}")
        source.append(
            "shardId-1", stream_record(n, old_image=world.image("acct-1", f"tr-{n}"), identity="botocore")
        )
    return source, shard


async def until_scheduled_run(endpoint: str, settings: Settings, rules: Rules, job: str) -> CollectorRegistry:
    """Run a worker on the moto server until its scheduled ``job`` has succeeded once, then stop it; its
    metrics registry, to read what the run counted."""
    registry = CollectorRegistry()
    aws = AwsSettings(region=REGION, endpoint_url=endpoint, credentials=CREDENTIALS)
    runs = {"job": job, "outcome": "succeeded"}
    async with build_worker(settings, rules, registry, RetryPolicy(attempts=3), aws) as worker:
        task = asyncio.create_task(worker.run())
        try:
            await eventually(
                lambda: (registry.get_sample_value("reconciler_scheduled_runs_total", runs) or 0) >= 1,
                seconds=60,
            )
        finally:
            worker.handle_exit()
            await asyncio.wait_for(task, timeout=30)
    return registry
