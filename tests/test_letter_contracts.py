"""The dead-letter store's contract, run against the in-memory fake and the DynamoDB adapter on moto's server.

Letters are listed by kind, status and time through the table's index, never a scan; a letter round-trips
with its plan; resolving is conditional on the letter being pending and keeps it; a letter written again is
pending again and keeps its first time; purging deletes only letters resolved before the cut-off.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from reconciler.adapters.aws import AwsClients, AwsSettings, Caller, RetryPolicy
from reconciler.adapters.letters import DynamoDBDeadLetterStore
from reconciler.adapters.tables import create_worker_tables
from reconciler.core.letters import LetterPlan, Refused
from reconciler.core.plan import LinkQuery
from reconciler.core.scope import S3Location
from reconciler.core.spec import ScopeMode
from reconciler.demo.moto_server import CREDENTIALS, REGION, reset
from reconciler.ports import DeadLetter, DeadLetterStore, LetterKind
from reconciler.testing import FakeDeadLetterStore

ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/transcripts/stream/2026-01-01T00:00:00.000"
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@dataclass
class Letters:
    store: DeadLetterStore
    operations: list[str] | None  # DynamoDB operations the adapter made (None for the fake)


@pytest.fixture(params=["fake", pytest.param("moto", marks=pytest.mark.integration)])
async def letters(request: pytest.FixtureRequest) -> AsyncIterator[Letters]:
    if request.param == "fake":
        yield Letters(FakeDeadLetterStore(), None)
        return
    endpoint = request.getfixturevalue("endpoint")
    reset(endpoint)
    aws = AwsSettings(region=REGION, endpoint_url=endpoint, credentials=CREDENTIALS)
    async with AwsClients(aws) as clients:
        await create_worker_tables(clients.dynamodb, "checkpoints", "letters")
        operations: list[str] = []

        def record(model: Any, **_: Any) -> None:
            operations.append(model.name)

        clients.dynamodb.meta.events.register("before-call.dynamodb", record)
        # Two letters a page: every listing and count below takes several pages.
        store = DynamoDBDeadLetterStore(
            clients.dynamodb, Caller(RetryPolicy(attempts=3)), "letters", page_size=2
        )
        yield Letters(store, operations)


def _letter(sequence: int, kind: LetterKind = "failed", minutes: int = 0, **fields: Any) -> DeadLetter:
    defaults: dict[str, Any] = {
        "source_table": "transcripts",
        "stream_arn": ARN,
        "shard_id": "shardId-1",
        "sequence_number": f"{sequence:021d}",
        "event_id": f"e{sequence}",
        "kind": kind,
        "reason": "gave up after 3 attempts: AWS call failed after retries: SlowDown",
        "created_at": T0 + dt.timedelta(minutes=minutes),
        "item_table": "transcripts",
        "item_key": {"transcript_id": f"tr-{sequence}"},
        "targets": (f"prefix: s3://stt-transcripts/acct-1/tr-{sequence}/",),
    }
    return DeadLetter(**(defaults | fields))


async def _ids(store: DeadLetterStore, **query: Any) -> list[str]:
    return [letter.sequence_number.lstrip("0") + letter.kind[0] async for letter in store.list(**query)]


async def test_letters_are_listed_by_kind_status_and_time_through_the_index_never_a_scan(
    letters: Letters,
) -> None:
    store = letters.store
    for letter in (
        _letter(3, minutes=30),
        _letter(1, minutes=10),
        _letter(2, "unsafe", 20),
        _letter(4, minutes=40),
    ):
        await store.put(letter)
    assert await store.resolve(_letter(4).letter_id, T0 + dt.timedelta(hours=1))

    assert await _ids(store, kind="failed") == ["1f", "3f", "4f"]  # pending first, then resolved
    assert await _ids(store, kind="failed", status="pending") == ["1f", "3f"]
    assert await _ids(store, kind="failed", status="resolved") == ["4f"]
    assert await _ids(store, kind="failed", since=T0 + dt.timedelta(minutes=30)) == ["3f", "4f"]
    assert await _ids(store, since=T0 + dt.timedelta(minutes=20), status="pending") == ["2u", "3f"]
    assert await _ids(store) == ["2u", "1f", "3f", "4f"]  # kind by kind
    assert await _ids(store, kind="trimmed") == []
    if letters.operations is not None:
        assert "Scan" not in letters.operations
        assert letters.operations.count("Query") > 12  # every kind and status, some over several pages


async def test_a_letter_round_trips_with_its_plan(letters: Letters) -> None:
    """Link values keep their type (a number stays a number); scopes, targets and refusals their text."""
    plan = LetterPlan(
        table="transcripts",
        key={"transcript_id": "tr-1"},
        scopes=(S3Location("stt-uploads", "acct-1/tr-1/"),),
        objects=(S3Location("stt-uploads", "acct-1/tr-1/audio.wav"),),
        prefixes=(S3Location("stt-uploads", "acct-1/tr-1/parts/"),),
        links=(
            LinkQuery(
                "speech_outputs",
                "transcript_id",
                decimal.Decimal(7),
                "by_transcript",
                "output_type",
                "OUTPUT#",
                entity="output",
                scope=ScopeMode.PARENT,
                inherited=(S3Location("stt-understanding", "acct-1/tr-1/"),),
            ),
        ),
        refused=(Refused("transcripts", "s3://stt-uploads/acct-2/x.wav", "out_of_scope"),),
    )
    first, last = T0 - dt.timedelta(minutes=45), T0
    letter = _letter(1, attempts=3, first_attempt=first, last_attempt=last, plan=plan, cause="ttl")
    await letters.store.put(letter)
    held = await letters.store.get(letter.letter_id)
    assert held is not None
    assert held.letter_id == letter.letter_id
    assert held.plan == plan
    assert dataclasses.replace(held, targets=letter.targets) == letter
    assert await letters.store.get(_letter(2).letter_id) is None


async def test_resolving_marks_only_a_pending_letter_and_keeps_it(letters: Letters) -> None:
    store = letters.store
    await store.put(_letter(1))
    await store.put(_letter(2))
    at = T0 + dt.timedelta(days=1)
    assert await store.count_pending("failed") == 2
    assert await store.resolve(_letter(1).letter_id, at) is True
    assert await store.resolve(_letter(1).letter_id, at + dt.timedelta(hours=1)) is False  # resolved already
    assert await store.resolve(_letter(9).letter_id, at) is False  # no such letter: nothing written
    assert await store.get(_letter(9).letter_id) is None
    held = await store.get(_letter(1).letter_id)
    assert held is not None
    assert (held.status, held.resolved_at) == ("resolved", at)
    assert await store.count_pending("failed") == 1


async def test_a_letter_written_again_is_pending_again_and_keeps_its_first_time(letters: Letters) -> None:
    """A redelivered record whose work failed again: its letter needs a person again."""
    store = letters.store
    await store.put(_letter(1))
    at = T0 + dt.timedelta(hours=1)
    assert await store.resolve(_letter(1).letter_id, at)
    assert await store.put(_letter(1, minutes=90, reason="failed again")) is False
    held = await store.get(_letter(1).letter_id)
    assert held is not None
    assert (held.status, held.created_at, held.resolved_at, held.reason) == (
        "pending",
        T0,
        at,
        "failed again",
    )
    assert await store.count_pending("failed") == 1
    assert await _ids(store, since=T0) == ["1f"]  # still indexed at its first time


async def test_purging_deletes_only_letters_resolved_before_the_cut_off(letters: Letters) -> None:
    store = letters.store
    kinds: dict[int, LetterKind] = {1: "failed", 2: "unsafe", 3: "failed", 4: "failed", 5: "trimmed"}
    for n, kind in kinds.items():
        await store.put(_letter(n, kind))
    await store.resolve(_letter(1).letter_id, T0 + dt.timedelta(days=1))  # old
    await store.resolve(_letter(2, "unsafe").letter_id, T0 + dt.timedelta(days=2))  # old, another kind
    await store.resolve(_letter(3).letter_id, T0 + dt.timedelta(days=10))  # recent
    assert await store.purge_resolved(T0 + dt.timedelta(days=5)) == 2
    assert await _ids(store) == ["4f", "3f", "5t"]
    assert await store.purge_resolved(T0 + dt.timedelta(days=5)) == 0
    assert await store.count_pending("failed") == 1


async def test_pending_letters_are_counted_by_kind(letters: Letters) -> None:
    store = letters.store
    for n in range(5):
        await store.put(_letter(n, "unsafe" if n % 2 else "failed"))
    assert [await store.count_pending(kind) for kind in ("failed", "unsafe", "trimmed")] == [3, 2, 0]
    if letters.operations is not None:
        assert "Scan" not in letters.operations


@pytest.mark.integration
async def test_a_purge_deletes_only_what_is_still_resolved_before_the_cut_off_when_it_deletes(
    endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The index lags: a letter it lists as resolved may be pending again, or resolved since, by the time
    the delete runs. The delete's condition keeps it."""
    reset(endpoint)
    aws = AwsSettings(region=REGION, endpoint_url=endpoint, credentials=CREDENTIALS)
    async with AwsClients(aws) as clients:
        await create_worker_tables(clients.dynamodb, "checkpoints", "letters")
        store = DynamoDBDeadLetterStore(clients.dynamodb, Caller(RetryPolicy(attempts=3)), "letters")
        for n in (1, 2, 3):
            await store.put(_letter(n))
        await store.resolve(_letter(1).letter_id, T0)  # old: purged
        await store.resolve(_letter(2).letter_id, T0 + dt.timedelta(days=30))  # recent: kept
        letters = [{"letter_id": {"S": _letter(n).letter_id}} for n in (1, 2, 3)]

        async def stale(*_: object, **__: object) -> AsyncIterator[dict[str, Any]]:
            for item in letters:  # as a lagging index might list them: every one, once
                yield item
            letters.clear()

        monkeypatch.setattr(store, "_query", stale)
        assert await store.purge_resolved(T0 + dt.timedelta(days=1)) == 1
        assert [await store.get(_letter(n).letter_id) is None for n in (1, 2, 3)] == [True, False, False]
