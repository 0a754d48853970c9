"""The speech-to-text layout: tables, versioned buckets and transcripts with everything linked to them.

Used by ``reconciler demo`` and by the integration tests, always against moto.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from reconciler.adapters.tables import create_table

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient
    from types_aiobotocore_s3 import S3Client

UPLOADS = "stt-uploads"
TRANSCRIPTS = "stt-transcripts"
UNDERSTANDING = "stt-understanding"
LLM = "stt-llm-gateway"
BUCKETS = (UPLOADS, TRANSCRIPTS, UNDERSTANDING, LLM)
TRANSCRIPT_FILES = ("transcript.json", "transcript.txt", "captions.srt", "captions.vtt")
OUTPUT_TYPES = ("translation", "speaker_identification", "custom_formatting")
VERSIONS_PER_FILE = 2
LLM_REQUESTS_PER_TRANSCRIPT = 2


@dataclass(frozen=True, slots=True)
class Transcript:
    account_id: str
    transcript_id: str
    expires_at: int
    audio_url: str | None = None
    created_at: int | None = None
    """When its LLM requests were written (epoch seconds; default: when they are added)."""

    @property
    def requests(self) -> tuple[str, ...]:
        return tuple(f"{self.transcript_id}#llm{n}" for n in range(LLM_REQUESTS_PER_TRANSCRIPT))

    def scopes(self) -> list[tuple[str, str]]:
        """Every (bucket, prefix) holding something of this transcript, linked items included."""
        own = f"{self.account_id}/{self.transcript_id}/"
        return [
            (UPLOADS, own),
            (TRANSCRIPTS, own),
            (UNDERSTANDING, own),
            *((LLM, f"{self.account_id}/{r}/") for r in self.requests),
        ]


@dataclass(slots=True)
class Layout:
    s3: S3Client
    dynamodb: DynamoDBClient

    async def create(self) -> None:
        await asyncio.gather(*(self._bucket(b) for b in BUCKETS))
        await self._transcripts_table()
        await create_table(self.dynamodb, "speech_outputs", ("transcript_id", "output_type"))
        await self._llm_table()

    async def _bucket(self, name: str) -> None:
        await self.s3.create_bucket(Bucket=name)
        await self.s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})

    async def _transcripts_table(self) -> None:
        await self.dynamodb.create_table(
            TableName="transcripts",
            BillingMode="PAY_PER_REQUEST",
            KeySchema=[{"AttributeName": "transcript_id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "transcript_id", "AttributeType": "S"}],
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
        )
        await self.dynamodb.update_time_to_live(
            TableName="transcripts",
            TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"},
        )

    async def _llm_table(self) -> None:
        await self.dynamodb.create_table(
            TableName="llm_requests",
            BillingMode="PAY_PER_REQUEST",
            KeySchema=[{"AttributeName": "request_id", "KeyType": "HASH"}],
            AttributeDefinitions=[
                {"AttributeName": "request_id", "AttributeType": "S"},
                {"AttributeName": "transcript_id", "AttributeType": "S"},
            ],
            GlobalSecondaryIndexes=[
                {
                    "IndexName": "by_transcript",
                    "KeySchema": [{"AttributeName": "transcript_id", "KeyType": "HASH"}],
                    "Projection": {"ProjectionType": "KEYS_ONLY"},
                }
            ],
        )

    async def add(self, transcripts: Iterable[Transcript], seed: Seeder | None = None) -> None:
        """Upload every artifact of each transcript (several versions each), then write the items.

        With ``seed`` the data goes straight into the server's store (fast); otherwise through the API.
        """
        batch = list(transcripts)
        objects = [o for t in batch for o in artifacts_of(t)]
        items = [i for t in batch for i in items_of(t)]
        if seed is not None:
            for bucket, key, body in objects:
                seed.put_object(bucket, key, body)
            for table, item in items:
                seed.put_item(table, item)
        else:
            limit = asyncio.Semaphore(32)

            async def bounded(call: Awaitable[Any]) -> None:
                async with limit:
                    await call

            await asyncio.gather(
                *(bounded(self.s3.put_object(Bucket=b, Key=k, Body=v)) for b, k, v in objects)
            )
            await asyncio.gather(*(bounded(self.dynamodb.put_item(TableName=t, Item=i)) for t, i in items))

    async def remaining(self, t: Transcript) -> int:
        """Object versions, delete markers and linked items of ``t`` that still exist."""
        count = 0
        for bucket, prefix in t.scopes():
            count += len(await self.versions(bucket, prefix))
        outputs = await self.dynamodb.query(
            TableName="speech_outputs",
            KeyConditionExpression="transcript_id = :t",
            ExpressionAttributeValues={":t": {"S": t.transcript_id}},
        )
        count += outputs["Count"]
        for request in t.requests:
            item = await self.dynamodb.get_item(TableName="llm_requests", Key={"request_id": {"S": request}})
            count += "Item" in item
        return count

    async def exists(self, t: Transcript) -> bool:
        """Whether ``t``'s own item is still in the table."""
        found = await self.dynamodb.get_item(
            TableName="transcripts", Key={"transcript_id": {"S": t.transcript_id}}, ConsistentRead=True
        )
        return "Item" in found

    async def versions(self, bucket: str, prefix: str) -> set[tuple[str, str]]:
        found: set[tuple[str, str]] = set()
        paginator = self.s3.get_paginator("list_object_versions")
        async for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for entry in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
                found.add((entry["Key"], entry.get("VersionId", "null")))
        return found

    async def snapshot(self, transcripts: Iterable[Transcript]) -> Snapshot:
        """Every version under each transcript's scopes and every item of it and linked to it, whole, to
        prove later that nothing of it was touched."""
        shot: Snapshot = {}
        for t in transcripts:
            for bucket, prefix in t.scopes():
                shot[f"s3://{bucket}/{prefix}"] = frozenset(await self.versions(bucket, prefix))
            shot[f"transcripts/{t.transcript_id}"] = await self._item(
                "transcripts", "transcript_id", t.transcript_id
            )
            outputs = await self.dynamodb.query(
                TableName="speech_outputs",
                KeyConditionExpression="transcript_id = :t",
                ExpressionAttributeValues={":t": {"S": t.transcript_id}},
                ConsistentRead=True,
            )
            shot[f"speech_outputs/{t.transcript_id}"] = frozenset(_canonical(i) for i in outputs["Items"])
            for request in t.requests:
                shot[f"llm_requests/{request}"] = await self._item("llm_requests", "request_id", request)
        return shot

    async def _item(self, table: str, key: str, value: str) -> frozenset[str]:
        found = await self.dynamodb.get_item(TableName=table, Key={key: {"S": value}}, ConsistentRead=True)
        return frozenset([_canonical(found["Item"])] if "Item" in found else [])


Snapshot = dict[str, frozenset[Any]]


def changes(before: Snapshot, after: Snapshot) -> int:
    """How many versions and items differ between two snapshots of the same transcripts."""
    return sum(len(before[name] ^ after.get(name, frozenset())) for name in before)


def _canonical(item: Mapping[str, Any]) -> str:
    return json.dumps(item, sort_keys=True, default=str)


class Seeder(Protocol):
    def put_object(self, bucket: str, key: str, body: bytes) -> None: ...

    def put_item(self, table: str, item: dict[str, Any]) -> None: ...


def artifacts_of(t: Transcript) -> list[tuple[str, str, bytes]]:
    """(bucket, key, body) of every object version of ``t``, in upload order."""
    own = f"{t.account_id}/{t.transcript_id}"
    files = [] if t.audio_url else [(UPLOADS, f"{own}/audio.wav")]  # a tampered transcript has no upload
    files += [(TRANSCRIPTS, f"{own}/{name}") for name in TRANSCRIPT_FILES]
    versions = [(b, k, f"v{v} of {k}".encode()) for b, k in files for v in range(VERSIONS_PER_FILE)]
    versions += [(UNDERSTANDING, f"{own}/{kind}.json", b"{}") for kind in OUTPUT_TYPES]
    for request in t.requests:
        versions += [(LLM, f"{t.account_id}/{request}/{part}.json", b"{}") for part in ("input", "output")]
    return versions


def items_of(t: Transcript) -> list[tuple[str, dict[str, Any]]]:
    """(table, item as DynamoDB JSON) of ``t`` and everything linked to it."""
    own = f"{t.account_id}/{t.transcript_id}"
    created = t.created_at if t.created_at is not None else int(time.time())
    rows: list[tuple[str, dict[str, Any]]] = [
        (
            "transcripts",
            {
                "transcript_id": {"S": t.transcript_id},
                "account_id": {"S": t.account_id},
                "expires_at": {"N": str(t.expires_at)},
                "audio_url": {"S": t.audio_url or f"s3://{UPLOADS}/{own}/audio.wav"},
                "language": {"S": "en-US"},
            },
        )
    ]
    rows += [
        (
            "speech_outputs",
            {
                "transcript_id": {"S": t.transcript_id},
                "output_type": {"S": kind},
                "account_id": {"S": t.account_id},
                "output_url": {"S": f"s3://{UNDERSTANDING}/{own}/{kind}.json"},
            },
        )
        for kind in OUTPUT_TYPES
    ]
    rows += [
        (
            "llm_requests",
            {
                "request_id": {"S": request},
                "transcript_id": {"S": t.transcript_id},
                "account_id": {"S": t.account_id},
                "input_url": {"S": f"s3://{LLM}/{t.account_id}/{request}/input.json"},
                "output_url": {"S": f"s3://{LLM}/{t.account_id}/{request}/output.json"},
                "created_at": {"N": str(created)},
            },
        )
        for request in t.requests
    ]
    return rows


def expiry(now: dt.datetime, seconds_from_now: float) -> int:
    return int((now + dt.timedelta(seconds=seconds_from_now)).timestamp())
