"""The bad-input catalogue: every malformed or hostile stream record has one defined outcome, counted in a
metric, logged as an event and dead-lettered where the design says so. Each runs through a shard consumer with
the real processor and executor on the in-memory fakes: none stops its shard for good (the one that cannot be
placed stops it on purpose, before itself), none is skipped silently, none deletes anything outside its item's
scope, and its letters and log events name targets no longer than an S3 URI can be. README.md, "Bad input",
states the same cases; a test below keeps the two in step.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import dataclasses
import decimal
import json
import re
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from conftest import World, consumer_for, fast_settings
from prometheus_client import generate_latest
from structlog.testing import capture_logs

from reconciler.adapters.aws import translate
from reconciler.core.leases import SHARD_END
from reconciler.core.letters import MAX_LETTER_BYTES
from reconciler.core.outcomes import DeadLettered, Deleted, Filtered, Ignored, Outcome, Pending
from reconciler.core.plan import LinkQuery
from reconciler.core.records import StreamRecord, Undecodable
from reconciler.core.scope import S3Location
from reconciler.observability.logs import configure_logging
from reconciler.ports import ObjectVersion, VersionPage
from reconciler.processing import Attempts, Origin
from reconciler.testing import FakeLeaseStore, FakeStreamSource, eventually, stream_record

Raw = dict[str, Any]
Builder = Callable[[World], list[Raw]]

GOLDEN = Path(__file__).parent / "golden"
README = Path(__file__).parent.parent / "README.md"
OWN = "s3://stt-uploads/acct-1/tr-1/"
# A retry is given up at once (a Pending outcome shows up as a `failed` letter, never as a wait), and a shard
# that stops before a record it cannot place waits long enough to be seen doing so once.
SETTINGS = fast_settings(max_attempts=1, retry_backoff_seconds=60)
GUARD_SECONDS = 120.0  # a shard that never ends fails its case instead of hanging the run
LONGEST_TARGET = len("out_of_scope: s3://") + 63 + 1 + 1024  # reason, bucket and the longest S3 key
TABLE_METRICS = {
    "reconciler_unsafe_targets_total",
    "reconciler_stream_records_total",
    "reconciler_record_outcomes_total",
}


@dataclass(frozen=True)
class Case:
    """One bad input and what it must come to. ``outcome`` is an outcome label of
    ``reconciler_record_outcomes_total`` that every one of its records ends with, or ``unplaceable``: the
    shard stops before the record. ``labels`` leave out ``table`` (always the source table, transcripts)."""

    name: str
    records: Builder
    outcome: str
    metric: str
    labels: Mapping[str, str]
    delta: int
    event: str
    letter: str | None = None
    gone: tuple[str, ...] = ()
    """S3 URIs the record must have deleted."""

    def readme_row(self) -> tuple[str, str, str, str, str]:
        labels = ",".join(f'{k}="{v}"' for k, v in self.labels.items())
        return (self.outcome, f"{self.metric}{{{labels}}}", str(self.delta), self.event, self.letter or "")


def _golden(name: str) -> Raw:
    record: Raw = json.loads((GOLDEN / f"{name}.json").read_text())["record"]
    return copy.deepcopy(record)


def _removal(world: World, seq: int = 1, transcript: str = "tr-1", **changes: object) -> Raw:
    """A TTL removal of a transcript laid out as the demo does, its old image changed by ``changes``."""
    world.add_transcript("acct-1", transcript)
    image = {**world.image("acct-1", transcript), **changes}
    raw: Raw = stream_record(
        seq, old_image=image, keys={"transcript_id": image["transcript_id"]}, identity="botocore"
    )
    return raw


def _image(**changes: object) -> Builder:
    """A removal of tr-1 whose old image has ``changes`` (Python values, encoded as DynamoDB JSON)."""
    return lambda world: [_removal(world, 1, "tr-1", **changes)]


def _audio(uri: object, put: str | None = None) -> Builder:
    """A removal of tr-1 whose ``audio_url`` holds ``uri``; ``put`` is an S3 URI to create first."""

    def build(world: World) -> list[Raw]:
        if put is not None:
            location = S3Location.parse(put)
            world.artifacts.put(location.bucket, location.key)
        return [_removal(world, audio_url=uri)]

    return build


def _old_image_attribute(name: str, value: object) -> Builder:
    """A removal of tr-1 whose old image holds ``value``, raw DynamoDB JSON, as attribute ``name``."""

    def build(world: World) -> list[Raw]:
        raw = _removal(world)
        raw["dynamodb"]["OldImage"][name] = value
        return [raw]

    return build


def _body(**fields: object) -> Builder:
    """A removal of tr-1 whose ``dynamodb`` section has ``fields`` set (None: removed)."""

    def build(world: World) -> list[Raw]:
        raw = _removal(world)
        for name, value in fields.items():
            raw["dynamodb"].pop(name, None)
            if value is not None:
                raw["dynamodb"][name] = value
        return [raw]

    return build


def _record_field(name: str, value: object) -> Builder:
    """A removal of tr-1 whose record has ``value`` as its top-level field ``name``."""

    def build(world: World) -> list[Raw]:
        raw = _removal(world)
        raw[name] = value
        return [raw]

    return build


def _golden_of(name: str, transcript: str | None = None) -> Builder:
    def build(world: World) -> list[Raw]:
        if transcript is not None:
            world.add_transcript("acct-1", transcript)
        return [_golden(name)]

    return build


def _between_removals(broken: Callable[[Raw], Raw]) -> Builder:
    """Removals of tr-1 and tr-3 (records 1 and 3) around record 2, which ``broken`` makes unplaceable."""

    def build(world: World) -> list[Raw]:
        return [
            _removal(world, 1, "tr-1"),
            broken(_removal(world, 2, "tr-2")),
            _removal(world, 3, "tr-3"),
        ]

    return build


def _without_body(raw: Raw) -> Raw:
    del raw["dynamodb"]
    return raw


def _with_sequence(text: str) -> Callable[[Raw], Raw]:
    def broken(raw: Raw) -> Raw:
        raw["dynamodb"]["SequenceNumber"] = text
        return raw

    return broken


def _twice(world: World) -> list[Raw]:
    raw = _removal(world)
    return [raw, copy.deepcopy(raw)]


def _descending(world: World) -> list[Raw]:
    return [_removal(world, 2, "tr-2"), _removal(world, 1, "tr-1")]


def _keys_only(keys: Mapping[str, object]) -> Builder:
    """A KEYS_ONLY removal of tr-1: ``Keys`` as given, no old image."""

    def build(world: World) -> list[Raw]:
        world.add_transcript("acct-1", "tr-1")
        raw: Raw = stream_record(1, keys=keys, identity="botocore", view_type="KEYS_ONLY")
        return [raw]

    return build


def _nested(levels: int, leaf: str = "leaf") -> dict[str, object]:
    value: dict[str, object] = {"S": leaf}
    for _ in range(levels):
        value = {"M": {"a": value}}
    return value


def _identity(value: object) -> Builder:
    return _record_field("userIdentity", value)


FOREIGN = "s3://stt-uploads/acct-2/victim/audio.wav"
OUT = ("reconciler_unsafe_targets_total", {"reason": "out_of_scope"})
NOT_URI = ("reconciler_unsafe_targets_total", {"reason": "not_an_s3_uri"})
UNDECODABLE = ("reconciler_dead_letters_total", {"kind": "undecodable"})
DELETED = ("reconciler_record_outcomes_total", {"outcome": "deleted"})
UNPLACEABLE = ("reconciler_failures_total", {"stage": "decode", "error": "DecodeError"})


def _refused(name: str, records: Builder, metric: tuple[str, dict[str, str]], count: int = 1) -> Case:
    """The item is deleted; ``count`` targets are refused, counted, logged and dead-lettered as unsafe."""
    return Case(name, records, "deleted", *metric, count, "deletion.unsafe_target", "unsafe")


def _undecodable(name: str, records: Builder) -> Case:
    return Case(name, records, "dead_lettered", *UNDECODABLE, 1, "record.undecodable", "undecodable")


def _deleted(name: str, records: Builder, *gone: str, count: int = 1) -> Case:
    return Case(name, records, "deleted", *DELETED, count, "deletion.completed", gone=gone)


def _expired(name: str, records: Builder) -> Case:
    """Not DynamoDB's TTL service by its identity, yet expired by its TTL attribute: deleted all the same."""
    metric = ("reconciler_stream_records_total", {"event": "REMOVE", "cause": "expired"})
    return Case(name, records, "deleted", *metric, 1, "deletion.completed")


def _blocked(name: str, records: Builder) -> Case:
    metric = ("reconciler_unsafe_targets_total", {"reason": "unsafe_identifier"})
    return Case(name, records, "dead_lettered", *metric, 1, "deletion.unsafe_target", "unsafe")


CASES = [
    # Values DynamoDB JSON cannot hold.
    _undecodable("unknown_type_tag", _old_image_attribute("audio_url", {"Q": "x"})),
    _undecodable("invalid_number", _old_image_attribute("expires_at", {"N": "12abc"})),
    _undecodable("number_beyond_dynamodb_limits", _old_image_attribute("expires_at", {"N": "1E+126"})),
    _undecodable("nesting_deeper_than_32", _old_image_attribute("document", _nested(40))),
    _undecodable("two_type_tags", _old_image_attribute("audio_url", {"S": f"{OWN}audio.wav", "N": "1"})),
    _undecodable("old_image_not_a_map", _body(OldImage=[{"S": "tr-1"}])),
    _undecodable("keys_undecodable", _body(Keys={"transcript_id": {"N": "tr-1"}})),
    _undecodable("unknown_event_name", _record_field("eventName", "TRUNCATE")),
    _undecodable("missing_creation_time", _body(ApproximateCreationDateTime=None)),
    _undecodable("unknown_view_type", _body(StreamViewType="EVERYTHING")),
    # Records that cannot be placed in the shard: it stops before them, never skips them.
    Case(
        "missing_dynamodb_section",
        _between_removals(_without_body),
        "unplaceable",
        *UNPLACEABLE,
        1,
        "record.unplaceable",
    ),
    Case(
        "sequence_number_not_digits",
        _between_removals(_with_sequence("4e21")),
        "unplaceable",
        *UNPLACEABLE,
        1,
        "record.unplaceable",
    ),
    # The stream itself misbehaving.
    _deleted("duplicate_sequence_number", _twice, f"{OWN}audio.wav", count=2),
    _deleted("out_of_order_sequence_numbers", _descending, f"{OWN}audio.wav", count=2),
    Case(
        "remove_without_old_image",
        _keys_only({"transcript_id": "tr-1"}),
        "dead_lettered",
        "reconciler_dead_letters_total",
        {"kind": "no_image"},
        1,
        "record.no_old_image",
        "no_image",
    ),
    Case(
        "keys_with_other_attributes",
        _keys_only({"transcript_id": "tr-1", "email": "someone@example.invalid"}),
        "dead_lettered",
        "reconciler_dead_letters_total",
        {"kind": "no_image"},
        1,
        "record.no_old_image",
        "no_image",
    ),
    Case(
        "insert",
        _golden_of("insert"),
        "ignored",
        "reconciler_stream_records_total",
        {"event": "INSERT", "cause": "none"},
        1,
        "record.ignored",
    ),
    Case(
        "modify",
        _golden_of("modify_ttl_passed"),
        "ignored",
        "reconciler_stream_records_total",
        {"event": "MODIFY", "cause": "none"},
        1,
        "record.ignored",
    ),
    # userIdentity that is not DynamoDB's TTL service, whatever its shape.
    Case(
        "user_identity_of_another_principal",
        _golden_of("user_remove_wrong_identity", "tr-5"),
        "deleted",
        "reconciler_stream_records_total",
        {"event": "REMOVE", "cause": "requested"},
        1,
        "deletion.completed",
    ),
    _expired("user_identity_not_a_map", _identity("dynamodb.amazonaws.com")),
    _expired(
        "user_identity_with_wrong_types", _identity({"PrincipalId": ["dynamodb.amazonaws.com"], "Type": 1})
    ),
    _expired(
        "user_identity_not_a_service", _identity({"PrincipalId": "dynamodb.amazonaws.com", "Type": "User"})
    ),
    # Identifiers that cannot be one path segment: the item has no scope, nothing of it is deleted.
    _blocked("identifier_dot_dot", _image(transcript_id="..")),
    _blocked("identifier_holding_a_slash", _image(account_id="acct-1/../acct-2")),
    _blocked("identifier_with_a_control_character", _image(account_id="acct\x00-1")),
    # A URI attribute holding something else.
    _refused("uri_is_a_number", _image(audio_url=decimal.Decimal(5)), NOT_URI),
    _refused(
        "uri_is_a_map", _image(audio_url={"main": f"{OWN}audio.wav", "size": decimal.Decimal(5)}), NOT_URI
    ),
    _refused(
        "uri_list_of_mixed_types",
        _image(audio_url=[f"{OWN}audio.wav", decimal.Decimal(5), True, {"k": "v"}, None, b"x"]),
        NOT_URI,
        5,
    ),
    _refused("uri_is_binary", _image(audio_url=f"{OWN}audio.wav".encode()), NOT_URI),
    _refused("uri_is_empty", _audio(""), NOT_URI),
    _refused("uri_names_no_key", _audio("s3://stt-uploads/"), NOT_URI),
    # Other schemes and spellings.
    _refused("scheme_https", _audio("https://stt-uploads.s3.amazonaws.com/acct-1/tr-1/audio.wav"), NOT_URI),
    _refused("scheme_file", _audio("file:///etc/passwd"), NOT_URI),
    _refused("scheme_s3a", _audio("s3a://stt-uploads/acct-1/tr-1/audio.wav"), NOT_URI),
    _refused("scheme_upper_case", _audio("S3://stt-uploads/acct-1/tr-1/audio.wav"), NOT_URI),
    _refused("path_without_scheme", _audio("/acct-1/tr-1/audio.wav"), NOT_URI),
    # Keys: taken literally, refused when they could mean another path or leave the scope.
    _deleted(
        "key_with_unicode",
        _audio(f"{OWN}语音 über 🎵.wav", put=f"{OWN}语音 über 🎵.wav"),
        f"{OWN}语音 über 🎵.wav",
    ),
    _deleted(
        "key_with_percent_encoding",
        _audio(f"{OWN}%2E%2E%2Facct-2%2Fvictim.wav", put=f"{OWN}%2E%2E%2Facct-2%2Fvictim.wav"),
        f"{OWN}%2E%2E%2Facct-2%2Fvictim.wav",
    ),
    _refused("percent_encoded_slash_in_the_scope", _audio("s3://stt-uploads/acct-1%2Ftr-1/audio.wav"), OUT),
    _refused("key_with_nul", _audio(f"{OWN}a\x00b.wav"), OUT),
    _refused("key_with_newline", _audio(f"{OWN}a\nb.wav"), OUT),
    _refused("key_with_dot_dot_segments", _audio(f"{OWN}../../acct-2/victim/audio.wav"), OUT),
    _refused("absolute_key", _audio("s3://stt-uploads//x"), OUT),
    _refused("key_with_leading_slash", _audio("s3://stt-uploads//acct-1/tr-1/audio.wav"), OUT),
    _refused("key_with_lone_surrogate", _audio(f"{OWN}\ud800.wav"), NOT_URI),
    _refused("key_longer_than_s3_allows", _audio("s3://stt-uploads/acct-2/" + "x" * 2000), OUT),
    Case(
        "key_longer_than_s3_allows_in_scope",
        _audio(OWN + "x" * 2000),
        "deleted",
        "reconciler_artifacts_total",
        {"kind": "object", "outcome": "absent"},
        1,
        "deletion.completed",
    ),
    _refused("bucket_not_in_rules", _audio("s3://other-bucket/acct-1/tr-1/audio.wav"), OUT),
    _refused("another_items_uri", _audio(FOREIGN), OUT),
    _refused(
        "sibling_prefix",
        lambda world: [_removal(world, transcript="907", audio_url="s3://stt-uploads/acct-1/9070/audio.wav")],
        OUT,
    ),
    # Size.
    _deleted("huge_image", _image(notes="x" * 400_000), f"{OWN}audio.wav"),
    _refused(
        "uris_filling_an_item",  # 399 URIs of 1,023 bytes: just under DynamoDB's 400 KB item
        _image(audio_url=[f"s3://stt-uploads/acct-9/{n:04d}{'x' * 995}" for n in range(399)]),
        OUT,
        399,
    ),
    Case(
        "hundred_thousand_foreign_uris",
        _image(audio_url=[f"s3://stt-uploads/acct-9/tr-{n}/audio.wav" for n in range(100_000)]),
        "deleted",
        *OUT,
        100_000,
        "deletion.unsafe_targets_not_logged",
        "unsafe",
    ),
    _deleted(
        "hundred_thousand_copies_of_its_own_uri",
        _image(audio_url=[f"{OWN}audio.wav"] * 100_000),
        f"{OWN}audio.wav",
    ),
]


def _victims(world: World) -> dict[str, object]:
    """Another account's transcript, a sibling whose id extends tr-1's (9070 of 907), and a bucket the rules
    do not name: what a hostile record would like to reach. Returns what they hold now."""
    world.add_transcript("acct-2", "victim")
    world.add_transcript("acct-1", "9070")
    world.artifacts.put("other-bucket", "acct-1/tr-1/audio.wav")
    return _held(world)


def _held(world: World) -> dict[str, object]:
    return {
        "victim": world.held_by("acct-2", "victim"),
        "sibling": world.held_by("acct-1", "9070"),
        "other": sorted(world.artifacts.keys("other-bucket")),
    }


def _label(outcome: Outcome) -> str:
    labels: dict[type, str] = {
        Deleted: "deleted",
        Ignored: "ignored",
        Filtered: "filtered",
        DeadLettered: "dead_lettered",
        Pending: "retry",
    }
    return labels[type(outcome)]


def _recorded(world: World) -> list[Outcome]:
    """Every outcome the processor hands the consumer, retries and given-up records included."""
    outcomes: list[Outcome] = []
    process, give_up = world.processor.process, world.processor.give_up

    async def processed(origin: Origin, record: StreamRecord | Undecodable) -> Outcome:
        outcomes.append(await process(origin, record))
        return outcomes[-1]

    async def given_up(
        origin: Origin, record: StreamRecord | Undecodable, pending: Pending, attempts: Attempts
    ) -> Outcome:
        outcomes.append(await give_up(origin, record, pending, attempts))
        return outcomes[-1]

    world.processor.process = processed  # type: ignore[method-assign]
    world.processor.give_up = given_up  # type: ignore[method-assign]
    return outcomes


async def _consume(world: World, raws: Sequence[Raw], *, until_unplaceable: bool) -> FakeLeaseStore:
    """Read ``raws`` from a closed shard to its end, or until the consumer has stopped before a record it
    cannot place (counted, and the records before it checkpointed); the consumer is stopped whatever happens,
    so a shard that never ends fails instead of hanging."""
    source, checkpoints = FakeStreamSource(), FakeLeaseStore()
    shard = source.add_shard("transcripts", "shardId-1", closed=True)
    for raw in raws:
        source.append("shardId-1", raw)
    consumer = consumer_for(world, source, shard, checkpoints, SETTINGS)
    task = asyncio.create_task(consumer.run())
    try:
        if until_unplaceable:
            failures = UNPLACEABLE[1]
            # Counted when the page is decoded, before the records ahead of it finish: wait for both.
            await eventually(
                lambda: (
                    bool(checkpoints.history) and world.sample("reconciler_failures_total", **failures) >= 1
                ),
                GUARD_SECONDS,
            )
        else:
            await asyncio.wait_for(asyncio.shield(task), GUARD_SECONDS)
    finally:
        consumer.stop()
        await task
    return checkpoints


def _metric(world: World, case: Case) -> float:
    labels = dict(case.labels) | ({"table": "transcripts"} if case.metric in TABLE_METRICS else {})
    return world.sample(case.metric, **labels)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_every_malformed_or_hostile_record_has_its_defined_outcome(world: World, case: Case) -> None:
    before = _victims(world)
    raws = case.records(world)
    outcomes = _recorded(world)
    counted = _metric(world, case)

    with capture_logs() as events:
        checkpoints = await _consume(world, raws, until_unplaceable=case.outcome == "unplaceable")

    history = [p for p in checkpoints.history if p != SHARD_END]
    assert history == sorted(history, key=int), "the checkpoint never moves back"
    if case.outcome == "unplaceable":
        # Record 1 is done; the shard stopped before record 2 and never reached record 3.
        assert [_label(o) for o in outcomes] == ["deleted"]
        assert checkpoints.history == [f"{1:021d}"]
        assert world.held_by("acct-1", "tr-3") > 0
    else:
        assert checkpoints.history[-1] == SHARD_END, "the shard was read past every record"
        assert [_label(o) for o in outcomes] == [case.outcome] * len(raws), "one outcome per record"
    assert _metric(world, case) - counted == case.delta
    assert case.event in {e["event"] for e in events}
    letters = list(world.dead_letters.letters.values())
    assert {letter.kind for letter in letters} == ({case.letter} if case.letter else set())
    for uri in case.gone:
        location = S3Location.parse(uri)
        assert location.key not in world.artifacts.keys(location.bucket)
    assert _held(world) == before, "nothing outside the item's scope was touched"
    for letter in letters:
        assert all(len(t.encode("utf-8", "surrogatepass")) <= LONGEST_TARGET for t in letter.targets)
        assert sum(len(t.encode("utf-8", "surrogatepass")) for t in letter.targets) <= MAX_LETTER_BYTES + 100
        assert set(letter.item_key) <= {"transcript_id"}, "a letter holds the item's key attributes only"
    assert all(len(str(e.get("target", ""))) <= LONGEST_TARGET for e in events)
    assert len(events) < 200, "a hostile record is a bounded number of log events"


ROW = re.compile(
    r"^\| `(\w+)` \| [^|]+ \| (\w+) \| `(reconciler_\w+\{[^}]*\})` \+(\d+) \| `([\w.]+)` \|"
    r" (?:`(\w+)`|—) \|$",
    re.MULTILINE,
)


def _bad_input_section() -> str:
    text = README.read_text()
    headings = re.findall(r"^#{2,3} .+$", text, re.MULTILINE)
    assert headings[headings.index("### Safety") + 1] == "### Bad input", "right after Safety"
    return text.split("\n### Bad input\n", 1)[1].split("\n#", 1)[0]


def test_the_readme_bad_input_table_states_every_malformed_or_hostile_case_as_the_catalogue_does() -> None:
    section = _bad_input_section()
    documented = {name: rest for name, *rest in ROW.findall(section)}
    assert documented == {case.name: list(case.readme_row()) for case in CASES}
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert len(rows) == len(documented), "every row of the table matches the pattern"


async def test_a_hostile_source_out_of_numeric_order_cannot_make_a_restart_skip_an_unfinished_record(
    world: World,
) -> None:
    """Records numbered [1, 3, 2, 4] with 2 still failing: the checkpoint stays at 1 (a restart resumes after
    the checkpoint by number, so 3 would skip 2), and the next reader deletes 2's artifacts."""
    source, checkpoints = FakeStreamSource(), FakeLeaseStore()
    shard = source.add_shard("transcripts", "shardId-1")
    for n in (1, 3, 2, 4):
        source.append("shardId-1", _removal(world, n, f"tr-{n}"))
    real = world.processor.process

    async def two_fails(origin: Origin, record: StreamRecord | Undecodable) -> Outcome:
        if record.sequence == 2:
            return Pending(record.sequence_number, "throttled")
        return await real(origin, record)

    world.processor.process = two_fails  # type: ignore[method-assign]
    first = consumer_for(world, source, shard, checkpoints, fast_settings(max_attempts=1000))
    task = asyncio.create_task(first.run())
    try:
        await eventually(lambda: all(world.held_by("acct-1", f"tr-{n}") == 0 for n in (1, 3, 4)))
    finally:
        first.stop()
        await task
    assert checkpoints.positions[shard.stream_arn, shard.shard_id] == f"{1:021d}"

    world.processor.process = real  # type: ignore[method-assign]
    source.close("shardId-1")
    second = consumer_for(world, source, shard, checkpoints, SETTINGS)
    await asyncio.wait_for(second.run(), GUARD_SECONDS)
    assert world.held_by("acct-1", "tr-2") == 0
    assert checkpoints.history[-2:] == [f"{4:021d}", SHARD_END]


PLANTED = "PLANTED-SECRET-7f3a"


def _planted_image(world: World, transcript: str, **changes: object) -> dict[str, object]:
    """A transcript whose every attribute but its identifiers (transcript_id, account_id: key and scope,
    which are named in S3 keys by design) and its TTL holds the planted value: as text, in a nested map
    and list, as binary, and in the URI attribute in forms that fail the scope check."""
    world.add_transcript("acct-1", transcript)
    return {
        **world.image("acct-1", transcript),
        "notes": f"call me at {PLANTED}",
        "profile": {"contact": {"email": PLANTED, "history": [PLANTED, {"deep": PLANTED}]}},
        "avatar": PLANTED.encode(),
        "audio_url": [
            f"s3://stt-uploads/acct-1/{transcript}/audio.wav",
            f"https://example.invalid/{PLANTED}",
            f"s3a://stt-uploads/{PLANTED}",
            {"inner": PLANTED},
            f"s3://stt-uploads/acct-9/{'x' * 1100}{PLANTED}",
            f"s3://stt-uploads/acct-9/\ud800{PLANTED}",
        ],
        **changes,
    }


def _planted_record(world: World, seq: int, transcript: str, **changes: object) -> Raw:
    raw: Raw = stream_record(
        seq,
        old_image=_planted_image(world, transcript, **changes),
        keys={"transcript_id": changes.get("transcript_id", transcript), "note": PLANTED},
        identity="botocore",
    )
    raw["dynamodb"]["OldImage"]["tags"] = {"SS": [PLANTED, "b"]}
    raw["dynamodb"]["NewImage"] = {"notes": {"S": PLANTED}}
    return raw


def _plant_failures(world: World) -> None:
    """tr-5's listing fails with a foreign error quoting the value; tr-6's linked delete with an AWS error
    whose message quotes it."""
    list_versions, delete_linked = world.artifacts.list_versions, world.items.delete_linked

    def listing(
        location: S3Location, *, exact: bool, after: ObjectVersion | None = None
    ) -> AsyncGenerator[VersionPage, None]:
        if "/tr-5/" in location.key:
            raise ValueError(f"unexpected listing answer: {PLANTED}")
        return list_versions(location, exact=exact, after=after)

    async def deleting(query: LinkQuery, key: Mapping[str, object]) -> dict[str, object] | None:
        if query.value == "tr-6":
            error = {"Error": {"Code": "ValidationException", "Message": f"bad value {PLANTED}"}}
            raise translate(ClientError(error, "DeleteItem"))  # type: ignore[arg-type]
        found = await delete_linked(query, key)
        return None if found is None else dict(found)

    world.artifacts.list_versions = listing  # type: ignore[method-assign]
    world.items.delete_linked = deleting  # type: ignore[method-assign]


async def test_a_hostile_record_that_crashes_planning_is_dead_lettered_when_its_retries_are_spent(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Planning that raises (a bug an image can trigger) crashes every attempt, and giving up must not plan
    again unguarded: the record is dead-lettered as failed, naming the error type, and the shard ends."""

    def crash(*args: object, **kwargs: object) -> None:
        raise ValueError(PLANTED)

    monkeypatch.setattr("reconciler.processing.resolve", crash)
    outcomes = _recorded(world)

    checkpoints = await _consume(world, [_removal(world)], until_unplaceable=False)

    assert checkpoints.history[-1] == SHARD_END
    assert [_label(o) for o in outcomes] == ["dead_lettered"]
    (letter,) = world.dead_letters.letters.values()
    assert (letter.kind, letter.reason) == ("failed", "gave up after 1 attempts: unexpected ValueError")
    assert letter.targets == ("targets unknown: planning failed with ValueError",)


async def test_a_planted_value_reaches_no_log_line_no_dead_letter_and_no_metric(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """Records that are deleted with refusals, undecodable, without an old image, unsafe by identifier, and
    failed (a foreign error and an AWS error, each quoting the value) all carry a planted value in every
    non-identifier attribute, in their Keys and in a NewImage: it appears in no JSON log line (at DEBUG), in
    no field of any dead letter, and nowhere in the rendered metrics."""
    configure_logging(json=True, level="DEBUG")
    _plant_failures(world)
    raws = [_planted_record(world, n, f"tr-{n}") for n in range(1, 7)]
    raws[1]["dynamodb"]["OldImage"]["secret"] = {"Q": PLANTED}  # each undecodable its own way
    raws[2]["dynamodb"]["OldImage"]["expires_at"] = {"N": PLANTED}
    raws[3]["dynamodb"]["OldImage"]["profile"] = _nested(40, PLANTED)
    del raws[4]["dynamodb"]["OldImage"]  # no_image
    raws += [
        _planted_record(world, 7, "tr-7", account_id=f"{PLANTED}/.."),  # an unsafe identifier
        _planted_record(world, 8, "tr-5"),  # failed: a foreign error quoting the value
        _planted_record(world, 9, "tr-6"),  # failed: an AWS error quoting the value
    ]
    outcomes = _recorded(world)

    checkpoints = await _consume(world, raws, until_unplaceable=False)

    assert checkpoints.history[-1] == SHARD_END
    assert {_label(o) for o in outcomes} == {"deleted", "dead_lettered"}  # tr-5 crashed, then was given up
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.err.splitlines() if line.strip()]
    assert {
        "deletion.unsafe_target",
        "record.undecodable",
        "record.no_old_image",
        "record.crashed",
        "record.gave_up",
        "deletion.failed",
    } <= {line["event"] for line in lines}
    letters = list(world.dead_letters.letters.values())
    assert {letter.kind for letter in letters} == {"unsafe", "undecodable", "no_image", "failed"}
    metrics = generate_latest(world.registry).decode()
    for form in (PLANTED, base64.b64encode(PLANTED.encode()).decode()):
        assert form not in captured.err + captured.out
        assert not [letter.kind for letter in letters if form in repr(dataclasses.asdict(letter))]
        assert form not in metrics
