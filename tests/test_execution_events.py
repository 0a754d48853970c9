"""A linked item kept or changed under our feet is logged as an event naming its table and key hash, never its
content."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog.testing
from conftest import World

from reconciler.core.dynamodb_json import Image
from reconciler.core.plan import LinkQuery, key_hash, resolve

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
