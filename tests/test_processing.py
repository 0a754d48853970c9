"""One record in, one typed outcome out: deletions cascade, failures retry or dead-letter, lag is observed."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest
import structlog.testing
from conftest import World

from reconciler.core.classify import Cause
from reconciler.core.dynamodb_json import Image
from reconciler.core.outcomes import DeadLettered, Deleted, Filtered, Ignored, Pending
from reconciler.core.plan import LinkQuery, Unsafe, UnsafeReason, resolve
from reconciler.core.records import StreamRecord, Undecodable, decode_record
from reconciler.errors import TransientError
from reconciler.execution import Executor, ScopedUnsafe
from reconciler.ports import DeadLetter
from reconciler.processing import Origin, RecordProcessor
from reconciler.rules import Rules
from reconciler.testing import stream_record

ORIGIN = Origin("transcripts", "arn:aws:dynamodb:us-east-1:1:table/transcripts/stream/x", "shardId-0001")


def _record(world: World, seq: int, image: dict[str, object], **kwargs: object) -> StreamRecord | Undecodable:
    raw = stream_record(seq, old_image=image, keys={"transcript_id": image["transcript_id"]}, **kwargs)  # type: ignore[arg-type]
    return decode_record(raw)


async def test_a_ttl_removal_deletes_every_version_and_every_linked_item(world: World) -> None:
    world.add_transcript("acct-1", "tr-1", versions=3)
    world.add_transcript("acct-1", "tr-2")
    world.artifacts.mark_deleted("stt-transcripts", "acct-1/tr-1/transcript.json")  # a marker is not deletion
    before_other = world.held_by("acct-1", "tr-2")
    record = _record(world, 1, world.image("acct-1", "tr-1"), identity="botocore", created_at=world.clock.now)

    outcome = await world.processor.process(ORIGIN, record)

    assert isinstance(outcome, Deleted)
    assert outcome.cause is Cause.TTL
    assert world.held_by("acct-1", "tr-1") == 0
    assert world.held_by("acct-1", "tr-2") == before_other
    # 3 audio + 2x3 files + 2 outputs + 1 LLM input versions, the marker, and 3 linked items.
    assert outcome.tally.object_versions == 12
    assert outcome.tally.delete_markers == 1
    assert outcome.tally.items == 3
    assert world.sample("reconciler_artifacts_total", kind="item", outcome="deleted") == 3


async def test_lag_is_measured_from_ttl_expiry_for_ttl_and_from_the_event_for_requests(world: World) -> None:
    world.add_transcript("acct-1", "tr-1")
    world.add_transcript("acct-1", "tr-2")
    expiry = int(world.clock.now.timestamp()) - 3600
    ttl = _record(
        world, 1, world.image("acct-1", "tr-1", expiry), identity="botocore", created_at=world.clock.now
    )
    future = int(world.clock.now.timestamp()) + 86400
    request = _record(world, 2, world.image("acct-1", "tr-2", future), created_at=world.clock.now)
    world.clock.advance(2)

    assert isinstance(await world.processor.process(ORIGIN, ttl), Deleted)
    assert isinstance(await world.processor.process(ORIGIN, request), Deleted)

    lag = "reconciler_deletion_lag_seconds"
    assert world.sample(f"{lag}_sum", cause="ttl") == 3602
    assert world.sample(f"{lag}_sum", cause="requested") == 2
    assert world.sample("reconciler_ttl_service_lag_seconds_sum", cause="ttl") == 3600
    assert world.sample("reconciler_ttl_service_lag_seconds_count", cause="requested") == 0
    assert world.sample("reconciler_pipeline_lag_seconds_sum", cause="ttl") == 2


async def test_insert_and_modify_are_ignored_and_counted(world: World) -> None:
    world.add_transcript("acct-1", "t")
    before = world.held_by("acct-1", "t")
    for n, event in enumerate(("INSERT", "MODIFY"), start=1):
        record = decode_record(stream_record(n, event=event, old_image=world.image("acct-1", "t")))
        assert isinstance(await world.processor.process(ORIGIN, record), Ignored)
        records = world.sample(
            "reconciler_stream_records_total", table="transcripts", event=event, cause="none"
        )
        assert records == 1
    assert world.held_by("acct-1", "t") == before


async def test_an_out_of_scope_uri_is_never_executed_but_counted_and_dead_lettered(world: World) -> None:
    world.add_transcript("acct-1", "tr-1")
    world.add_transcript("acct-2", "victim")
    image = {**world.image("acct-1", "tr-1"), "audio_url": "s3://stt-uploads/acct-2/victim/audio.wav"}

    outcome = await world.processor.process(ORIGIN, _record(world, 1, image))

    assert isinstance(outcome, Deleted)
    assert [u.target for u in outcome.unsafe] == ["s3://stt-uploads/acct-2/victim/audio.wav"]
    # Its own artifacts all went: a finished deletion, not an unfinished one.
    assert world.sample("reconciler_deletions_unfinished_total", cause=outcome.cause.value) == 0
    assert world.sample("reconciler_deletion_lag_seconds_count", cause=outcome.cause.value) == 1
    assert "acct-2/victim/audio.wav" in world.artifacts.keys("stt-uploads")
    assert world.sample("reconciler_unsafe_targets_total", table="transcripts", reason="out_of_scope") == 1
    (letter,) = world.dead_letters.letters.values()
    assert letter.kind == "unsafe"
    assert letter.item_key == {"transcript_id": "tr-1"}
    assert letter.targets == ("out_of_scope: s3://stt-uploads/acct-2/victim/audio.wav",)


async def test_a_linked_item_with_a_refused_target_goes_once_the_refusal_is_recorded(world: World) -> None:
    """The customer data a linked item holds must not outlive its parent; the refused object stays."""
    world.add_transcript("acct-1", "tr-1")
    world.artifacts.put("stt-llm-gateway", "acct-9/other/input.json")  # someone else's
    world.items.tables["llm_requests"][0]["input_url"] = "s3://stt-llm-gateway/acct-9/other/input.json"
    written_before_delete: list[int] = []
    real = world.items.delete_linked

    async def watched(query: LinkQuery, key: Mapping[str, object]) -> Image | None:
        written_before_delete.append(len(world.dead_letters.letters))
        return await real(query, key)

    world.items.delete_linked = watched  # type: ignore[method-assign]
    outcome = await world.processor.process(ORIGIN, _record(world, 1, world.image("acct-1", "tr-1")))

    assert isinstance(outcome, Deleted)
    assert world.items.tables["llm_requests"] == []
    assert world.items.tables["speech_outputs"] == []
    assert "acct-9/other/input.json" in world.artifacts.keys("stt-llm-gateway")
    assert written_before_delete[-1] == 1  # the letter naming the refusal existed before the item went
    assert world.sample("reconciler_unsafe_targets_total", table="llm_requests", reason="out_of_scope") == 1
    (letter,) = world.dead_letters.letters.values()
    assert letter.kind == "unsafe"
    assert letter.targets[0].startswith("out_of_scope: s3://stt-llm-gateway/acct-9/other/input.json (linked")
    assert world.sample("reconciler_dead_letters_total", kind="unsafe") == 1


async def test_a_linked_item_with_a_refused_target_is_kept_while_the_refusal_cannot_be_recorded(
    world: World,
) -> None:
    world.add_transcript("acct-1", "tr-1")
    world.items.tables["llm_requests"][0]["input_url"] = "s3://stt-llm-gateway/acct-9/other/input.json"
    world.dead_letters.fail = True

    outcome = await world.processor.process(ORIGIN, _record(world, 1, world.image("acct-1", "tr-1")))

    assert isinstance(outcome, Pending)
    assert [r["request_id"] for r in world.items.tables["llm_requests"]] == ["tr-1-llm0"]  # the pointer


async def test_object_lock_refusals_are_final_and_dead_lettered(world: World) -> None:
    world.add_transcript("acct-1", "tr-1")
    world.artifacts.refuse["acct-1/tr-1/audio.wav"] = "AccessDenied"

    outcome = await world.processor.process(ORIGIN, _record(world, 1, world.image("acct-1", "tr-1")))

    assert isinstance(outcome, DeadLettered)
    assert "AccessDenied" in outcome.reason
    assert world.artifacts.keys("stt-transcripts") == set()  # everything else still went
    assert world.sample("reconciler_artifacts_total", kind="object_version", outcome="refused") == 2
    # Given up before every artifact was gone: late for the SLO, and never observed as a finished lag.
    assert outcome.cause is not None
    assert world.sample("reconciler_deletions_unfinished_total", cause=outcome.cause.value) == 1
    assert world.sample("reconciler_deletion_lag_seconds_count", cause=outcome.cause.value) == 0


async def test_a_retriable_failure_leaves_the_record_pending_with_its_pointer(world: World) -> None:
    world.add_transcript("acct-1", "tr-1")
    world.items.fail_deletes = True

    outcome = await world.processor.process(ORIGIN, _record(world, 1, world.image("acct-1", "tr-1")))

    assert isinstance(outcome, Pending)
    assert world.dead_letters.letters == {}
    assert len(world.items.tables["speech_outputs"]) == 2  # still there: the pointer to redo the work


async def test_an_undecodable_record_is_dead_lettered_with_metadata_only(world: World) -> None:
    raw = stream_record(5, old_image={"transcript_id": "t", "secret": "do not log"})
    raw["dynamodb"]["OldImage"]["secret"] = {"Z": "bad"}  # type: ignore[index]

    outcome = await world.processor.process(ORIGIN, decode_record(raw))

    assert isinstance(outcome, DeadLettered)
    (letter,) = world.dead_letters.letters.values()
    assert letter.kind == "undecodable"
    assert "do not log" not in repr(letter)
    assert letter.item_key == {"transcript_id": "t"}  # the Keys decode on their own: the item can be found


async def test_a_remove_without_old_image_is_dead_lettered(world: World) -> None:
    raw = stream_record(5, old_image={"transcript_id": "t"}, view_type="KEYS_ONLY")
    del raw["dynamodb"]["OldImage"]  # type: ignore[attr-defined]
    outcome = await world.processor.process(ORIGIN, decode_record(raw))
    assert isinstance(outcome, DeadLettered)
    assert next(iter(world.dead_letters.letters.values())).kind == "no_image"


async def test_a_dead_letter_that_cannot_be_written_keeps_the_record_pending(world: World) -> None:
    world.dead_letters.fail = True
    raw = stream_record(5, old_image={"transcript_id": "t"})
    raw["eventName"] = "UPSERT"
    assert isinstance(await world.processor.process(ORIGIN, decode_record(raw)), Pending)


async def test_redelivery_is_idempotent(world: World) -> None:
    world.add_transcript("acct-1", "tr-1")
    record = _record(world, 1, world.image("acct-1", "tr-1"))
    first = await world.processor.process(ORIGIN, record)
    again = await world.processor.process(ORIGIN, record)
    assert isinstance(first, Deleted)
    assert isinstance(again, Deleted)
    assert again.tally.object_versions == 0
    assert again.tally.absent == 2  # the audio object and the transcript prefix were already gone


async def test_logs_never_carry_item_content(world: World) -> None:
    """Events carry identifiers, key hashes and S3 URIs; never other attributes of the image."""
    world.add_transcript("acct-1", "tr-1")
    world.add_transcript("acct-1", "tr-2")
    image = {
        **world.image("acct-1", "tr-1"),
        "audio_url": "s3://stt-uploads/acct-9/other/audio.wav",  # refused, so logged as a target
        "customer_note": "PRIVATE-CONTENT",
    }
    with structlog.testing.capture_logs() as events:
        await world.processor.process(ORIGIN, _record(world, 1, image))
        world.items.fail_deletes = True
        await world.processor.process(ORIGIN, _record(world, 2, {**image, "transcript_id": "tr-2"}))

    names = [e["event"] for e in events]
    assert "deletion.unsafe_target" in names
    assert "deletion.completed" in names
    assert "deletion.retry" in names
    assert all("PRIVATE-CONTENT" not in repr(e) for e in events)
    assert all("customer_note" not in repr(e) for e in events)


async def test_an_unsafe_identifier_is_dead_lettered_not_reported_as_deleted(world: World) -> None:
    world.add_transcript("acct-1", "tr-1")
    outcome = await world.processor.process(ORIGIN, _record(world, 1, world.image("acct-1", "../tr-1")))
    assert isinstance(outcome, DeadLettered)
    assert world.held_by("acct-1", "tr-1") > 0
    assert world.sample("reconciler_deletion_lag_seconds_count", cause="requested") == 0
    assert (
        world.sample("reconciler_unsafe_targets_total", table="transcripts", reason="unsafe_identifier") == 1
    )


async def test_a_removal_of_an_item_that_exists_again_is_dead_lettered_untouched(world: World) -> None:
    world.add_transcript("acct-1", "tr-1")
    world.items.put("transcripts", world.image("acct-1", "tr-1"))  # written again after the REMOVE
    before = world.held_by("acct-1", "tr-1")
    outcome = await world.processor.process(ORIGIN, _record(world, 1, world.image("acct-1", "tr-1")))
    assert isinstance(outcome, DeadLettered)
    assert next(iter(world.dead_letters.letters.values())).kind == "recreated"
    assert world.held_by("acct-1", "tr-1") == before


LATE = "s3://stt-understanding/acct-1/tr-1/translation-v2.json"


def _changes_before_delete(world: World) -> None:
    """The translation output is rewritten to a new key between our read and our delete."""
    real = world.items.delete_linked

    async def changed_meanwhile(query: LinkQuery, key: Mapping[str, object]) -> Image | None:
        old = await real(query, key)
        if old is not None and old.get("output_type") == "translation":
            return {**old, "output_url": LATE}
        return old

    world.items.delete_linked = changed_meanwhile  # type: ignore[method-assign]


async def test_a_linked_item_changed_before_its_delete_has_its_new_targets_deleted_too(world: World) -> None:
    world.add_transcript("acct-1", "tr-1")
    world.artifacts.put("stt-understanding", "acct-1/tr-1/translation-v2.json")  # no prefix covers it
    _changes_before_delete(world)

    outcome = await world.processor.process(ORIGIN, _record(world, 1, world.image("acct-1", "tr-1")))

    assert isinstance(outcome, Deleted)
    assert world.held_by("acct-1", "tr-1") == 0


async def test_a_failure_on_a_changed_linked_item_is_final_because_its_pointer_is_gone(world: World) -> None:
    world.add_transcript("acct-1", "tr-1")
    world.artifacts.put("stt-understanding", "acct-1/tr-1/translation-v2.json")
    world.artifacts.refuse["acct-1/tr-1/translation-v2.json"] = "InternalError"  # never goes
    _changes_before_delete(world)

    outcome = await world.processor.process(ORIGIN, _record(world, 1, world.image("acct-1", "tr-1")))

    assert isinstance(outcome, DeadLettered)
    assert LATE in outcome.reason


async def test_an_item_written_again_during_the_deletion_is_dead_lettered(world: World) -> None:
    world.add_transcript("acct-1", "tr-1")
    answers = iter([None, world.image("acct-1", "tr-1")])  # absent before, present after

    async def get(table: str, key: Mapping[str, object]) -> Image | None:
        return next(answers)

    world.items.get = get  # type: ignore[method-assign]
    outcome = await world.processor.process(ORIGIN, _record(world, 1, world.image("acct-1", "tr-1")))
    assert isinstance(outcome, DeadLettered)
    assert next(iter(world.dead_letters.letters.values())).kind == "recreated"


async def test_a_redelivered_record_rewrites_its_dead_letter_and_counts_it_once(world: World) -> None:
    world.add_transcript("acct-1", "tr-1")
    image = {**world.image("acct-1", "tr-1"), "audio_url": "s3://stt-uploads/acct-2/victim/audio.wav"}
    for _ in range(3):
        await world.processor.process(ORIGIN, _record(world, 1, image))
    assert len(world.dead_letters.letters) == 1
    assert world.sample("reconciler_dead_letters_total", kind="unsafe") == 1


def _with_cascade(world: World, rules: Rules, cascade: dict[str, object]) -> RecordProcessor:
    data = rules.model_dump()
    data["tables"]["transcripts"]["cascade"] = cascade
    spec = Rules.model_validate(data).compile()
    executor = Executor(spec, world.artifacts, world.items, world.metrics)
    return RecordProcessor(
        rules=spec,
        executor=executor,
        dead_letters=world.dead_letters,
        metrics=world.metrics,
        clock=world.clock,
        items=world.items,
    )


async def test_a_migrations_delete_carrying_the_skip_marker_deletes_nothing_and_is_counted(
    world: World, rules: Rules
) -> None:
    processor = _with_cascade(world, rules, {"skip": [{"attribute": "deleted_by", "equals": "migration"}]})
    world.add_transcript("acct-1", "tr-1")
    world.add_transcript("acct-1", "tr-2")
    moved = {**world.image("acct-1", "tr-1", expires_at=1_900_000_000), "deleted_by": "migration"}

    outcome = await processor.process(ORIGIN, _record(world, 1, moved))

    assert isinstance(outcome, Filtered)
    assert outcome.cause is Cause.REQUESTED
    assert world.held_by("acct-1", "tr-1") > 0
    assert world.sample("reconciler_record_outcomes_total", table="transcripts", outcome="filtered") == 1
    # A TTL expiry still cascades.
    expired = await processor.process(
        ORIGIN, _record(world, 2, world.image("acct-1", "tr-2"), identity="botocore")
    )
    assert isinstance(expired, Deleted)
    assert world.held_by("acct-1", "tr-2") == 0


async def test_causes_that_do_not_cascade_and_identities_to_skip_are_filtered(
    world: World, rules: Rules
) -> None:
    processor = _with_cascade(
        world, rules, {"causes": ["ttl", "expired"], "skip": [{"principal": "dynamodb.amazonaws.com"}]}
    )
    world.add_transcript("acct-1", "tr-1")
    requested = await processor.process(
        ORIGIN, _record(world, 1, world.image("acct-1", "tr-1", expires_at=1_900_000_000))
    )
    by_service = await processor.process(
        ORIGIN, _record(world, 2, world.image("acct-1", "tr-1"), identity="lambda")
    )
    assert isinstance(requested, Filtered)
    assert requested.reason == "cause requested does not cascade"
    assert isinstance(by_service, Filtered)
    assert by_service.reason == "userIdentity matches a skip condition"
    assert world.held_by("acct-1", "tr-1") > 0


async def test_a_parent_scoped_child_pointing_outside_its_parents_scope_is_kept(world: World) -> None:
    """Reached through a parent-scoped link, a target outside the parent's scope says the child may be
    another parent's (a tampered link value): it is refused, recorded and the child stays."""
    world.add_transcript("acct-1", "tr-1")
    translation = next(o for o in world.items.tables["speech_outputs"] if o["output_type"] == "translation")
    translation["output_url"] = "s3://stt-understanding/acct-2/tr-9/translation.json"

    outcome = await world.processor.process(ORIGIN, _record(world, 1, world.image("acct-1", "tr-1")))

    assert isinstance(outcome, Deleted)
    assert [o["output_type"] for o in world.items.tables["speech_outputs"]] == ["translation"]
    (letter,) = world.dead_letters.letters.values()
    assert letter.targets[0].startswith("out_of_scope: s3://stt-understanding/acct-2/tr-9/translation.json")


async def test_a_linked_item_whose_refusal_names_no_target_is_kept(world: World) -> None:
    """A value that is not an s3:// URI is recorded by its attribute only: the item is its only record."""
    world.add_transcript("acct-1", "tr-1")
    world.items.tables["llm_requests"][0]["input_url"] = "https://stt-llm-gateway.s3.amazonaws.com/x/in.json"

    await world.processor.process(ORIGIN, _record(world, 1, world.image("acct-1", "tr-1")))

    assert [r["request_id"] for r in world.items.tables["llm_requests"]] == ["tr-1-llm0"]


async def test_refusals_accumulate_across_linked_items_and_redeliveries(world: World) -> None:
    """Every refusal of every deleted linked item stays named in the letter, even after a redelivery in
    which the items deleted the first time are gone."""
    world.add_transcript("acct-1", "tr-1")
    request = world.items.tables["llm_requests"][0]
    request["input_url"] = "s3://stt-llm-gateway/acct-9/a/in.json"
    world.items.put(
        "llm_requests",
        {**request, "request_id": "tr-1-llm1", "input_url": "s3://stt-llm-gateway/acct-9/b/in.json"},
    )
    real = world.items.delete_linked
    calls = 0

    async def second_fails_once(query: LinkQuery, key: Mapping[str, object]) -> Image | None:
        nonlocal calls
        calls += 1
        if calls == 4:  # the second LLM request, on the first delivery
            raise TransientError("throttled")
        return await real(query, key)

    world.items.delete_linked = second_fails_once  # type: ignore[method-assign]
    first = await world.processor.process(ORIGIN, _record(world, 1, world.image("acct-1", "tr-1")))
    again = await world.processor.process(ORIGIN, _record(world, 1, world.image("acct-1", "tr-1")))

    assert isinstance(first, Pending)
    assert isinstance(again, Deleted)
    assert world.items.tables["llm_requests"] == []
    (letter,) = world.dead_letters.letters.values()
    assert {t.split(" (")[0] for t in letter.targets} == {
        "out_of_scope: s3://stt-llm-gateway/acct-9/a/in.json",
        "out_of_scope: s3://stt-llm-gateway/acct-9/b/in.json",
    }
    assert world.sample("reconciler_dead_letters_total", kind="unsafe") == 1


async def test_the_recorder_counts_refusals_across_its_calls_against_the_cap(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nested linked items hand it only their own level's refusals: it adds them up, so the cap holds."""
    monkeypatch.setattr("reconciler.processing.MAX_LETTER_TARGETS", 1)
    record = _record(world, 1, world.image("acct-1", "tr-1"))
    assert isinstance(record, StreamRecord)
    plan = resolve(world.rules.tables["transcripts"], world.image("acct-1", "tr-1"))
    record_refusals = world.processor._recorder(ORIGIN, record, Cause.TTL, plan)
    first, second = (
        ScopedUnsafe("notes", {"note_id": n}, Unsafe(f"s3://b/{n}", UnsafeReason.OUT_OF_SCOPE, "outside"))
        for n in ("n1", "n2")
    )
    assert await record_refusals([first]) is True
    assert await record_refusals([second]) is False  # two in all: more than one letter may name
    (letter,) = world.dead_letters.letters.values()
    assert [t.split(" (")[0] for t in letter.targets] == ["out_of_scope: s3://b/n1"]


async def test_linked_items_recording_refusals_at_once_each_go_only_after_their_own_is_written(
    world: World,
) -> None:
    """With the executor's fan-out the recorder is called concurrently; no call returns before its refusals
    are in the letter, and the letter ends up naming every one."""
    world.add_transcript("acct-1", "tr-1")
    for n in range(20):
        url = f"s3://stt-llm-gateway/acct-9/other-{n}/input.json"  # someone else's
        world.items.put(
            "llm_requests",
            {"request_id": f"r{n}", "transcript_id": "tr-1", "account_id": "acct-1", "input_url": url},
        )
    slow_put = world.dead_letters.put

    async def interleaved(letter: DeadLetter) -> bool:
        await asyncio.sleep(0)  # let other linked items' calls in between
        return await slow_put(letter)

    world.dead_letters.put = interleaved  # type: ignore[method-assign]
    real = world.items.delete_linked
    missing: list[str] = []
    refusing = {f"r{n}" for n in range(20)}

    async def watched(query: LinkQuery, key: Mapping[str, object]) -> Image | None:
        named = " ".join(t for letter in world.dead_letters.letters.values() for t in letter.targets)
        request = str(key.get("request_id", ""))
        if request in refusing and f"other-{request[1:]}/" not in named:
            missing.append(request)
        return await real(query, key)

    world.items.delete_linked = watched  # type: ignore[method-assign]
    outcome = await world.processor.process(ORIGIN, _record(world, 1, world.image("acct-1", "tr-1")))

    assert isinstance(outcome, Deleted)
    assert missing == []
    assert world.items.tables["llm_requests"] == []
    (letter,) = world.dead_letters.letters.values()
    assert len(letter.targets) == 20
