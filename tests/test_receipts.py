"""Every finished deletion gets a receipt: counts by kind, its targets re-checked at once, identifiers only;
the record stays pending until the receipt is written, and a redelivered record writes the same receipt."""

from __future__ import annotations

import dataclasses
import decimal
import json
from collections.abc import AsyncGenerator, Mapping, Sequence

import aiohttp
import pytest
import structlog.testing
from conftest import World

from reconciler.confirm import find_receipt, parse_key, receipt_json
from reconciler.core.dynamodb_json import Image
from reconciler.core.outcomes import Deleted, Pending
from reconciler.core.plan import key_hash
from reconciler.core.records import StreamRecord, Undecodable, decode_record
from reconciler.core.scope import S3Location
from reconciler.errors import DecodeError, TransientError
from reconciler.observability.http import HttpServer
from reconciler.ports import ArtifactStore, ItemStore, ObjectVersion, Receipt, VersionPage
from reconciler.processing import Origin, RecordProcessor
from reconciler.receipts import MAX_STORED_TARGETS, ReceiptWriter, Targets
from reconciler.testing import FakeArtifactStore, FakeItemStore, FakeReceiptStore, stream_record

ORIGIN = Origin("transcripts", "arn:aws:dynamodb:us-east-1:1:table/transcripts/stream/x", "shardId-0001")
SECRET = "SECRET-TITLE-7f3a9c"  # image content that must never reach a receipt


def _processor(
    world: World,
    store: FakeReceiptStore,
    artifacts: ArtifactStore | None = None,
    items: ItemStore | None = None,
) -> RecordProcessor:
    """The world's pipeline writing receipts to ``store``; the re-check reads ``artifacts`` and ``items``
    (the world's own unless given)."""
    writer = ReceiptWriter(
        store,
        artifacts or world.artifacts,
        items or world.items,
        world.rules,
        world.metrics,
        world.clock,
    )
    return RecordProcessor(
        rules=world.rules,
        executor=world.executor,
        dead_letters=world.dead_letters,
        metrics=world.metrics,
        clock=world.clock,
        items=world.items,
        receipts=writer,
    )


def _removal(world: World, transcript: str = "tr-1", seq: int = 1, **image: object) -> StreamRecord:
    old = {**world.image("acct-1", transcript), "title": SECRET, **image}
    raw = stream_record(
        seq,
        old_image=old,
        keys={"transcript_id": transcript},
        identity="botocore",
        created_at=world.clock.now,
    )
    record = decode_record(raw)
    assert not isinstance(record, Undecodable)
    return record


def _receipt(store: FakeReceiptStore, transcript: str = "tr-1") -> Receipt:
    return store.receipts[("transcripts", key_hash("transcripts", {"transcript_id": transcript}))]


async def test_a_deletion_gets_a_receipt_with_counts_by_kind_and_a_verified_recheck(world: World) -> None:
    world.add_transcript("acct-1", "tr-1")
    world.artifacts.mark_deleted("stt-transcripts", "acct-1/tr-1/captions.vtt")
    store = FakeReceiptStore()
    record = _removal(world)

    outcome = await _processor(world, store).process(ORIGIN, record)

    assert isinstance(outcome, Deleted)
    receipt = _receipt(store)
    # 2 audio versions (an exact object), 2x2 transcript files and the marker (a prefix), 2 outputs (exact),
    # one LLM input (under its request's prefix), 3 linked items.
    assert dataclasses.asdict(receipt.counts) == {
        "object_versions": 9,
        "delete_markers": 1,
        "under_prefixes": 6,
        "linked_items": 3,
        "absent": 0,
    }
    assert receipt.cause == "ttl"
    assert receipt.key == {"transcript_id": "tr-1"}
    assert receipt.event == f"{ORIGIN.stream_arn}#{ORIGIN.shard_id}#{record.sequence_number}"
    assert receipt.event_time == record.created_at
    assert receipt.completed_at == world.clock.now
    assert receipt.expires_at is not None
    assert int(receipt.expires_at.timestamp()) == 1_764_000_000
    assert (receipt.verification, receipt.leftover, receipt.dead_letter_id) == ("verified", 0, None)
    assert {str(o) for o in receipt.objects} == {
        "s3://stt-uploads/acct-1/tr-1/audio.wav",
        "s3://stt-understanding/acct-1/tr-1/translation.json",
        "s3://stt-understanding/acct-1/tr-1/speaker_identification.json",
    }
    assert {str(p) for p in receipt.prefixes} == {
        "s3://stt-transcripts/acct-1/tr-1/",
        "s3://stt-llm-gateway/acct-1/tr-1-llm0/",
    }
    assert {(i.table, tuple(i.key.values())) for i in receipt.items} == {
        ("speech_outputs", ("tr-1", "translation")),
        ("speech_outputs", ("tr-1", "speaker_identification")),
        ("llm_requests", ("tr-1-llm0",)),
    }
    assert world.sample("reconciler_receipts_total", table="transcripts", verification="verified") == 1


async def test_a_receipt_holds_identifiers_never_image_content(world: World) -> None:
    world.add_transcript("acct-1", "tr-1")
    store = FakeReceiptStore()
    with structlog.testing.capture_logs() as logs:
        await _processor(world, store).process(ORIGIN, _removal(world))

    receipt = _receipt(store)
    assert SECRET not in repr(receipt)
    assert SECRET not in json.dumps(receipt_json(receipt))
    assert SECRET not in repr(logs)


async def test_a_receipt_that_cannot_be_written_keeps_the_record_pending_then_is_written_as_it_was(
    world: World,
) -> None:
    """The deletion is done, not lost: the retry finds everything gone and writes the first run's receipt."""
    world.add_transcript("acct-1", "tr-1")
    store = FakeReceiptStore(fail=True)
    processor = _processor(world, store)
    record = _removal(world)

    with structlog.testing.capture_logs() as logs:
        first = await processor.process(ORIGIN, record)

    assert isinstance(first, Pending)
    assert "receipt not written" in first.error
    assert world.held_by("acct-1", "tr-1") == 0  # deleted all the same
    assert [e["event"] for e in logs if e["event"].startswith(("receipt.", "deletion.completed"))] == [
        "receipt.write_failed"
    ]
    assert world.sample("reconciler_failures_total", stage="receipt", error="TransientError") == 1

    store.fail = False
    assert isinstance(await processor.process(ORIGIN, record), Deleted)
    receipt = _receipt(store)
    assert receipt.counts.object_versions == 9  # the first run's, not the retry's zero
    assert receipt.counts.linked_items == 3
    assert receipt.counts.absent == 0
    assert world.sample("reconciler_receipts_total", table="transcripts", verification="verified") == 1


async def test_a_retry_that_deletes_more_after_an_unwritten_receipt_adds_to_the_first_runs_counts(
    world: World,
) -> None:
    world.add_transcript("acct-1", "tr-1")
    store = FakeReceiptStore(fail=True)
    processor = _processor(world, store)
    record = _removal(world)
    assert isinstance(await processor.process(ORIGIN, record), Pending)
    world.artifacts.put("stt-transcripts", "acct-1/tr-1/late.json")  # written after the first run

    store.fail = False
    assert isinstance(await processor.process(ORIGIN, record), Deleted)

    receipt = _receipt(store)
    assert (receipt.counts.object_versions, receipt.counts.under_prefixes) == (10, 6)
    assert receipt.verification == "verified"
    assert world.held_by("acct-1", "tr-1") == 0


async def test_a_redelivered_record_writes_the_same_receipt_and_counts_it_once(world: World) -> None:
    world.add_transcript("acct-1", "tr-1")
    store = FakeReceiptStore()
    processor = _processor(world, store)
    record = _removal(world)

    await processor.process(ORIGIN, record)
    first = _receipt(store)
    world.clock.advance(60)
    assert isinstance(await processor.process(ORIGIN, record), Deleted)

    assert _receipt(store) == first
    assert store.writes == 2
    assert world.sample("reconciler_receipts_total", table="transcripts", verification="verified") == 1


async def test_a_later_deletion_of_the_same_key_gets_its_own_receipt(world: World) -> None:
    world.add_transcript("acct-1", "tr-1")
    store = FakeReceiptStore()
    processor = _processor(world, store)
    await processor.process(ORIGIN, _removal(world))
    world.add_transcript("acct-1", "tr-1", versions=1)  # written again, then deleted again
    world.clock.advance(60)
    later = decode_record(
        stream_record(
            2,
            old_image=world.image("acct-1", "tr-1"),
            created_at=world.clock.now,
            identity="botocore",
        )
    )
    assert not isinstance(later, Undecodable)

    assert isinstance(await processor.process(ORIGIN, later), Deleted)
    receipt = _receipt(store)
    assert receipt.event.endswith(later.sequence_number)
    assert receipt.counts.object_versions == 6


class _LateWriter:
    """A writer that lands after the purge's last listing: the first re-check listing finds its version."""

    def __init__(self, real: FakeArtifactStore, bucket: str, key: str) -> None:
        self._real = real
        self._plant: tuple[str, str] | None = (bucket, key)

    async def list_versions(
        self, location: S3Location, *, exact: bool, after: ObjectVersion | None = None
    ) -> AsyncGenerator[VersionPage, None]:
        if self._plant is not None:
            self._real.put(*self._plant)
            self._plant = None
        async for page in self._real.list_versions(location, exact=exact, after=after):
            yield page

    async def delete_versions(self, bucket: str, versions: list[ObjectVersion]) -> object:
        raise AssertionError("the re-check never deletes")  # pragma: no cover


async def test_a_leftover_found_right_after_the_deletion_is_recorded_counted_and_named(world: World) -> None:
    world.add_transcript("acct-1", "tr-1")
    store = FakeReceiptStore()
    late = _LateWriter(world.artifacts, "stt-transcripts", "acct-1/tr-1/late.json")
    processor = _processor(world, store, artifacts=late)  # type: ignore[arg-type]

    with structlog.testing.capture_logs() as logs:
        outcome = await processor.process(ORIGIN, _removal(world))

    assert isinstance(outcome, Deleted)
    receipt = _receipt(store)
    assert (receipt.verification, receipt.leftover) == ("leftover", 1)
    assert receipt.verified_at == world.clock.now
    assert receipt_json(receipt)["verification"] == "leftover (1)"
    assert world.sample("reconciler_verification_failures_total", table="transcripts") == 1
    assert world.sample("reconciler_receipts_total", table="transcripts", verification="leftover") == 1
    (event,) = [e for e in logs if e["event"] == "receipt.leftover"]
    assert event["targets"][0].startswith("s3://stt-transcripts/acct-1/tr-1/late.json ")


class _Unreadable(FakeItemStore):
    async def get_many(self, table: str, keys: Sequence[Mapping[str, object]]) -> list[Image | None]:
        raise TransientError("ProvisionedThroughputExceededException")


async def test_a_recheck_that_cannot_read_leaves_the_receipt_not_checked_and_the_deletion_final(
    world: World,
) -> None:
    world.add_transcript("acct-1", "tr-1")
    store = FakeReceiptStore()

    outcome = await _processor(world, store, items=_Unreadable()).process(ORIGIN, _removal(world))

    assert isinstance(outcome, Deleted)
    receipt = _receipt(store)
    assert (receipt.verification, receipt.verified_at) == ("not_checked", None)
    assert receipt_json(receipt)["verification"] == "not checked"
    assert world.sample("reconciler_receipts_total", table="transcripts", verification="not_checked") == 1


async def test_refused_targets_name_the_dead_letter_that_holds_them(world: World) -> None:
    world.add_transcript("acct-1", "tr-1")
    world.add_transcript("acct-2", "victim")
    store = FakeReceiptStore()
    record = _removal(world, audio_url="s3://stt-uploads/acct-2/victim/audio.wav")

    assert isinstance(await _processor(world, store).process(ORIGIN, record), Deleted)

    receipt = _receipt(store)
    (letter_id,) = world.dead_letters.letters
    assert (receipt.dead_letter_id, receipt.dead_letter_kind) == (letter_id, "unsafe")
    assert receipt.dead_letter_status == "pending"
    assert receipt_json(receipt)["dead_letter"] == {"id": letter_id, "kind": "unsafe", "status": "pending"}
    assert "s3://stt-uploads/acct-2/victim/audio.wav" not in {str(o) for o in receipt.objects}


def test_a_receipt_stores_at_most_its_cap_of_targets_and_counts_the_rest() -> None:
    many = tuple(S3Location("b", f"k/{n}") for n in range(MAX_STORED_TARGETS + 500))
    stored, omitted = Targets(objects=many).capped()
    assert (len(stored.objects), omitted) == (MAX_STORED_TARGETS, 500)
    long_keys = tuple(S3Location("b", "k" * 1000 + str(n)) for n in range(300))
    stored, omitted = Targets(prefixes=long_keys).capped()
    assert 0 < len(stored.prefixes) < 300
    assert len(stored.prefixes) + omitted == 300


# --- finding a receipt by key, and the HTTP endpoint ----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('{"transcript_id": "tr-1"}', {"transcript_id": "tr-1"}),
        ('{"transcript_id": {"S": "tr-1"}}', {"transcript_id": "tr-1"}),
        ('{"n": 5.0}', {"n": decimal.Decimal(5)}),
        ('{"n": {"N": "1.50"}}', {"n": decimal.Decimal("1.5")}),
        ('{"b": {"B": "AAE="}}', {"b": b"\x00\x01"}),
    ],
)
def test_a_key_is_given_as_json_of_plain_or_dynamodb_values_with_numbers_as_dynamodb_writes_them(
    text: str, key: dict[str, object]
) -> None:
    parsed = parse_key(text)
    assert parsed == key
    assert isinstance(parsed, dict)
    assert key_hash("t", parsed) == key_hash("t", key)


@pytest.mark.parametrize("text", ["", "tr-1", "[1]", "{}", '{"a": true}', '{"a": [1]}', '{"a": null}'])
def test_a_key_that_is_neither_a_key_hash_nor_key_json_is_refused(text: str) -> None:
    with pytest.raises(DecodeError):
        parse_key(text)


@pytest.fixture
async def served(world: World) -> AsyncGenerator[tuple[str, FakeReceiptStore], None]:
    """The receipt of tr-1's deletion, and one of a key holding '/' and '%', on a free loopback port."""
    world.add_transcript("acct-1", "tr-1")
    store = FakeReceiptStore()
    await _processor(world, store).process(ORIGIN, _removal(world))
    odd = dataclasses.replace(_receipt(store), key={"transcript_id": "tr/1%"})
    await store.put(odd)
    server = await HttpServer(
        world.registry, "127.0.0.1", 0, lambda: (True, "ok"), lambda: (True, "ok"), store
    ).start()
    try:
        yield f"http://127.0.0.1:{server.port}/deletions/transcripts/", store
    finally:
        await server.close()


async def _get(url: str) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.json()


async def test_get_deletions_answers_a_receipt_by_key_hash_and_by_url_encoded_key_json(
    served: tuple[str, FakeReceiptStore],
) -> None:
    base, store = served
    hashed = key_hash("transcripts", {"transcript_id": "tr-1"})
    status, body = await _get(base + hashed)
    assert (status, body) == (200, receipt_json(_receipt(store)))
    assert (await _get(base + "%7B%22transcript_id%22%3A%20%22tr-1%22%7D")) == (status, body)
    assert body["key"] == {"transcript_id": "tr-1"}
    assert body["key_hash"] == hashed
    assert SECRET not in json.dumps(body)
    odd = key_hash("transcripts", {"transcript_id": "tr/1%"})
    status, body = await _get(base + "%7B%22transcript_id%22%3A%20%22tr%2F1%25%22%7D")
    assert (status, body["key_hash"]) == (200, odd)
    assert await find_receipt(store, "transcripts", odd) == await find_receipt(
        store, "transcripts", '{"transcript_id": "tr/1%"}'
    )


async def test_get_deletions_is_404_for_an_unknown_key_400_for_a_bad_one_503_when_unreadable(
    served: tuple[str, FakeReceiptStore],
) -> None:
    base, store = served
    assert (await _get(base + "%7B%22transcript_id%22%3A%22nope%22%7D"))[0] == 404
    assert (await _get(base + "0123456789abcdef"))[0] == 404
    assert (await _get(base.replace("/transcripts/", "/other/") + "%7B%22a%22%3A%22b%22%7D"))[0] == 404
    assert (await _get(base + "not-a-key"))[0] == 400
    store.fail = True
    assert (await _get(base + "0123456789abcdef"))[0] == 503
