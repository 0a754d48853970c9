"""Redrive on the in-memory fakes: a dead letter's stored plan runs again through the same checks, and the
letter is resolved only when every target is gone. Nothing runs for a plan that fails a check, a letter of a
kind without a plan, or an item written again; a failure leaves the letter pending."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
from conftest import World

from reconciler.core.letters import LetterPlan
from reconciler.core.outcomes import Deleted, Pending
from reconciler.core.records import StreamRecord, decode_record
from reconciler.core.scope import S3Location
from reconciler.ports import DeadLetter, LetterKind
from reconciler.processing import Attempts, Origin
from reconciler.redrive import Verdict
from reconciler.testing import stream_record

ORIGIN = Origin("transcripts", "arn:aws:dynamodb:us-east-1:1:table/transcripts/stream/x", "shardId-1")
PLANTED = "PLANTED-5c1e-never-in-a-letter"


def _record(world: World, sequence: int, transcript: str, **image: object) -> StreamRecord:
    old = world.image("acct-1", transcript) | {"customer_note": PLANTED} | image
    record = decode_record(stream_record(sequence, old_image=old, identity="botocore"))
    assert isinstance(record, StreamRecord)
    return record


async def _failed_letter(world: World, transcript: str = "tr-1", sequence: int = 1) -> DeadLetter:
    """A record that kept failing and was given up: nothing of it was deleted."""
    world.add_transcript("acct-1", transcript, versions=3)
    record = _record(world, sequence, transcript)
    now = world.clock.now
    error = Pending(record.sequence_number, "AWS call failed after retries: SlowDown")
    await world.processor.give_up(ORIGIN, record, error, Attempts(3, now, now))
    (letter,) = [
        x for x in world.dead_letters.letters.values() if x.sequence_number == record.sequence_number
    ]
    return letter


def _redriven(world: World, kind: str, outcome: str) -> float:
    return world.sample("reconciler_dead_letters_redriven_total", kind=kind, outcome=outcome)


async def test_a_failed_letter_is_redriven_deleting_its_remaining_targets_then_resolved(world: World) -> None:
    world.add_transcript("acct-1", "tr-10")  # its prefixes start with tr-1's, without the slash
    world.add_transcript("acct-1", "tr-2")
    letter = await _failed_letter(world)
    siblings = (world.held_by("acct-1", "tr-10"), world.held_by("acct-1", "tr-2"))
    assert world.held_by("acct-1", "tr-1") > 0
    assert letter.plan is not None
    assert PLANTED not in repr(letter)  # identifiers and URIs only
    world.clock.advance(3600)

    outcome = await world.redriver().redrive(letter.letter_id)

    assert (outcome.verdict, outcome.detail) == (Verdict.RESOLVED, "every target is gone")
    # 3 audio + 2x3 files + 2 outputs + 1 LLM input versions, and 3 linked items.
    assert (outcome.tally.object_versions, outcome.tally.items) == (12, 3)
    assert world.held_by("acct-1", "tr-1") == 0
    assert (world.held_by("acct-1", "tr-10"), world.held_by("acct-1", "tr-2")) == siblings
    held = world.dead_letters.letters[letter.letter_id]
    assert (held.status, held.resolved_at) == ("resolved", world.clock.now)
    assert _redriven(world, "failed", "resolved") == 1

    again = await world.redriver().redrive(letter.letter_id)
    assert again.verdict is Verdict.SKIPPED
    assert again.detail.startswith("resolved already")
    assert again.tally.object_versions == again.tally.items == 0
    assert world.dead_letters.letters[letter.letter_id].resolved_at == held.resolved_at
    assert _redriven(world, "failed", "skipped") == 1


def _other_item(plan: LetterPlan) -> LetterPlan:
    """The scopes and targets of another account's transcript, kept consistent with each other."""
    other = S3Location("stt-uploads", "acct-2/tr-9/")
    return dataclasses.replace(
        plan, scopes=(other, *plan.scopes), objects=(S3Location(other.bucket, other.key + "audio.wav"),)
    )


TAMPERING: dict[str, Callable[[LetterPlan], LetterPlan]] = {
    "object outside its scope": lambda p: dataclasses.replace(
        p, objects=(*p.objects, S3Location("stt-uploads", "acct-2/tr-9/audio.wav"))
    ),
    "scope widened to the bucket": lambda p: dataclasses.replace(
        p,
        scopes=(S3Location("stt-uploads", "acct-2/"), *p.scopes),
        objects=(S3Location("stt-uploads", "acct-2/tr-9/audio.wav"),),
    ),
    "scope and target of another item": _other_item,
    "prefix of a sibling": lambda p: dataclasses.replace(
        p,
        scopes=(*p.scopes, S3Location("stt-transcripts", "acct-1/tr-10/")),
        prefixes=(S3Location("stt-transcripts", "acct-1/tr-10/"),),
    ),
    "link to a sibling": lambda p: dataclasses.replace(
        p, links=tuple(dataclasses.replace(q, value="tr-10") for q in p.links)
    ),
}


@pytest.mark.parametrize("tamper", TAMPERING.values(), ids=TAMPERING.keys())
async def test_an_unsafe_tampered_plan_is_refused_before_any_call_and_stays_pending(
    world: World, tamper: Callable[[LetterPlan], LetterPlan]
) -> None:
    world.add_transcript("acct-2", "tr-9")
    world.add_transcript("acct-1", "tr-10")
    letter = await _failed_letter(world)
    assert letter.plan is not None
    world.dead_letters.letters[letter.letter_id] = dataclasses.replace(letter, plan=tamper(letter.plan))
    held = {t: world.held_by(a, t) for a, t in (("acct-1", "tr-1"), ("acct-2", "tr-9"), ("acct-1", "tr-10"))}

    outcome = await world.redriver().redrive(letter.letter_id)

    assert outcome.verdict is Verdict.REFUSED
    assert outcome.detail.startswith("plan refused by the scope check, nothing ran")
    assert {
        t: world.held_by(a, t) for a, t in (("acct-1", "tr-1"), ("acct-2", "tr-9"), ("acct-1", "tr-10"))
    } == held
    assert world.dead_letters.letters[letter.letter_id].status == "pending"
    assert _redriven(world, "failed", "refused") == 1


async def test_an_unsafe_letter_is_checked_again_its_refused_target_stays_refused_and_pending(
    world: World,
) -> None:
    world.add_transcript("acct-1", "tr-1")
    world.add_transcript("acct-2", "tr-9")
    victim = world.held_by("acct-2", "tr-9")
    record = _record(world, 1, "tr-1", audio_url="s3://stt-uploads/acct-2/tr-9/audio.wav")
    assert isinstance(await world.processor.process(ORIGIN, record), Deleted)
    (letter,) = world.dead_letters.letters.values()
    assert letter.kind == "unsafe"

    outcome = await world.redriver().redrive(letter.letter_id)

    assert outcome.verdict is Verdict.REFUSED
    assert "s3://stt-uploads/acct-2/tr-9/audio.wav: out_of_scope" in outcome.detail
    assert world.held_by("acct-2", "tr-9") == victim
    assert world.dead_letters.letters[letter.letter_id].status == "pending"
    assert _redriven(world, "unsafe", "refused") == 1


@pytest.mark.parametrize("kind", ["trimmed", "undecodable", "no_image", "recreated", "failed"])
async def test_kinds_without_a_plan_to_run_are_not_redriven_and_nothing_runs(
    world: World, kind: LetterKind
) -> None:
    """``failed`` here is a letter without a stored plan (written by an earlier release)."""
    plan = (await _failed_letter(world, "tr-1", 2)).plan if kind == "recreated" else None
    if plan is None:
        world.add_transcript("acct-1", "tr-1")
    before = world.held_by("acct-1", "tr-1")
    letter = DeadLetter(
        "transcripts", ORIGIN.stream_arn, "shardId-1", f"{1:021d}", "e1", kind, "why", world.clock.now,
        item_table="transcripts", item_key={"transcript_id": "tr-1"}, plan=plan,
    )  # fmt: skip
    await world.dead_letters.put(letter)

    outcome = await world.redriver().redrive(letter.letter_id)

    assert outcome.verdict is Verdict.NOT_REDRIVABLE
    assert world.held_by("acct-1", "tr-1") == before
    assert world.dead_letters.letters[letter.letter_id].status == "pending"
    assert _redriven(world, kind, "not_redrivable") == 1


async def test_an_item_written_again_under_its_key_is_refused_and_nothing_runs(world: World) -> None:
    letter = await _failed_letter(world)
    world.items.put("transcripts", {"transcript_id": "tr-1", "account_id": "acct-1"})
    before = world.held_by("acct-1", "tr-1")

    outcome = await world.redriver().redrive(letter.letter_id)

    assert outcome.verdict is Verdict.REFUSED
    assert world.held_by("acct-1", "tr-1") == before
    assert world.dead_letters.letters[letter.letter_id].status == "pending"


async def test_a_redrive_that_fails_leaves_the_letter_pending_and_a_later_one_finishes(world: World) -> None:
    letter = await _failed_letter(world)
    world.artifacts.refuse["acct-1/tr-1/audio.wav"] = "AccessDenied"  # a legal hold, say

    failed = await world.redriver().redrive(letter.letter_id)

    assert failed.verdict is Verdict.FAILED
    assert "S3 refused 3 versions under s3://stt-uploads/acct-1/tr-1/audio.wav" in failed.detail
    assert world.dead_letters.letters[letter.letter_id].status == "pending"
    assert _redriven(world, "failed", "failed") == 1

    del world.artifacts.refuse["acct-1/tr-1/audio.wav"]  # the hold is lifted
    assert (await world.redriver().redrive(letter.letter_id)).verdict is Verdict.RESOLVED
    assert world.held_by("acct-1", "tr-1") == 0


async def test_a_dry_run_names_what_would_go_and_changes_nothing(world: World) -> None:
    letter = await _failed_letter(world)
    before = world.held_by("acct-1", "tr-1")

    outcome = await world.redriver(dry_run=True).redrive(letter.letter_id)

    assert outcome.verdict is Verdict.PLANNED
    assert {p.where for p in outcome.planned} >= {"s3://stt-uploads/acct-1/tr-1/audio.wav", "speech_outputs"}
    assert world.held_by("acct-1", "tr-1") == before
    assert world.dead_letters.letters[letter.letter_id].status == "pending"
    assert _redriven(world, "failed", "resolved") == 0


async def test_only_pending_letters_of_a_kind_are_found_for_a_redrive_by_kind(world: World) -> None:
    first = await _failed_letter(world, "tr-1", 1)
    second = await _failed_letter(world, "tr-2", 2)
    await world.dead_letters.resolve(first.letter_id, world.clock.now)
    assert await world.redriver().pending("failed") == [second.letter_id]
    assert await world.redriver().pending("unsafe") == []


async def test_a_plan_too_large_for_a_letter_is_left_out_and_the_reason_says_so(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The letter must be written whatever the plan's size: without the plan, redrive has nothing to run."""
    monkeypatch.setattr("reconciler.processing.MAX_PLAN_CHARACTERS", 10)
    letter = await _failed_letter(world)
    assert letter.plan is None
    assert letter.reason.endswith(" characters)")
    assert "(plan too large to store: " in letter.reason
    assert (await world.redriver().redrive(letter.letter_id)).verdict is Verdict.NOT_REDRIVABLE
