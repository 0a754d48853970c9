"""The three contenders, each deleting the same dataset after the same TTL removals.

* ``reconciler``: the real worker process (``python -m reconciler run``), timed by its own log events. It is
  wired by ``reconciler.app``: records in flight share ``DeleteObjects`` (per bucket) and ``BatchGetItem``
  (re-creation checks) requests, and each record runs its steps ``record_fanout`` at once.
* ``peer``: the usual Lambda pattern, aws-lambda-powertools' ``BatchProcessor`` for DynamoDB Streams with a
  boto3 record handler, fed as an event source mapping would (up to 1,000 records a poll, one batch at a time,
  partial batch responses, retry from the first failed sequence number). The handler does the same work as
  the worker, so that both end with every version gone: it lists each linked object's versions and deletes
  them one ``delete_object`` at a time, queries the linked tables and deletes each item with ``delete_item``.
* ``ceiling``: the tightest client loop for the same work knowing the answer: GetRecords at 1,000, one
  listing per prefix, DeleteObjects at 1,000 keys across items, BatchWriteItem at 25, everything at once;
  no planning, no checkpoints, no metrics.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord
from botocore.config import Config

from bench.backend import CHECKPOINTS, DEAD_LETTERS, RECEIPTS, Backend, Dataset
from reconciler.adapters.aws import AwsClients
from reconciler.demo.layout import LLM, TRANSCRIPTS, UNDERSTANDING, UPLOADS, Transcript
from reconciler.demo.moto_server import CREDENTIALS, REGION

DEMO_RULES = Path(__file__).parent.parent / "reconciler" / "demo" / "rules.toml"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(slots=True)
class Run:
    """What one contender did: wall time from the removals to the last artifact gone, per-item completion
    times after their stream records, requests by operation, CPU seconds of the deleting process."""

    name: str
    seconds: float = 0.0
    item_seconds: list[float] = field(default_factory=list)
    requests: dict[str, int] = field(default_factory=dict)
    cpu_seconds: float = 0.0
    records: int = 0


def cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


# --- the reconciler ------------------------------------------------------------------------------------


def run_reconciler(
    backend: Backend,
    data: Dataset,
    delays: dict[str, float],
    concurrency: int,
    profile: Path | None = None,
) -> Run:
    """The worker process; with ``profile``, under pyinstrument, which writes its hot spots there at exit."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "AWS_ENDPOINT_URL": backend.endpoint,
        "AWS_ACCESS_KEY_ID": CREDENTIALS[0],
        "AWS_SECRET_ACCESS_KEY": CREDENTIALS[1],
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
        "RECONCILER_CONFIG": str(DEMO_RULES),
        "RECONCILER_HTTP_PORT": "0",
        "RECONCILER_LOG_JSON": "true",
        "RECONCILER_CHECKPOINT_TABLE": CHECKPOINTS,
        "RECONCILER_DEAD_LETTER_TABLE": DEAD_LETTERS,
        "RECONCILER_RECEIPT_TABLE": RECEIPTS,
        "RECONCILER_IDLE_POLL_SECONDS": "0.05",
        "RECONCILER_MAX_IDLE_POLL_SECONDS": "0.1",
        "RECONCILER_RETRY_BACKOFF_SECONDS": "0.2",
        "RECONCILER_CONCURRENCY": str(concurrency),
    }
    command = [sys.executable, "-m", "reconciler", "run"]
    if profile is not None:
        command[1:1] = ["-m", "pyinstrument", "--renderer", "text", "--outfile", str(profile)]
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)  # noqa: S603 - our module
    events: list[dict[str, Any]] = []
    started, done = threading.Event(), threading.Event()

    def read() -> None:
        assert process.stderr is not None  # noqa: S101
        for line in process.stderr:
            event = json.loads(line)
            if event["event"] == "shard.started":
                started.set()
            if event["event"] == "deletion.completed":
                events.append(event)
                if len(events) >= len(data.doomed):
                    done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if not started.wait(60):
            raise RuntimeError("the worker did not start")
        time.sleep(0.5)  # its first, empty polls
        backend.admin("latency", delays)
        backend.admin("counts")
        cpu = cpu_of(process.pid)
        t0 = time.time()
        backend.admin("ttl-delete", {"transcripts": [t.transcript_id for t in data.doomed]})
        if not done.wait(1800):
            raise RuntimeError(f"the worker finished {len(events)} of {len(data.doomed)} deletions")
        cpu = cpu_of(process.pid) - cpu
        requests = backend.admin("counts")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        reader.join(timeout=10)
    end = max(dt.datetime.fromisoformat(e["timestamp"]).timestamp() for e in events)
    lags = [float(e["pipeline_lag_seconds"]) for e in events]
    return Run("reconciler", end - t0, lags, requests, cpu, len(events))


# --- the peer: Powertools BatchProcessor with a boto3 handler --------------------------------------------


class Peer:
    """An event source mapping's loop around a Powertools batch handler: one batch at a time."""

    def __init__(self, backend: Backend) -> None:
        config = Config(retries={"mode": "standard", "max_attempts": 5}, max_pool_connections=10)
        common: dict[str, Any] = {
            "endpoint_url": backend.endpoint,
            "region_name": REGION,
            "aws_access_key_id": CREDENTIALS[0],
            "aws_secret_access_key": CREDENTIALS[1],
            "config": config,
        }
        self.s3 = boto3.client("s3", **common)
        self.dynamodb = boto3.client("dynamodb", **common)
        self.streams = boto3.client("dynamodbstreams", **common)
        self.processor = BatchProcessor(event_type=EventType.DynamoDBStreams)
        self.completed: list[float] = []

    def handle(self, record: DynamoDBRecord) -> None:
        """The usual handler: for a REMOVE, every file of the old image and every linked item."""
        if record.event_name is None or record.event_name.name != "REMOVE":
            return
        image = record.dynamodb.old_image if record.dynamodb else None
        if not image:
            return
        transcript, account = str(image["transcript_id"]), str(image["account_id"])
        self._delete_versions(UPLOADS, f"{account}/{transcript}/audio.wav")
        self._delete_versions(TRANSCRIPTS, f"{account}/{transcript}/")
        outputs = self.dynamodb.query(
            TableName="speech_outputs",
            KeyConditionExpression="transcript_id = :t",
            ExpressionAttributeValues={":t": {"S": transcript}},
        )
        for item in outputs["Items"]:
            self._delete_versions(UNDERSTANDING, item["output_url"]["S"].split("/", 3)[3])
            key = {"transcript_id": item["transcript_id"], "output_type": item["output_type"]}
            self.dynamodb.delete_item(TableName="speech_outputs", Key=key)
        requests = self.dynamodb.query(
            TableName="llm_requests",
            IndexName="by_transcript",
            KeyConditionExpression="transcript_id = :t",
            ExpressionAttributeValues={":t": {"S": transcript}},
        )
        for entry in requests["Items"]:
            self._delete_versions(LLM, f"{account}/{entry['request_id']['S']}/")
            self.dynamodb.delete_item(TableName="llm_requests", Key={"request_id": entry["request_id"]})
        created = record.dynamodb.approximate_creation_date_time if record.dynamodb else None
        self.completed.append(time.time() - float(created or 0))

    def _delete_versions(self, bucket: str, prefix: str) -> None:
        listed = self.s3.list_object_versions(Bucket=bucket, Prefix=prefix)
        for entry in [*listed.get("Versions", []), *listed.get("DeleteMarkers", [])]:
            self.s3.delete_object(Bucket=bucket, Key=entry["Key"], VersionId=entry["VersionId"])

    def lambda_event(self, records: Sequence[dict[str, Any]], arn: str) -> dict[str, Any]:
        converted = []
        for raw in records:
            body = dict(raw["dynamodb"])
            body["ApproximateCreationDateTime"] = body["ApproximateCreationDateTime"].timestamp()
            converted.append({**raw, "dynamodb": body, "eventSourceARN": arn})
        return {"Records": converted}

    def poll(self, arn: str, shard_id: str, wanted: int) -> int:
        """Batches of up to 1,000 records; a failed record is retried from its sequence number."""
        iterator = self.streams.get_shard_iterator(
            StreamArn=arn, ShardId=shard_id, ShardIteratorType="LATEST"
        )["ShardIterator"]
        records = 0
        while len(self.completed) < wanted:
            page = self.streams.get_records(ShardIterator=iterator, Limit=1000)
            batch = page["Records"]
            if not batch:
                iterator = page["NextShardIterator"]
                time.sleep(0.05)
                continue
            result = process_partial_response(
                event=self.lambda_event(batch, arn),
                record_handler=self.handle,
                processor=self.processor,
                context=None,
            )
            records += len(batch)
            failures = result.get("batchItemFailures", [])
            if failures:  # the mapping retries the batch from the first failed record
                iterator = self.streams.get_shard_iterator(
                    StreamArn=arn,
                    ShardId=shard_id,
                    ShardIteratorType="AT_SEQUENCE_NUMBER",
                    SequenceNumber=failures[0]["itemIdentifier"],
                )["ShardIterator"]
            else:
                iterator = page["NextShardIterator"]
        return records


def run_peer(backend: Backend, data: Dataset, delays: dict[str, float], arn: str, shard_id: str) -> Run:
    peer = Peer(backend)
    backend.admin("latency", delays)
    # Position at the stream's end before the removals, as a mapping created earlier would be.
    iterator_at_end = threading.Event()
    result: dict[str, int] = {}

    def consume() -> None:
        iterator_at_end.set()
        result["records"] = peer.poll(arn, shard_id, len(data.doomed))

    backend.admin("counts")
    cpu = time.process_time()
    thread = threading.Thread(target=consume)
    thread.start()
    iterator_at_end.wait()
    time.sleep(0.3)  # the LATEST iterator is taken before the removals
    t0 = time.time()
    backend.admin("ttl-delete", {"transcripts": [t.transcript_id for t in data.doomed]})
    thread.join()
    seconds = time.time() - t0
    return Run(
        "peer", seconds, peer.completed, backend.admin("counts"), time.process_time() - cpu, result["records"]
    )


# --- the ceiling ---------------------------------------------------------------------------------------


def _prefixes(t: Transcript) -> Iterator[tuple[str, str]]:
    own = f"{t.account_id}/{t.transcript_id}/"
    yield from ((UPLOADS, own), (TRANSCRIPTS, own), (UNDERSTANDING, own))
    yield from ((LLM, f"{t.account_id}/{request}/") for request in t.requests)


async def _ceiling(backend: Backend, data: Dataset, arn: str, shard_id: str, t0: list[float]) -> Run:
    by_id = {t.transcript_id: t for t in data.doomed}
    async with AwsClients(backend.aws()) as clients:
        s3, ddb, streams = clients.s3, clients.dynamodb, clients.streams
        iterator = (
            await streams.get_shard_iterator(StreamArn=arn, ShardId=shard_id, ShardIteratorType="LATEST")
        )["ShardIterator"]
        await asyncio.sleep(0.3)
        t0.append(time.time())
        await asyncio.to_thread(backend.admin, "ttl-delete", {"transcripts": list(by_id)})
        seen: list[tuple[Transcript, float]] = []
        while len(seen) < len(by_id):
            page = await streams.get_records(ShardIterator=iterator, Limit=1000)
            for record in page["Records"]:
                if record["eventName"] == "REMOVE":
                    transcript = record["dynamodb"]["Keys"]["transcript_id"]["S"]
                    seen.append(
                        (by_id[transcript], record["dynamodb"]["ApproximateCreationDateTime"].timestamp())
                    )
            iterator = page["NextShardIterator"]
        listings = await asyncio.gather(
            *(
                s3.list_object_versions(Bucket=b, Prefix=p, MaxKeys=1000)
                for t, _ in seen
                for b, p in _prefixes(t)
            )
        )
        keys: dict[str, list[Any]] = {}
        for (bucket, _), listing in zip(
            ((b, p) for t, _ in seen for b, p in _prefixes(t)), listings, strict=True
        ):
            entries = [*listing.get("Versions", []), *listing.get("DeleteMarkers", [])]
            keys.setdefault(bucket, []).extend(
                {"Key": e["Key"], "VersionId": e["VersionId"]} for e in entries
            )
        deletes = [
            s3.delete_objects(Bucket=bucket, Delete={"Objects": objects[i : i + 1000], "Quiet": True})
            for bucket, objects in keys.items()
            for i in range(0, len(objects), 1000)
        ]
        items: list[Any] = [
            {"DeleteRequest": {"Key": {"transcript_id": {"S": t.transcript_id}, "output_type": {"S": kind}}}}
            for t, _ in seen
            for kind in ("translation", "speaker_identification", "custom_formatting")
        ]
        requests: list[Any] = [
            {"DeleteRequest": {"Key": {"request_id": {"S": r}}}} for t, _ in seen for r in t.requests
        ]
        writes = [
            ddb.batch_write_item(RequestItems={table: chunk[i : i + 25]})
            for table, chunk in (("speech_outputs", items), ("llm_requests", requests))
            for i in range(0, len(chunk), 25)
        ]
        await asyncio.gather(*deletes, *writes)
        done = time.time()
    return Run("ceiling", done - t0[0], [done - created for _, created in seen], records=len(seen))


def run_ceiling(backend: Backend, data: Dataset, delays: dict[str, float], arn: str, shard_id: str) -> Run:
    backend.admin("latency", delays)
    backend.admin("counts")
    cpu = time.process_time()
    run = asyncio.run(_ceiling(backend, data, arn, shard_id, []))
    run.cpu_seconds = time.process_time() - cpu
    run.requests = backend.admin("counts")
    return run
