"""An independent checker of the worker's promises, for tests that crash it or break what it depends on.

It reads the backend with its own boto3 clients, never the worker's adapters (a bug there cannot hide
itself), and knows nothing of the artifact rules: the caller names, for each item, where its artifacts are
(``Tracked``; ``tracked_transcript`` for the demo layout). Each check returns a ``Report`` whose violations
name the rule, the item and the artifact.

- ``snapshot``: every version (with its ETag, the MD5 of its bytes, and size) under each item's prefixes,
  its linked items and its own row, whole: taken before a run, it proves later that live items were not
  touched;
- ``checkpoints``: no checkpoint ahead of unfinished work. For every REMOVE record at or before a shard's
  checkpoint, the item's artifacts are gone or a dead letter names the record. Runnable at any instant, right
  after a SIGKILL too: the lease table is read first, then the stream, the dead letters and the artifacts,
  so workers still running can only have deleted more and moved checkpoints on since, never undone what
  held when the checkpoint was read;
- ``full``: at the end, all of it: deleted items' artifacts gone (all versions and delete markers, linked
  items), live ones' intact, every removal deleted or dead-lettered, no checkpoint ahead.

Stream records are read from TRIM_HORIZON until a page comes back empty (moto's shards never close), and
later from after the last one read. Between ``checkpoints`` calls an item seen with nothing left is not read
again; ``snapshot`` and ``full`` read everything anew. Many items are read in bulk (a scan per table, a
listing per first-level prefix), a few item by item.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import boto3  # type: ignore[import-untyped]
from botocore.config import Config

from reconciler.demo.layout import OUTPUT_TYPES, Transcript, artifacts_of, items_of
from reconciler.demo.moto_server import CREDENTIALS, REGION

Rule = Literal["left_behind", "touched", "checkpoint_ahead", "unresolved"]
SHARD_END = "SHARD_END"
BULK_AT = 150
"""From this many items on, whole tables and whole first-level prefixes are read instead of item by item."""
MAX_BATCH_GET = 100
Version = tuple[str, str, str, str, int, bool]
"""(bucket, key, version id, ETag, size, delete marker)"""
Row = tuple[str, str, str | None]
"""(table, canonical key, canonical item or None)"""


def canonical(value: Mapping[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, default=str)


@dataclass(frozen=True, slots=True)
class Tracked:
    """An item of a source table and where everything that goes with it is."""

    name: str
    table: str
    key: str  # canonical DynamoDB JSON
    prefixes: tuple[tuple[str, str], ...]  # (bucket, prefix): every version under one is the item's
    linked: tuple[tuple[str, str], ...]  # (table, canonical DynamoDB JSON key)
    created: int = 0  # versions and linked items it was made with (0: unknown), to see a deletion cut short


def tracked_transcript(t: Transcript) -> Tracked:
    """A demo transcript: its uploads, transcript files, speech outputs and LLM requests (layout.py)."""
    key = {"transcript_id": {"S": t.transcript_id}}
    outputs = [{**key, "output_type": {"S": kind}} for kind in OUTPUT_TYPES]
    requests = [{"request_id": {"S": r}} for r in t.requests]
    linked = [("speech_outputs", canonical(k)) for k in outputs]
    linked += [("llm_requests", canonical(k)) for k in requests]
    name = f"transcripts/{t.transcript_id}"
    created = len(artifacts_of(t)) + len(items_of(t)) - 1  # its own row is not an artifact
    return Tracked(name, "transcripts", canonical(key), tuple(t.scopes()), tuple(linked), created)


@dataclass(frozen=True, slots=True)
class Holdings:
    """What exists of an item's artifacts: versions and delete markers, linked items, its own row."""

    versions: frozenset[Version]
    linked: frozenset[Row]
    own: str | None = None

    @property
    def left(self) -> list[str]:
        """What is left of a deleted item, as URIs and item keys."""
        found = [
            f"s3://{b}/{k} version {v}{' (delete marker)' if m else ''}" for b, k, v, _, _, m in self.versions
        ]
        return sorted(found) + sorted(f"{table} {key}" for table, key, row in self.linked if row is not None)

    def differences(self, before: Holdings) -> list[str]:
        gone = [f"missing s3://{b}/{k} version {v}" for b, k, v, *_ in before.versions - self.versions]
        new = [f"new or changed s3://{b}/{k} version {v}" for b, k, v, *_ in self.versions - before.versions]
        rows = [f"{t} {k} changed" for t, k, _ in before.linked ^ self.linked]
        own = ["its own row changed"] if self.own != before.own else []
        return sorted(gone) + sorted(new) + sorted(set(rows)) + own


Snapshot = dict[str, Holdings]


@dataclass(frozen=True, slots=True)
class Violation:
    rule: Rule
    item: str
    detail: str


@dataclass(frozen=True, slots=True)
class Removal:
    """A REMOVE record of a source table's stream."""

    table: str
    stream_arn: str
    shard_id: str
    sequence_number: str
    key: str  # canonical DynamoDB JSON

    @property
    def at(self) -> tuple[str, str, str]:
        return (self.stream_arn, self.shard_id, self.sequence_number)


@dataclass(slots=True)
class Report:
    violations: list[Violation] = field(default_factory=list)
    checkpoints: dict[str, str | None] = field(default_factory=dict)  # "table shard" -> checkpoint
    removals: int = 0  # REMOVE records in the streams
    covered: int = 0  # of them, at or before their shard's checkpoint
    lettered: int = 0  # of them, named by a dead letter
    unknown: int = 0  # REMOVE records of items nobody asked to track
    in_flight: list[str] = field(
        default_factory=list
    )  # items just after a checkpoint that still hold artifacts
    partial: list[str] = field(default_factory=list)  # of those, partly deleted (a deletion cut short)

    @property
    def ok(self) -> bool:
        return not self.violations

    def assert_ok(self) -> None:
        """Fail with every violation spelled out."""
        if self.violations:
            raise AssertionError(str(self))

    def __str__(self) -> str:
        head = (
            f"{len(self.violations)} violations; {self.removals} removals, {self.covered} at or before a"
            f" checkpoint, {self.lettered} dead-lettered; checkpoints {self.checkpoints}"
        )
        lines = [f"  {v.rule}: {v.item}: {v.detail}" for v in self.violations[:40]]
        more = [f"  ... and {len(self.violations) - 40} more"] if len(self.violations) > 40 else []
        return "\n".join([head, *lines, *more])


class Checker:
    def __init__(
        self,
        endpoint: str,
        items: Iterable[Tracked],
        *,
        sources: Collection[str] = ("transcripts",),
        checkpoint_table: str = "reconciler-checkpoints",
        dead_letter_table: str = "reconciler-dead-letters",
        lookahead: int = 8,
        bulk_at: int = BULK_AT,
    ) -> None:
        config = Config(retries={"mode": "standard", "max_attempts": 10})  # moto answers 500 at times
        common: dict[str, Any] = {
            "endpoint_url": endpoint,
            "region_name": REGION,
            "aws_access_key_id": CREDENTIALS[0],
            "aws_secret_access_key": CREDENTIALS[1],
            "config": config,
        }
        self._s3 = boto3.client("s3", **common)
        self._dynamodb = boto3.client("dynamodb", **common)
        self._streams = boto3.client("dynamodbstreams", **common)
        self.items = {(t.table, t.key): t for t in items}
        self._sources = tuple(sources)
        self._checkpoint_table = checkpoint_table
        self._dead_letter_table = dead_letter_table
        self._lookahead = lookahead
        self._bulk_at = bulk_at
        self._key_names: dict[str, list[str]] = {}
        self._gone: set[Tracked] = set()
        self._read: dict[tuple[str, str], tuple[list[Removal], str | None]] = {}

    # -- checks ----------------------------------------------------------------------------------------
    def snapshot(self, items: Iterable[Tracked]) -> Snapshot:
        held = self._holdings(list(items), own=True)
        return {t.name: h for t, h in held.items()}

    def checkpoints(self) -> Report:
        """No checkpoint ahead of unfinished work. An item once seen with nothing left is not read again
        (nothing writes under a removed item's prefixes in these tests; ``full`` reads everything anew)."""
        return self._checkpoints(remember=True)[0]

    def full(
        self,
        deleted: Iterable[Tracked],
        live: Iterable[Tracked],
        before: Snapshot,
        *,
        expect_gone: bool = True,
    ) -> Report:
        """Everything. With ``expect_gone`` every deleted item's artifacts are gone; without it, an item whose
        removal was dead-lettered (a refusal, a permanent failure) may keep them."""
        report, removals, letters = self._checkpoints(remember=False)
        removed = {t for r in removals if (t := self.items.get((r.table, r.key))) is not None}
        lettered = {t for r in removals if r.at in letters and (t := self.items.get((r.table, r.key)))}
        deleted, live = list(deleted), list(live)
        held = self._holdings([*deleted, *live, *removed], own=True)
        for item in deleted:
            if held[item].left and (expect_gone or item not in lettered):
                report.violations.append(
                    Violation("left_behind", item.name, f"{_few(held[item].left)} remain")
                )
        for item in live:
            if differences := held[item].differences(before[item.name]):
                report.violations.append(Violation("touched", item.name, _few(differences)))
        for item in removed - lettered:
            if held[item].left:
                detail = f"removed, not done and not dead-lettered: {_few(held[item].left)} remain"
                report.violations.append(Violation("unresolved", item.name, detail))
        return report

    def _checkpoints(self, *, remember: bool) -> tuple[Report, list[Removal], set[tuple[str, str, str]]]:
        report = Report()
        positions = self._positions(report)  # first: what follows can only have moved on since
        removals = self.removals()
        letters = self._letters()
        covered = [r for r in removals if _covers(positions.get((r.stream_arn, r.shard_id)), r)]
        ahead = self._just_after(removals, positions)
        item = {r: self.items.get((r.table, r.key)) for r in removals}
        report.unknown = sum(t is None for t in item.values())
        known = self._gone if remember else set()
        held = dict.fromkeys(known, Holdings(frozenset(), frozenset()))
        held |= self._holdings([t for r in [*covered, *ahead] if (t := item[r]) and t not in known])
        self._gone |= {t for t, h in held.items() if not h.left} if remember else set()
        for removal in covered:
            found = item[removal]
            if found is None or not held[found].left or removal.at in letters:
                continue
            checkpoint = positions[removal.stream_arn, removal.shard_id]
            report.violations.append(
                Violation(
                    "checkpoint_ahead",
                    found.name,
                    f"checkpoint {checkpoint} of {removal.table} {removal.shard_id} is at or past REMOVE"
                    f" record {removal.sequence_number}, no dead letter names it, and"
                    f" {_few(held[found].left)} remain",
                )
            )
        report.removals, report.covered = len(removals), len(covered)
        report.lettered = sum(r.at in letters for r in removals)
        for t in dict.fromkeys(t for r in ahead if (t := item[r]) and held[t].left):
            report.in_flight.append(t.name)
            if len(held[t].left) < t.created:
                report.partial.append(t.name)
        return report, removals, letters

    # -- the log: lease table, stream, dead letters ----------------------------------------------------
    def _positions(self, report: Report) -> dict[tuple[str, str], str | None]:
        """Each shard's checkpoint (None before the first), by stream ARN and shard id."""
        positions: dict[tuple[str, str], str | None] = {}
        for row in self._scan(self._checkpoint_table):
            table = row.get("source_table", {}).get("S")
            if table:  # not the shard-sync lease
                checkpoint = row.get("checkpoint", {}).get("S")
                positions[row["stream_arn"]["S"], row["shard_id"]["S"]] = checkpoint
                report.checkpoints[f"{table} {row['shard_id']['S']}"] = checkpoint
        return positions

    def _letters(self) -> set[tuple[str, str, str]]:
        """The records dead letters name: (stream ARN, shard id, sequence number)."""
        return {
            (row["stream_arn"]["S"], row["shard_id"]["S"], row["sequence_number"]["S"])
            for row in self._scan(self._dead_letter_table)
        }

    def _just_after(
        self, removals: list[Removal], positions: dict[tuple[str, str], str | None]
    ) -> list[Removal]:
        """The first ``lookahead`` removals after each shard's checkpoint: what a killed worker had in
        flight."""
        after: dict[tuple[str, str], list[Removal]] = {}
        for removal in removals:
            if not _covers(positions.get((removal.stream_arn, removal.shard_id)), removal):
                after.setdefault((removal.stream_arn, removal.shard_id), []).append(removal)
        return [r for shard in after.values() for r in shard[: self._lookahead]]

    def removals(self) -> list[Removal]:
        found: list[Removal] = []
        for table in self._sources:
            arn = self._dynamodb.describe_table(TableName=table)["Table"].get("LatestStreamArn")
            for shard_id in self._shards(arn) if arn else []:
                found += self._shard_removals(table, arn, shard_id)
        return found

    def _shards(self, arn: str) -> Iterator[str]:
        params: dict[str, Any] = {"StreamArn": arn}
        while True:
            description = self._streams.describe_stream(**params)["StreamDescription"]
            yield from (shard["ShardId"] for shard in description.get("Shards", []))
            if not description.get("LastEvaluatedShardId"):
                return
            params["ExclusiveStartShardId"] = description["LastEvaluatedShardId"]

    def _shard_removals(self, table: str, arn: str, shard_id: str) -> list[Removal]:
        """The shard's REMOVE records: those read before (a stream never changes what it holds), then the
        rest, from after the last record read."""
        found, last = self._read.get((arn, shard_id), ([], None))
        position = {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": last} if last else {}
        iterator: str | None = self._streams.get_shard_iterator(
            StreamArn=arn, ShardId=shard_id, **(position or {"ShardIteratorType": "TRIM_HORIZON"})
        )["ShardIterator"]
        while iterator:
            page = self._streams.get_records(ShardIterator=iterator, Limit=1000)
            for record in page["Records"]:
                last = record["dynamodb"]["SequenceNumber"]
                if record["eventName"] == "REMOVE":
                    found.append(Removal(table, arn, shard_id, last, canonical(record["dynamodb"]["Keys"])))
            iterator = page.get("NextShardIterator") if page["Records"] else None
        self._read[arn, shard_id] = (found, last)
        return list(found)

    def _scan(self, table: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        params: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
        try:
            while True:
                page = self._dynamodb.scan(**params)
                rows += page.get("Items", [])
                if "LastEvaluatedKey" not in page:
                    return rows
                params["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        except self._dynamodb.exceptions.ResourceNotFoundException:
            return rows  # not created yet: no worker got that far

    # -- artifacts -------------------------------------------------------------------------------------
    def _holdings(self, items: list[Tracked], *, own: bool = False) -> dict[Tracked, Holdings]:
        items = list(dict.fromkeys(items))
        keys = {k for t in items for k in t.linked} | ({(t.table, t.key) for t in items} if own else set())
        bulk = len(items) >= self._bulk_at
        versions = self._versions(_listings(items, bulk=bulk))
        rows = self._rows_bulk(keys) if bulk else self._rows(keys)
        return {
            t: Holdings(
                frozenset(v for p in t.prefixes for v in versions[p]),
                frozenset((table, key, rows[table, key]) for table, key in t.linked),
                rows[t.table, t.key] if own else None,
            )
            for t in items
        }

    def _versions(self, listings: dict[tuple[str, str], set[str]]) -> dict[tuple[str, str], set[Version]]:
        """Each listing (bucket, prefix) read once, its versions handed to the prefixes it stands for."""
        found: dict[tuple[str, str], set[Version]] = {
            (b, p): set() for (b, _), ps in listings.items() for p in ps
        }
        for (bucket, listed), wanted in listings.items():
            pages = self._s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=listed)
            for page in pages:
                entries = [
                    *(_version(bucket, v, marker=False) for v in page.get("Versions", [])),
                    *(_version(bucket, m, marker=True) for m in page.get("DeleteMarkers", [])),
                ]
                for version in entries:
                    for prefix in wanted:
                        if version[1].startswith(prefix):
                            found[bucket, prefix].add(version)
        return found

    def _rows(self, keys: set[tuple[str, str]]) -> dict[tuple[str, str], str | None]:
        """``BatchGetItem``, strongly consistent, 100 keys a call; unprocessed keys asked for again."""
        found: dict[tuple[str, str], str | None] = dict.fromkeys(keys)
        for table in {t for t, _ in keys}:
            names = self._key_schema(table)
            wanted = [json.loads(k) for t, k in keys if t == table]
            while wanted:
                chunk, wanted = wanted[:MAX_BATCH_GET], wanted[MAX_BATCH_GET:]
                answer = self._dynamodb.batch_get_item(
                    RequestItems={table: {"Keys": chunk, "ConsistentRead": True}}
                )
                for item in answer["Responses"].get(table, []):
                    found[table, canonical({n: item[n] for n in names})] = canonical(item)
                wanted += answer.get("UnprocessedKeys", {}).get(table, {}).get("Keys", [])
        return found

    def _rows_bulk(self, keys: set[tuple[str, str]]) -> dict[tuple[str, str], str | None]:
        found: dict[tuple[str, str], str | None] = dict.fromkeys(keys)
        for table in {t for t, _ in keys}:
            names = self._key_schema(table)
            for item in self._scan(table):
                key = (table, canonical({n: item[n] for n in names}))
                if key in found:
                    found[key] = canonical(item)
        return found

    def _key_schema(self, table: str) -> list[str]:
        if table not in self._key_names:
            schema = self._dynamodb.describe_table(TableName=table)["Table"]["KeySchema"]
            self._key_names[table] = [k["AttributeName"] for k in schema]
        return self._key_names[table]


def _listings(items: list[Tracked], *, bulk: bool) -> dict[tuple[str, str], set[str]]:
    """What to list: (bucket, prefix) -> the tracked prefixes it holds. In bulk, each first-level prefix
    ("acct-1/") once; otherwise one listing per item and bucket, under its prefixes' common part."""
    listings: dict[tuple[str, str], set[str]] = {}
    for item in items:
        by_bucket: dict[str, list[str]] = {}
        for bucket, prefix in item.prefixes:
            by_bucket.setdefault(bucket, []).append(prefix)
        for bucket, prefixes in by_bucket.items():
            listed = os.path.commonprefix(prefixes)  # noqa: RUF071 - S3 prefixes are strings, not paths
            if bulk:
                listed = listed.split("/", 1)[0] + ("/" if "/" in listed else "")
            listings.setdefault((bucket, listed), set()).update(prefixes)
    return listings


def _covers(checkpoint: str | None, removal: Removal) -> bool:
    if checkpoint is None:
        return False
    return checkpoint == SHARD_END or int(removal.sequence_number) <= int(checkpoint)


def _version(bucket: str, entry: Mapping[str, Any], *, marker: bool) -> Version:
    etag = "" if marker else str(entry.get("ETag", ""))
    return (bucket, entry["Key"], entry.get("VersionId") or "null", etag, int(entry.get("Size", 0)), marker)


def _few(things: list[str], shown: int = 3) -> str:
    more = f" and {len(things) - shown} more" if len(things) > shown else ""
    return "; ".join(things[:shown]) + more
