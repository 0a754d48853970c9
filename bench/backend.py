"""The benchmark's backend process and the one dataset every contender deletes.

Each contender gets the same, freshly seeded data: ``n`` transcripts that the TTL service removes (each
with an audio upload and four transcript files in two versions, three speech outputs and two LLM requests
with their files: 17 object versions and 5 linked items) and ``live`` transcripts that must survive.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from typing import Any

from reconciler.adapters.aws import AwsClients, AwsSettings, Caller, RetryPolicy
from reconciler.adapters.leases import DynamoDBLeaseStore
from reconciler.adapters.streams import DynamoDBStreamSource
from reconciler.adapters.tables import create_worker_tables
from reconciler.core.leases import Lease
from reconciler.demo.layout import Layout, Transcript
from reconciler.demo.moto_server import CREDENTIALS, REGION, reset

VERSIONS_PER_TRANSCRIPT = 17
ITEMS_PER_TRANSCRIPT = 5  # 3 speech outputs and 2 LLM requests
ARTIFACTS_PER_TRANSCRIPT = VERSIONS_PER_TRANSCRIPT + ITEMS_PER_TRANSCRIPT
CHECKPOINTS, DEAD_LETTERS, RECEIPTS = "bench-checkpoints", "bench-dead-letters", "bench-receipts"
LATENCY = {"s3": 0.020, "dynamodb": 0.005, "streams": 0.005}
RAW = {"s3": 0.0, "dynamodb": 0.0, "streams": 0.0}


@dataclass(frozen=True, slots=True)
class Dataset:
    doomed: list[Transcript]
    live: list[Transcript]

    @classmethod
    def of(cls, n: int, live: int) -> Dataset:
        gone = [Transcript(f"acct-{i % 7}", f"tr-{i:06d}", 1_700_000_000) for i in range(n)]
        kept = [Transcript(f"acct-{i % 7}", f"live-{i:06d}", 4_000_000_000) for i in range(live)]
        return cls(gone, kept)

    @property
    def artifacts(self) -> int:
        return len(self.doomed) * ARTIFACTS_PER_TRANSCRIPT


class Backend:
    """``python -m bench.server`` in a process of its own, so that moto never shares a GIL with a client."""

    def __init__(self, *, s3_like_listing: bool) -> None:
        args = [sys.executable, "-m", "bench.server"] + (["--s3-like-listing"] if s3_like_listing else [])
        self._process = subprocess.Popen(  # noqa: S603 - our own module, fixed arguments
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self._process.stdout is not None  # noqa: S101
        line = self._process.stdout.readline()
        self.endpoint = f"http://127.0.0.1:{int(line.split()[1])}"
        self.s3_like_listing = s3_like_listing
        self.pid = self._process.pid

    def admin(self, command: str, body: object = None) -> Any:
        request = urllib.request.Request(  # noqa: S310 - loopback only
            f"{self.endpoint}/_bench/{command}", data=json.dumps(body or {}).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=600) as response:  # noqa: S310 - loopback only
            return json.loads(response.read())

    def close(self) -> None:
        if self._process.poll() is None:
            assert self._process.stdin is not None  # noqa: S101
            self._process.stdin.close()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()

    def aws(self) -> AwsSettings:
        return AwsSettings(
            region=REGION, endpoint_url=self.endpoint, credentials=CREDENTIALS, max_pool_connections=200
        )

    async def prepare(self, data: Dataset) -> tuple[str, str]:
        """Fresh tables and buckets, the dataset, the worker's tables with a checkpoint at the stream's end
        (so that every contender starts after the seeding's INSERTs); the stream ARN and shard id."""
        self.admin("latency", RAW)
        reset(self.endpoint)
        async with AwsClients(self.aws()) as clients:
            await Layout(clients.s3, clients.dynamodb).create()
            await create_worker_tables(clients.dynamodb, CHECKPOINTS, DEAD_LETTERS, receipts=RECEIPTS)
            self.admin("seed", {"transcripts": [[t.account_id, t.transcript_id, t.expires_at] for t in
                                                [*data.doomed, *data.live]]})  # fmt: skip
            call = Caller(RetryPolicy())
            source = DynamoDBStreamSource(clients.dynamodb, clients.streams, call)
            info = await source.describe("transcripts")
            (shard,) = await source.shards(info.arn)
            iterator: str | None = await source.iterator(shard, None)
            last = None
            while iterator is not None:
                page = await source.records(iterator, 1000)
                if not page.records:
                    break
                last = str(page.records[-1]["dynamodb"]["SequenceNumber"])  # type: ignore[index]
                iterator = page.next_iterator
            if last is not None:  # a free lease whose checkpoint is the seeding's last record
                leases = DynamoDBLeaseStore(clients.dynamodb, call, CHECKPOINTS, "bench")
                await leases.create(Lease(info.arn, shard.shard_id, "transcripts"))
                seeded = await leases.take(Lease(info.arn, shard.shard_id, "transcripts"), "bench")
                assert seeded is not None  # noqa: S101 - a fresh table
                await leases.checkpoint(seeded, last)
                await leases.release(seeded)
        return info.arn, shard.shard_id

    async def leftovers(self, data: Dataset) -> tuple[int, int]:
        """(artifacts of doomed transcripts still there, live transcripts with anything missing)."""
        self.admin("latency", RAW)
        async with AwsClients(self.aws()) as clients:
            layout = Layout(clients.s3, clients.dynamodb)
            left = sum([await layout.remaining(t) for t in data.doomed])
            expected = VERSIONS_PER_TRANSCRIPT + ITEMS_PER_TRANSCRIPT
            damaged = sum([await layout.remaining(t) != expected for t in data.live])
        return left, damaged
