"""One contract, two implementations: each in-memory fake keeps the promises of its aiobotocore adapter.

Every test runs against the fake (``reconciler.testing``) and against the adapter on moto's HTTP server. A
fake that drifts from its adapter makes the unit tests prove things about a world that does not exist.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from reconciler.adapters.aws import AwsClients, AwsSettings, Caller, RetryPolicy
from reconciler.adapters.dynamodb import DynamoDBItemStore
from reconciler.adapters.leases import DynamoDBLeaseStore
from reconciler.adapters.letters import DynamoDBDeadLetterStore
from reconciler.adapters.s3 import S3ArtifactStore
from reconciler.adapters.tables import create_worker_tables
from reconciler.core.dynamodb_json import encode_key
from reconciler.core.plan import LinkQuery
from reconciler.core.scope import S3Location
from reconciler.demo.layout import Layout
from reconciler.demo.moto_server import CREDENTIALS, REGION, BackendSeeder, reset
from reconciler.ports import (
    ArtifactStore,
    DeadLetter,
    DeadLetterStore,
    ItemStore,
    LeaseStore,
    LinkedItemScan,
    ObjectVersion,
)
from reconciler.testing import FakeArtifactStore, FakeDeadLetterStore, FakeItemStore, FakeLeaseStore

ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/transcripts/stream/2026-01-01T00:00:00.000"
OTHER_ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/other/stream/2026-01-01T00:00:00.000"
BUCKET = "stt-transcripts"


@dataclass
class Stores:
    checkpoints: LeaseStore
    dead_letters: DeadLetterStore
    items: ItemStore
    artifacts: ArtifactStore
    fake: FakeArtifactStore | None
    fake_items: FakeItemStore | None
    layout: Layout | None

    async def put_object(self, key: str, versions: int = 1) -> None:
        if self.fake is not None:
            self.fake.put(BUCKET, key, versions)
            return
        for n in range(versions):
            BackendSeeder().put_object(BUCKET, key, f"v{n}".encode())

    async def put_item(self, table: str, item: dict[str, object]) -> None:
        if self.fake_items is not None:
            self.fake_items.put(table, item)
            return
        assert self.layout is not None
        await self.layout.dynamodb.put_item(TableName=table, Item=encode_key(item))

    @property
    def scan(self) -> LinkedItemScan:
        assert isinstance(self.items, FakeItemStore | DynamoDBItemStore)
        return self.items

    async def versions(self, prefix: str) -> list[ObjectVersion]:
        location = S3Location(BUCKET, prefix)
        return [
            v async for page in self.artifacts.list_versions(location, exact=False) for v in page.versions
        ]


@pytest.fixture(params=["fake", pytest.param("moto", marks=pytest.mark.integration)])
async def stores(request: pytest.FixtureRequest) -> AsyncIterator[Stores]:
    if request.param == "fake":
        artifacts, items = FakeArtifactStore(), FakeItemStore()
        yield Stores(FakeLeaseStore(), FakeDeadLetterStore(), items, artifacts, artifacts, items, None)
        return
    endpoint = request.getfixturevalue("endpoint")
    reset(endpoint)
    aws = AwsSettings(region=REGION, endpoint_url=endpoint, credentials=CREDENTIALS)
    async with AwsClients(aws) as clients:
        layout = Layout(clients.s3, clients.dynamodb)
        await layout.create()
        await create_worker_tables(layout.dynamodb, "checkpoints", "letters")
        call = Caller(RetryPolicy(attempts=3))
        yield Stores(
            DynamoDBLeaseStore(layout.dynamodb, call, "checkpoints", "test"),
            DynamoDBDeadLetterStore(layout.dynamodb, call, "letters"),
            DynamoDBItemStore(layout.dynamodb, call),
            S3ArtifactStore(layout.s3, call),
            None,
            None,
            layout,
        )


def _seq(n: int) -> str:
    return f"{n:021d}"


async def test_a_dead_letter_is_new_once_and_rewritten_after(stores: Stores) -> None:
    letter = DeadLetter(
        source_table="transcripts",
        stream_arn=ARN,
        shard_id="shardId-1",
        sequence_number=_seq(7),
        event_id="e7",
        kind="unsafe",
        reason="1 targets refused by the scope check",
        created_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        item_key={"transcript_id": "tr-1"},
        targets=("out_of_scope: s3://stt-uploads/acct-2/tr-9/audio.wav",),
    )
    assert await stores.dead_letters.put(letter) is True
    assert await stores.dead_letters.put(letter) is False
    assert (
        await stores.dead_letters.put(dataclasses.replace(letter, kind="failed")) is True
    )  # another letter of the record


async def test_a_given_up_letter_keeps_its_attempts_and_their_times(stores: Stores) -> None:
    first, last = dt.datetime(2026, 1, 1, tzinfo=dt.UTC), dt.datetime(2026, 1, 1, 0, 45, tzinfo=dt.UTC)
    letter = DeadLetter(
        source_table="transcripts",
        stream_arn=ARN,
        shard_id="shardId-1",
        sequence_number=_seq(8),
        event_id="e8",
        kind="failed",
        reason="gave up after 50 attempts: AWS call failed after retries: SlowDown",
        created_at=last,
        item_key={"transcript_id": "tr-8"},
        targets=("prefix: s3://stt-transcripts/acct-1/tr-8/",),
        attempts=50,
        first_attempt=first,
        last_attempt=last,
    )
    assert await stores.dead_letters.put(letter) is True
    if stores.layout is None:
        assert isinstance(stores.dead_letters, FakeDeadLetterStore)
        stored = stores.dead_letters.letters[letter.letter_id]
        assert (stored.attempts, stored.first_attempt, stored.last_attempt) == (50, first, last)
        return
    item = (
        await stores.layout.dynamodb.get_item(TableName="letters", Key={"letter_id": {"S": letter.letter_id}})
    )["Item"]
    assert (item["attempts"], item["first_attempt"], item["last_attempt"]) == (
        {"N": "50"}, {"S": first.isoformat()}, {"S": last.isoformat()},
    )  # fmt: skip


async def test_listing_exact_keeps_only_the_key_and_a_prefix_lists_every_version(stores: Stores) -> None:
    await stores.put_object("acct-1/tr-1/a", versions=2)
    await stores.put_object("acct-1/tr-1/ab")
    await stores.put_object("acct-1/tr-10/a")
    exact = [
        v
        async for page in stores.artifacts.list_versions(S3Location(BUCKET, "acct-1/tr-1/a"), exact=True)
        for v in page.versions
    ]
    assert {v.key for v in exact} == {"acct-1/tr-1/a"}
    assert len(exact) == 2
    assert {v.key for v in await stores.versions("acct-1/tr-1/")} == {"acct-1/tr-1/a", "acct-1/tr-1/ab"}


async def test_every_listed_version_says_when_it_was_written(stores: Stores) -> None:
    """The orphan sweep's minimum age reads it: a version without a time would never be old enough."""
    before = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(seconds=1)
    await stores.put_object("acct-1/tr-1/a", versions=2)
    written = [v.last_modified for v in await stores.versions("acct-1/tr-1/")]
    assert len(written) == 2
    assert all(t is not None and before <= t <= dt.datetime.now(dt.UTC) for t in written)


async def test_deleting_listed_versions_removes_them_and_leaves_neighbours(stores: Stores) -> None:
    await stores.put_object("acct-1/tr-1/a", versions=3)
    await stores.put_object("acct-1/tr-10/a")
    listed = await stores.versions("acct-1/tr-1/")
    report = await stores.artifacts.delete_versions(BUCKET, listed)
    assert set(report.deleted) == set(listed)
    assert report.refused == ()
    assert await stores.versions("acct-1/tr-1/") == []
    assert len(await stores.versions("acct-1/tr-10/")) == 1


async def test_linked_items_are_found_and_deleted_only_while_still_linked(stores: Stores) -> None:
    for output, transcript in (("translation", "tr-1"), ("captions", "tr-1"), ("translation", "tr-2")):
        await stores.put_item(
            "speech_outputs", {"transcript_id": transcript, "output_type": output, "account_id": "acct-1"}
        )
    query = LinkQuery("speech_outputs", "transcript_id", "tr-1", None)
    found = [image async for image in stores.items.find(query, ("transcript_id", "output_type"))]
    assert sorted(str(i["output_type"]) for i in found) == ["captions", "translation"]

    key = {"transcript_id": "tr-1", "output_type": "translation"}
    old = await stores.items.delete_linked(query, key)
    assert old is not None
    assert old["account_id"] == "acct-1"
    assert await stores.items.get("speech_outputs", key) is None
    assert await stores.items.delete_linked(query, key) is None  # gone already: not ours to count
    other = LinkQuery("speech_outputs", "transcript_id", "tr-9", None)
    captions = {"transcript_id": "tr-1", "output_type": "captions"}
    assert await stores.items.delete_linked(other, captions) is None  # linked elsewhere: left alone
    assert await stores.items.get("speech_outputs", captions) is not None


async def test_a_sort_key_prefix_narrows_what_is_found_and_what_may_be_deleted(stores: Stores) -> None:
    for output in ("OUTPUT#de", "OUTPUT#fr", "NOTE#1"):
        await stores.put_item("speech_outputs", {"transcript_id": "tr-1", "output_type": output})
    query = LinkQuery("speech_outputs", "transcript_id", "tr-1", None, "output_type", "OUTPUT#")
    found = [image async for image in stores.items.find(query, ("transcript_id", "output_type"))]
    assert sorted(str(i["output_type"]) for i in found) == ["OUTPUT#de", "OUTPUT#fr"]
    note = {"transcript_id": "tr-1", "output_type": "NOTE#1"}
    assert await stores.items.delete_linked(query, note) is None  # not linked by this query: left alone
    assert await stores.items.get("speech_outputs", note) is not None
    assert await stores.items.delete_linked(query, {"transcript_id": "tr-1", "output_type": "OUTPUT#de"})


async def test_a_letter_written_again_keeps_the_targets_it_named_before(stores: Stores) -> None:
    """A redelivered record's letter may name fewer refusals (linked items deleted the first time are gone);
    the letter keeps the ones named before."""
    first = _with_targets(("out_of_scope: s3://b/x", "out_of_scope: s3://b/y"))
    assert await stores.dead_letters.put(first) is True
    assert await stores.dead_letters.put(_with_targets(("out_of_scope: s3://b/z",))) is False
    held = await _targets(stores, first)
    assert held == {"out_of_scope: s3://b/x", "out_of_scope: s3://b/y", "out_of_scope: s3://b/z"}


def _with_targets(targets: tuple[str, ...]) -> DeadLetter:
    return DeadLetter(
        source_table="transcripts",
        stream_arn=ARN,
        shard_id="shardId-1",
        sequence_number=_seq(9),
        event_id="e9",
        kind="unsafe",
        reason="refused",
        created_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        targets=targets,
    )


async def _targets(stores: Stores, letter: DeadLetter) -> set[str]:
    if isinstance(stores.dead_letters, FakeDeadLetterStore):
        return set(stores.dead_letters.letters[letter.letter_id].targets)
    assert stores.layout is not None
    item = await stores.layout.dynamodb.get_item(
        TableName="letters", Key={"letter_id": {"S": letter.letter_id}}
    )
    return set(item["Item"]["targets"]["SS"])


@pytest.mark.parametrize("start", [0, 1, 3, 4])
async def test_a_listing_after_a_version_resumes_just_past_it(stores: Stores, start: int) -> None:
    """``after`` names a listed version (sent raw, though the answer is URL-encoded): what follows it."""
    for key, versions in (("acct-1/tr-1/a b+c%41", 2), ("acct-1/tr-1/b", 2), ("acct-1/tr-1/c", 1)):
        await stores.put_object(key, versions)
    listed = await stores.versions("acct-1/tr-1/")
    location = S3Location(BUCKET, "acct-1/tr-1/")
    rest = [
        v
        async for page in stores.artifacts.list_versions(location, exact=False, after=listed[start])
        for v in page.versions
    ]
    assert rest == listed[start + 1 :]


@pytest.mark.parametrize("count", [3, 130])
async def test_many_items_are_read_in_order_with_none_where_there_is_no_item(
    stores: Stores, count: int
) -> None:
    """More than 100 keys (one BatchGetItem's limit), missing keys, and a key asked for twice."""
    for n in range(0, count, 2):
        await stores.put_item("speech_outputs", {"transcript_id": "tr-1", "output_type": f"o{n:03}", "n": n})
    keys = [{"transcript_id": "tr-1", "output_type": f"o{n:03}"} for n in range(count)]
    found = await stores.items.get_many("speech_outputs", [*keys, keys[0]])
    assert [image["n"] if image else None for image in found] == [
        *(n if n % 2 == 0 else None for n in range(count)),
        0,
    ]
    assert await stores.items.get_many("speech_outputs", []) == []


async def test_an_orphan_scan_reads_only_the_attributes_asked_and_misses_no_item_deleted_between_pages(
    stores: Stores,
) -> None:
    ids = [f"tr-{n}" for n in range(5)]
    for ident in ids:
        await stores.put_item("speech_outputs", {"transcript_id": ident, "output_type": "translation",
                                                 "output_url": f"s3://{BUCKET}/{ident}.json"})  # fmt: skip
    seen: list[dict[str, object]] = []
    start = None
    while True:
        page = await stores.scan.scan_linked(
            "speech_outputs", ["transcript_id", "output_type"], start=start, limit=2
        )
        assert len(page.items) <= 2
        assert page.read_units > 0 or not page.items
        seen += [dict(item) for item in page.items]
        for item in page.items:  # the sweep deletes what it read before the next page
            query = LinkQuery("speech_outputs", "transcript_id", item["transcript_id"], None)
            assert await stores.items.delete_linked(query, item) is not None
        if (start := page.start) is None:
            break
    assert sorted(str(item["transcript_id"]) for item in seen) == ids
    assert all(set(item) == {"transcript_id", "output_type"} for item in seen)
