"""Receipts of redriven letters, on the in-memory fakes: a redrive that finishes a letter's work writes or
updates the item's receipt (counts added, the redrive's time, a fresh re-check, the letter ``redriven``)
before it resolves the letter; a receipt it cannot write leaves the letter pending; a dry run writes nothing,
and a later deletion's receipt stays."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from conftest import World

from reconciler.core.outcomes import Pending
from reconciler.core.plan import key_hash
from reconciler.core.records import StreamRecord, decode_record
from reconciler.core.scope import S3Location
from reconciler.ports import DeadLetter, ItemKey, Receipt, ReceiptCounts
from reconciler.processing import Attempts, Origin
from reconciler.receipts import ReceiptWriter, Targets
from reconciler.redrive import Verdict
from reconciler.testing import FakeReceiptStore, stream_record

ORIGIN = Origin("transcripts", "arn:aws:dynamodb:us-east-1:1:table/transcripts/stream/x", "shardId-1")
HASHED = key_hash("transcripts", {"transcript_id": "tr-1"})
EVENT = f"{ORIGIN.stream_arn}#{ORIGIN.shard_id}#{1:021d}"
EARLY = dt.datetime(2025, 11, 24, 15, 0, tzinfo=dt.UTC)
AUDIO = S3Location("stt-uploads", "acct-1/tr-1/audio.wav")


async def _failed_letter(world: World) -> DeadLetter:
    """tr-1's record kept failing after its audio was deleted, and was given up."""
    world.add_transcript("acct-1", "tr-1", versions=3)
    record = decode_record(stream_record(1, old_image=world.image("acct-1", "tr-1"), identity="botocore"))
    assert isinstance(record, StreamRecord)
    world.artifacts.buckets["stt-uploads"].clear()  # the first attempt deleted the audio
    now = world.clock.now
    error = Pending(record.sequence_number, "AWS call failed after retries: SlowDown")
    await world.processor.give_up(ORIGIN, record, error, Attempts(3, now, now))
    (letter,) = world.dead_letters.letters.values()
    world.clock.advance(3600)
    return letter


def _written_by_the_worker(**changes: object) -> Receipt:
    """A receipt the worker wrote for tr-1's record, holding an unsafe letter."""
    receipt = Receipt(
        table="transcripts",
        key={"transcript_id": "tr-1"},
        cause="ttl",
        event=EVENT,
        event_time=EARLY,
        completed_at=EARLY + dt.timedelta(seconds=60),
        counts=ReceiptCounts(object_versions=3, linked_items=1, absent=1),
        verification="verified",
        expires_at=EARLY - dt.timedelta(hours=1),
        verified_at=EARLY + dt.timedelta(seconds=61),
        dead_letter_id=f"{EVENT}#unsafe",
        dead_letter_kind="unsafe",
        dead_letter_status="pending",
        objects=(AUDIO,),
        items=(ItemKey("speech_outputs", {"transcript_id": "tr-1", "output_type": "summary"}),),
    )
    return dataclasses.replace(receipt, **changes)  # type: ignore[arg-type]


def _receipts(world: World, verification: str) -> float:
    return world.sample("reconciler_receipts_total", table="transcripts", verification=verification)


async def test_a_redriven_letter_without_a_receipt_gets_one_saying_redriven_and_verified(
    world: World,
) -> None:
    store = FakeReceiptStore()
    letter = await _failed_letter(world)

    outcome = await world.redriver(receipts=store).redrive(letter.letter_id)

    assert outcome.verdict is Verdict.RESOLVED
    receipt = store.receipts["transcripts", HASHED]
    assert (receipt.dead_letter_id, receipt.dead_letter_kind) == (letter.letter_id, "failed")
    assert receipt.dead_letter_status == "redriven"
    assert (receipt.event, receipt.cause) == (EVENT, "ttl")
    assert receipt.completed_at == receipt.verified_at == world.clock.now
    assert receipt.event_time <= world.dead_letters.letters[letter.letter_id].created_at
    assert (receipt.verification, receipt.leftover) == ("verified", 0)
    tally = outcome.tally
    assert (receipt.counts.object_versions, receipt.counts.linked_items) == (
        tally.object_versions,
        tally.items,
    )
    assert (receipt.counts.object_versions, receipt.counts.linked_items, receipt.counts.absent) == (9, 3, 1)
    assert AUDIO in receipt.objects  # planned, gone already: re-checked all the same
    # audio and 2 outputs; the transcript and LLM request prefixes; 2 outputs and 1 LLM request.
    assert len(Targets.of(receipt)) == 3 + 2 + 3
    assert _receipts(world, "verified") == 1
    assert world.dead_letters.letters[letter.letter_id].status == "resolved"


async def test_a_receipt_of_the_same_record_is_updated_counts_added_and_targets_rechecked(
    world: World,
) -> None:
    store = FakeReceiptStore()
    letter = await _failed_letter(world)
    await store.put(_written_by_the_worker())

    outcome = await world.redriver(receipts=store).redrive(letter.letter_id)

    assert outcome.verdict is Verdict.RESOLVED
    receipt = store.receipts["transcripts", HASHED]
    assert receipt.dead_letter_status == "redriven"
    assert (receipt.dead_letter_id, receipt.dead_letter_kind) == (letter.letter_id, "failed")
    assert receipt.completed_at == world.clock.now
    assert (receipt.event_time, receipt.expires_at) == (EARLY, EARLY - dt.timedelta(hours=1))
    assert receipt.counts == ReceiptCounts(
        object_versions=3 + 9, delete_markers=0, under_prefixes=0 + 7, linked_items=1 + 3, absent=1
    )
    assert ItemKey("speech_outputs", {"transcript_id": "tr-1", "output_type": "summary"}) in receipt.items
    assert (receipt.verification, receipt.leftover) == ("verified", 0)
    assert _receipts(world, "verified") == 0  # counted when the worker first wrote it


async def test_the_recheck_of_an_updated_receipt_covers_the_earlier_targets_too(world: World) -> None:
    store = FakeReceiptStore()
    letter = await _failed_letter(world)
    earlier = S3Location("stt-uploads", "acct-1/tr-1/old.wav")
    await store.put(_written_by_the_worker(objects=(AUDIO, earlier)))
    world.artifacts.put(earlier.bucket, earlier.key)  # written back after the worker's deletion

    assert (await world.redriver(receipts=store).redrive(letter.letter_id)).verdict is Verdict.RESOLVED

    receipt = store.receipts["transcripts", HASHED]
    assert (receipt.verification, receipt.leftover) == ("leftover", 1)
    assert world.sample("reconciler_verification_failures_total", table="transcripts") == 1


@pytest.mark.parametrize(
    ("where", "after_first_attempt"),
    [
        (f"{ORIGIN.stream_arn}#{ORIGIN.shard_id}#{5:021d}", False),  # the sequence number says later
        (f"{ORIGIN.stream_arn}#shardId-2#{1:021d}", True),  # another shard: only the time can
    ],
    ids=["a later record of the shard", "a record of another shard after the letter's first attempt"],
)
async def test_a_later_deletions_receipt_stays_and_the_letter_is_resolved(
    world: World, where: str, *, after_first_attempt: bool
) -> None:
    store = FakeReceiptStore()
    letter = await _failed_letter(world)
    later = _written_by_the_worker(event=where, event_time=world.clock.now if after_first_attempt else EARLY)
    await store.put(later)

    assert (await world.redriver(receipts=store).redrive(letter.letter_id)).verdict is Verdict.RESOLVED

    assert store.receipts["transcripts", HASHED] == later


async def test_a_receipt_that_cannot_be_written_leaves_the_letter_pending_until_a_later_redrive(
    world: World,
) -> None:
    store = FakeReceiptStore(fail=True)
    letter = await _failed_letter(world)

    failed = await world.redriver(receipts=store).redrive(letter.letter_id)

    assert (failed.verdict, failed.detail) == (Verdict.FAILED, "left pending: its receipt was not written")
    assert world.dead_letters.letters[letter.letter_id].status == "pending"
    store.fail = False
    assert (await world.redriver(receipts=store).redrive(letter.letter_id)).verdict is Verdict.RESOLVED
    assert store.receipts["transcripts", HASHED].dead_letter_status == "redriven"


async def test_a_dry_run_redrive_writes_no_receipt(world: World) -> None:
    store = FakeReceiptStore()
    letter = await _failed_letter(world)

    assert (
        await world.redriver(dry_run=True, receipts=store).redrive(letter.letter_id)
    ).verdict is Verdict.PLANNED

    assert (store.writes, store.receipts) == (0, {})


async def test_a_refused_unsafe_letter_leaves_its_receipt_pending(world: World) -> None:
    store = FakeReceiptStore()
    world.add_transcript("acct-1", "tr-1")
    world.add_transcript("acct-2", "tr-9")
    image = world.image("acct-1", "tr-1") | {"audio_url": "s3://stt-uploads/acct-2/tr-9/audio.wav"}
    record = decode_record(stream_record(1, old_image=image, identity="botocore"))
    assert isinstance(record, StreamRecord)
    writer = ReceiptWriter(store, world.artifacts, world.items, world.rules, world.metrics, world.clock)
    world.processor._receipts = writer
    await world.processor.process(ORIGIN, record)
    (letter,) = world.dead_letters.letters.values()
    written = store.receipts["transcripts", HASHED]
    assert (written.dead_letter_id, written.dead_letter_status) == (letter.letter_id, "pending")

    assert (await world.redriver(receipts=store).redrive(letter.letter_id)).verdict is Verdict.REFUSED

    assert store.receipts["transcripts", HASHED] == written
