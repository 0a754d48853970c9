"""A linked item kept or changed under our feet is logged as an event naming its table and key hash, never its
content."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog.testing
from conftest import World

from reconciler.core.dynamodb_json import Image
from reconciler.core.plan import LinkQuery, key_hash, resolve
from reconciler.execution import Executor
from reconciler.rules import Rules

TRANSLATION_KEY = {"transcript_id": "tr-1", "output_type": "translation"}


async def _delete_transcript(world: World) -> list[MutableMapping[str, Any]]:
    plan = resolve(world.rules.tables["transcripts"], world.image("acct-1", "tr-1"))
    with structlog.testing.capture_logs() as logs:
        await world.executor.execute(plan)
    return [e for e in logs if str(e["event"]).startswith("deletion.linked_item")]


async def test_a_linked_item_whose_artifacts_are_refused_is_kept_and_logged(world: World) -> None:
    world.add_transcript("acct-1", "tr-1")
    world.artifacts.refuse["acct-1/tr-1/translation.json"] = "AccessDenied"

    events = await _delete_transcript(world)

    assert events == [
        {
            "event": "deletion.linked_item_kept",
            "log_level": "warning",
            "table": "speech_outputs",
            "key_hash": key_hash("speech_outputs", TRANSLATION_KEY),
        }
    ]


async def test_a_linked_item_changed_before_its_delete_is_logged(world: World) -> None:
    world.add_transcript("acct-1", "tr-1")
    real = world.items.delete_linked

    async def changed_meanwhile(query: LinkQuery, key: Mapping[str, object]) -> Image | None:
        old = await real(query, key)
        if old is not None and old.get("output_type") == "translation":
            return {**old, "output_url": "s3://stt-understanding/acct-1/tr-1/translation-v2.json"}
        return old

    world.items.delete_linked = changed_meanwhile  # type: ignore[method-assign]

    events = await _delete_transcript(world)

    assert events == [
        {
            "event": "deletion.linked_item_changed",
            "log_level": "warning",
            "table": "speech_outputs",
            "key_hash": key_hash("speech_outputs", TRANSLATION_KEY),
        }
    ]


async def test_a_linked_item_kept_because_its_refusals_cannot_all_be_recorded_is_logged(world: World) -> None:
    world.add_transcript("acct-1", "tr-1")
    world.items.tables["llm_requests"][0]["input_url"] = "s3://stt-llm-gateway/acct-9/x/in.json"
    plan = resolve(world.rules.tables["transcripts"], world.image("acct-1", "tr-1"))

    async def too_many(_: object) -> bool:
        return False

    with structlog.testing.capture_logs() as logs:
        await world.executor.execute(plan, too_many)
    kept = [e for e in logs if e["event"] == "deletion.linked_item_kept"]
    assert kept == [
        {
            "event": "deletion.linked_item_kept",
            "log_level": "warning",
            "table": "llm_requests",
            "key_hash": key_hash("llm_requests", {"request_id": "tr-1-llm0"}),
        }
    ]
    assert len(world.items.tables["llm_requests"]) == 1


async def test_a_grandchild_with_a_refused_target_is_recorded_and_deleted_through_its_parent(
    world: World,
) -> None:
    """The recorder reaches every nesting level: without it a grandchild would be kept."""
    rules = Rules.model_validate(
        {
            "buckets": ["files"],
            "sources": ["docs"],
            "tables": {
                "docs": {"key": ["doc_id"], "scopes": ["s3://files/d/{doc_id}/"],
                         "links": [{"table": "parts", "attribute": "doc_id", "value_from": "doc_id"}]},
                "parts": {"key": ["doc_id"], "scopes": ["s3://files/p/{doc_id}/"],
                          "links": [{"table": "notes", "attribute": "part", "value_from": "doc_id"}]},
                "notes": {"key": ["part"], "scopes": ["s3://files/n/{part}/"], "object_attributes": ["url"]},
            },
        }
    ).compile()  # fmt: skip
    world.items.put("parts", {"doc_id": "d1"})
    world.items.put("notes", {"part": "d1", "url": "s3://files/n/other/x"})  # refused
    recorded: list[int] = []

    async def record(refusals: object) -> bool:
        recorded.append(len(refusals))  # type: ignore[arg-type]
        return True

    executor = Executor(rules, world.artifacts, world.items, world.metrics)
    result = await executor.execute(resolve(rules.tables["docs"], {"doc_id": "d1"}), record)

    assert result.errors == []
    assert recorded == [1]
    assert world.items.tables["notes"] == []
    assert world.items.tables["parts"] == []
