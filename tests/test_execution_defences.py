"""The executor's own defences.

A listing never widens a plan's scope, and what a changed linked item still names was purged already.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

import pytest
from conftest import World

from reconciler.core.dynamodb_json import Image
from reconciler.core.plan import DeletionPlan, LinkQuery, UnsafeReason, resolve
from reconciler.core.scope import S3Location
from reconciler.errors import PermanentError, TransientError
from reconciler.execution import Executor
from reconciler.ports import DeleteReport, ObjectVersion, VersionPage
from reconciler.rules import Rules

BUCKET = "stt-transcripts"
OWN = S3Location(BUCKET, "acct-1/tr-1/")
OTHER_SCOPE = S3Location(BUCKET, "acct-1/tr-1-extra/")


@dataclass
class LyingListing:
    """An artifact store whose listing returns the versions it holds whatever location is asked for."""

    versions: list[ObjectVersion]
    deleted: list[ObjectVersion] = field(default_factory=list)

    async def list_versions(
        self, location: S3Location, *, exact: bool, after: ObjectVersion | None = None
    ) -> AsyncGenerator[VersionPage, None]:
        yield VersionPage([v for v in self.versions if v not in self.deleted], more=False)

    async def delete_versions(self, bucket: str, versions: Sequence[ObjectVersion]) -> DeleteReport:
        self.deleted.extend(versions)
        return DeleteReport(deleted=tuple(versions))


def _purge(*scopes: S3Location, prefix: S3Location = OWN, exact: bool = False) -> DeletionPlan:
    objects, prefixes = ((prefix,), ()) if exact else ((), (prefix,))
    return DeletionPlan("transcripts", {"transcript_id": "tr-1"}, scopes, objects, prefixes, (), ())


@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize(
    "listed",
    [
        ["acct-1/tr-2/audio.wav"],  # another item's key
        ["acct-1/tr-1/a.json", "acct-1/tr-10/a.json"],  # one of ours, with a sibling that shares the prefix
    ],
)
async def test_a_listing_that_returns_a_key_outside_the_scope_deletes_nothing(
    world: World, listed: list[str], exact: bool
) -> None:
    """The whole page is refused, with a final (not retriable) error."""
    store = LyingListing([ObjectVersion(key, "v1") for key in listed])
    executor = Executor(world.rules, store, world.items, world.metrics)

    result = await executor.execute(_purge(OWN, exact=exact))

    assert store.deleted == []
    assert [type(e) for e in result.errors] == [PermanentError]
    assert str(OWN) in str(result.errors[0])  # the operator learns which listing misbehaved
    assert not result.retriable


async def test_a_listed_key_under_any_of_the_items_scopes_is_its_own(world: World) -> None:
    """Scopes are alternatives: a key under the second one is as much the item's as one under the first."""
    store = LyingListing(
        [ObjectVersion("acct-1/tr-1/a.json", "v1"), ObjectVersion("acct-1/tr-1-extra/b", "v2")]
    )
    executor = Executor(world.rules, store, world.items, world.metrics)

    result = await executor.execute(_purge(OWN, OTHER_SCOPE))

    assert result.errors == []
    assert len(store.deleted) == 2


def _rewrite_before_delete(world: World, which: Mapping[str, object], attribute: str, value: object) -> None:
    """Between our read and our delete, someone sets ``attribute`` of the linked item matching ``which``."""
    real = world.items.delete_linked

    async def changed_meanwhile(query: LinkQuery, key: Mapping[str, object]) -> Image | None:
        old = await real(query, key)
        if old is not None and all(old.get(k) == v for k, v in which.items()):
            return {**old, attribute: value}
        return old

    world.items.delete_linked = changed_meanwhile  # type: ignore[method-assign]


def _absent(world: World) -> float:
    return world.sample("reconciler_artifacts_total", kind="object", outcome="absent")


async def test_a_changed_linked_item_purges_only_its_new_objects(world: World) -> None:
    """An object the changed image still names was deleted already and is not purged again."""
    world.add_transcript("acct-1", "tr-1")
    planned = "s3://stt-understanding/acct-1/tr-1/translation.json"
    late = "s3://stt-understanding/acct-1/tr-1/translation-v2.json"
    world.artifacts.put("stt-understanding", "acct-1/tr-1/translation-v2.json")
    _rewrite_before_delete(world, {"output_type": "translation"}, "output_url", [planned, late])

    result = await world.executor.execute(_transcript_plan(world))

    assert result.errors == []
    assert world.held_by("acct-1", "tr-1") == 0
    assert _absent(world) == 0  # every purge found something: nothing was purged twice


async def test_a_changed_linked_item_does_not_purge_its_planned_prefix_again(world: World) -> None:
    """An LLM request rewritten to a new output under its own prefix needs no second purge of that prefix."""
    world.add_transcript("acct-1", "tr-1")
    _rewrite_before_delete(
        world, {"request_id": "tr-1-llm0"}, "output_url", "s3://stt-llm-gateway/acct-1/tr-1-llm0/output.json"
    )

    result = await world.executor.execute(_transcript_plan(world))

    assert result.errors == []
    assert world.held_by("acct-1", "tr-1") == 0
    assert _absent(world) == 0


def _transcript_plan(world: World) -> DeletionPlan:
    return resolve(world.rules.tables["transcripts"], world.image("acct-1", "tr-1"))


# A chain of links: a document's parts, and the notes filed under a part's batch.
CHAINED = Rules.model_validate(
    {
        "buckets": ["doc-files", "part-files"],
        "sources": ["docs"],
        "tables": {
            "docs": {
                "key": ["doc_id"],
                "scopes": ["s3://doc-files/{doc_id}/"],
                "links": [{"table": "parts", "attribute": "doc_id", "value_from": "doc_id"}],
            },
            "parts": {
                "key": ["part_id"],
                "scopes": ["s3://part-files/{part_id}/"],
                "object_attributes": ["url"],
                "links": [{"table": "notes", "attribute": "batch", "value_from": "batch"}],
            },
            "notes": {"key": ["note_id"], "scopes": ["s3://part-files/notes/{note_id}/"]},
        },
    }
)
DOC = {"doc_id": "d1"}


def _chained(world: World) -> Executor:
    """A document d1 with part p1 (batch b1, one file) and note n1 in batch b1; note n2 is in batch b2."""
    world.items.put("parts", {"part_id": "p1", "doc_id": "d1", "batch": "b1", "url": "s3://part-files/p1/a"})
    world.artifacts.put("part-files", "p1/a")
    world.items.put("notes", {"note_id": "n1", "batch": "b1"})
    world.items.put("notes", {"note_id": "n2", "batch": "b2"})
    return Executor(CHAINED.compile(), world.artifacts, world.items, world.metrics)


def _doc_plan() -> DeletionPlan:
    return resolve(CHAINED.compile().tables["docs"], DOC)


def _notes(world: World) -> set[object]:
    return {note["note_id"] for note in world.items.tables["notes"]}


async def test_a_changed_linked_item_does_not_query_its_planned_links_again(world: World) -> None:
    executor = _chained(world)
    _rewrite_before_delete(world, {"part_id": "p1"}, "url", ["s3://part-files/p1/a", "s3://part-files/p1/b"])
    queried: list[LinkQuery] = []
    real = world.items.find

    def find(query: LinkQuery, key_attributes: Sequence[str]) -> AsyncIterator[Image]:
        queried.append(query)
        return real(query, key_attributes)

    world.items.find = find  # type: ignore[method-assign]

    result = await executor.execute(_doc_plan())

    assert result.errors == []
    assert _notes(world) == {"n2"}
    assert [q.table for q in queried] == ["parts", "notes"]  # batch b1 was looked up once


async def test_a_changed_linked_item_has_its_new_links_deleted_too(world: World) -> None:
    executor = _chained(world)
    _rewrite_before_delete(world, {"part_id": "p1"}, "batch", "b2")

    result = await executor.execute(_doc_plan())

    assert result.errors == []
    assert _notes(world) == set()


async def test_a_failure_on_the_new_links_of_a_changed_item_says_linked_items_were_left(world: World) -> None:
    executor = _chained(world)
    _rewrite_before_delete(world, {"part_id": "p1"}, "batch", "b2")
    real = world.items.delete_linked

    async def notes_throttled(query: LinkQuery, key: Mapping[str, object]) -> Image | None:
        if key == {"note_id": "n2"}:
            raise TransientError("throttled")
        return await real(query, key)

    world.items.delete_linked = notes_throttled  # type: ignore[method-assign]

    result = await executor.execute(_doc_plan())

    assert [str(e) for e in result.errors] == [
        "a linked item changed while being deleted; left: linked items"
    ]
    assert not result.retriable  # the pointer is gone: a redelivery could not find n2 again


async def test_a_failure_on_the_new_objects_of_a_changed_item_names_each_one_left(world: World) -> None:
    world.add_transcript("acct-1", "tr-1")
    new = ["s3://stt-understanding/acct-1/tr-1/v2.json", "s3://stt-understanding/acct-1/tr-1/v3.json"]
    for uri in new:
        key = uri.removeprefix("s3://stt-understanding/")
        world.artifacts.put("stt-understanding", key)
        world.artifacts.refuse[key] = "AccessDenied"
    _rewrite_before_delete(world, {"output_type": "translation"}, "output_url", new)

    result = await world.executor.execute(_transcript_plan(world))

    assert [str(e) for e in result.errors] == [
        "a linked item changed while being deleted; left: " + ", ".join(new)
    ]


async def test_an_out_of_scope_target_of_a_changed_linked_item_is_refused_and_recorded(world: World) -> None:
    world.add_transcript("acct-1", "tr-1")
    foreign = "s3://stt-understanding/acct-2/tr-9/translation.json"
    world.artifacts.put("stt-understanding", "acct-2/tr-9/translation.json")
    _rewrite_before_delete(world, {"output_type": "translation"}, "output_url", foreign)

    result = await world.executor.execute(_transcript_plan(world))

    assert [(s.table, s.unsafe.target, s.unsafe.reason) for s in result.unsafe] == [
        ("speech_outputs", foreign, UnsafeReason.OUT_OF_SCOPE)
    ]
    assert "acct-2/tr-9/translation.json" in world.artifacts.keys("stt-understanding")
