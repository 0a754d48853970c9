"""CPU and memory on in-memory fakes: no AWS, no network, only this process.

* The pure pipeline (decode, classify, resolve to a plan) per record, against the CPU botocore spends parsing
  the same records out of a GetRecords answer: the part of a record's cost that is ours, next to the part no
  Python client can avoid.
* RSS while the real consumer, processor and executor drain a long backlog on fakes, after ``warm`` records
  and at the end: what the worker keeps per record it has finished (it should keep nothing).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import botocore.session
import structlog
from botocore.parsers import create_parser
from prometheus_client import CollectorRegistry

from reconciler.batching import CoalescingArtifactStore, CoalescingItemStore
from reconciler.consumer import ShardConsumer
from reconciler.core.decide import decide
from reconciler.core.leases import Lease
from reconciler.core.plan import resolve
from reconciler.core.records import StreamRecord, decode_record
from reconciler.execution import Executor
from reconciler.observability.metrics import Metrics
from reconciler.ports import RecordsPage, Shard, StreamInfo
from reconciler.processing import Origin, RecordProcessor
from reconciler.rules import load_rules
from reconciler.settings import Settings
from reconciler.testing import FakeArtifactStore, FakeDeadLetterStore, FakeItemStore, FakeLeaseStore

DEMO_RULES = Path(__file__).parent.parent / "reconciler" / "demo" / "rules.toml"
ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/transcripts/stream/2026-01-01T00:00:00.000"


def wire_record(n: int) -> dict[str, Any]:
    """One REMOVE as it travels in a GetRecords answer (JSON, epoch seconds)."""
    transcript, account = f"tr-{n:07d}", f"acct-{n % 7}"
    return {
        "eventID": f"e{n}",
        "eventName": "REMOVE",
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "userIdentity": {"PrincipalId": "dynamodb.amazonaws.com", "Type": "Service"},
        "dynamodb": {
            "ApproximateCreationDateTime": 1_767_225_600 + n / 1000,
            "Keys": {"transcript_id": {"S": transcript}},
            "OldImage": {
                "transcript_id": {"S": transcript},
                "account_id": {"S": account},
                "expires_at": {"N": "1764000000"},
                "audio_url": {"S": f"s3://stt-uploads/{account}/{transcript}/audio.wav"},
                "language": {"S": "en-US"},
            },
            "SequenceNumber": f"{n + 1:021d}",
            "SizeBytes": 220,
            "StreamViewType": "NEW_AND_OLD_IMAGES",
        },
    }


@dataclass(frozen=True, slots=True)
class CpuFigures:
    records: int
    parse_seconds: float
    pipeline_seconds: float

    @property
    def ratio(self) -> float:
        return self.pipeline_seconds / self.parse_seconds


def cpu(records: int = 1000, rounds: int = 20) -> CpuFigures:
    """CPU per record: botocore parsing a GetRecords answer vs decode + classify + resolve of the result."""
    body = json.dumps({"Records": [wire_record(n) for n in range(records)]}).encode()
    model = botocore.session.get_session().get_service_model("dynamodbstreams")
    shape = model.operation_model("GetRecords").output_shape
    assert shape is not None  # noqa: S101 - GetRecords has an output
    parser = create_parser("json")
    table = load_rules(DEMO_RULES).compile().tables["transcripts"]
    parse = pipeline = 0.0
    for _ in range(rounds):
        start = time.process_time()
        parsed = parser.parse({"body": body, "headers": {}, "status_code": 200}, shape)
        parse += time.process_time() - start
        start = time.process_time()
        for raw in parsed["Records"]:
            record = decode_record(raw)
            if isinstance(record, StreamRecord) and record.old_image is not None:
                decide(record, table)
                resolve(table, record.old_image)
        pipeline += time.process_time() - start
    return CpuFigures(records * rounds, parse, pipeline)


class BacklogSource:
    """A stream of ``total`` REMOVE records made on demand, so the backlog itself takes no memory."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.shard = Shard(ARN, "shardId-1", None, closed=True)
        self.read = 0

    async def describe(self, table: str) -> StreamInfo:  # pragma: no cover - the consumer does not ask
        raise NotImplementedError(table)

    async def shards(self, stream_arn: str) -> list[Shard]:  # noqa: ARG002 - the protocol's signature
        return [self.shard]

    async def iterator(self, shard: Shard, after: str | None) -> str:  # noqa: ARG002 - one shard
        return str(int(after) if after else 0)

    async def children(self, shard: Shard) -> list[Shard]:  # pragma: no cover - the consumer does not ask
        raise NotImplementedError(shard.shard_id)

    async def records(self, iterator: str, limit: int) -> RecordsPage:
        start = int(iterator)
        end = min(start + limit, self.total)
        page: list[Mapping[str, object]] = []
        for n in range(start, end):
            raw = wire_record(n)
            raw["dynamodb"]["ApproximateCreationDateTime"] = (
                dt.datetime.fromtimestamp(  # as botocore parses it
                    raw["dynamodb"]["ApproximateCreationDateTime"], tz=dt.UTC
                )
            )
            page.append(raw)
        self.read = end
        return RecordsPage(page, None if end >= self.total else str(end))


class Checkpoints(FakeLeaseStore):
    """The fake's promise without its history list, which would grow with the run and not be the worker's."""

    async def checkpoint(self, lease: Lease, position: str) -> None:
        await super().checkpoint(lease, position)
        self.history.clear()


def rss_bytes() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * 4096


@dataclass(frozen=True, slots=True)
class MemoryFigures:
    records: int
    warm: int
    rss_after_warm: int
    rss_at_end: int
    seconds: float

    @property
    def growth(self) -> int:
        return self.rss_at_end - self.rss_after_warm


async def _drain(total: int, warm: int) -> MemoryFigures:
    spec = load_rules(DEMO_RULES).compile()
    metrics = Metrics(CollectorRegistry())
    # Wired as app.py wires the worker, so that the batching's own bookkeeping is measured too.
    items = CoalescingItemStore(FakeItemStore())
    executor = Executor(spec, CoalescingArtifactStore(FakeArtifactStore()), items, metrics)
    processor = RecordProcessor(
        rules=spec,
        executor=executor,
        dead_letters=FakeDeadLetterStore(),
        metrics=metrics,
        clock=lambda: dt.datetime.now(dt.UTC),
        items=items,
    )
    source = BacklogSource(total)
    settings = Settings.model_validate({"config": DEMO_RULES, "retry_backoff_seconds": 0.01})
    checkpoints = Checkpoints()
    consumer = ShardConsumer(
        origin=Origin("transcripts", ARN, "shardId-1"),
        lease=checkpoints.grant(ARN, source.shard.shard_id, "transcripts"),
        source=source,
        leases=checkpoints,
        processor=processor,
        metrics=metrics,
        settings=settings,
        clock=lambda: dt.datetime.now(dt.UTC),
    )
    task = asyncio.create_task(consumer.run())
    while source.read < warm:  # noqa: ASYNC110 - polling a counter the consumer moves
        await asyncio.sleep(0.01)
    after_warm = rss_bytes()
    start = time.monotonic()
    await task
    return MemoryFigures(total, warm, after_warm, rss_bytes(), time.monotonic() - start)


def memory(total: int = 200_000, warm: int = 10_000) -> MemoryFigures:
    # Logs at WARNING: the drain is about memory, not 200,000 `deletion.completed` lines.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    try:
        return asyncio.run(_drain(total, warm))
    finally:
        structlog.reset_defaults()
