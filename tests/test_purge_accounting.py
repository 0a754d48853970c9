"""What a purge reports: versions and delete markers deleted, a location found empty, and what S3 refused."""

from __future__ import annotations

from conftest import World

from reconciler.core.plan import DeletionPlan
from reconciler.core.scope import S3Location

SCOPE = S3Location("stt-transcripts", "acct-1/tr-1/")


def _purge_scope() -> DeletionPlan:
    return DeletionPlan("transcripts", {"transcript_id": "tr-1"}, (SCOPE,), (), (SCOPE,), (), ())


def _artifacts(world: World, kind: str, outcome: str) -> float:
    return world.sample("reconciler_artifacts_total", kind=kind, outcome=outcome)


async def test_versions_and_delete_markers_are_counted_by_kind(world: World) -> None:
    world.artifacts.put("stt-transcripts", "acct-1/tr-1/a.json", versions=3)
    world.artifacts.mark_deleted("stt-transcripts", "acct-1/tr-1/a.json")

    await world.executor.execute(_purge_scope())

    assert _artifacts(world, "object_version", "deleted") == 3
    assert _artifacts(world, "delete_marker", "deleted") == 1


async def test_a_location_with_versions_deleted_is_not_counted_absent(world: World) -> None:
    world.artifacts.put("stt-transcripts", "acct-1/tr-1/a.json")

    result = await world.executor.execute(_purge_scope())

    assert result.tally.absent == 0
    assert _artifacts(world, "object", "absent") == 0


async def test_a_refusal_names_each_s3_error_code_once(world: World) -> None:
    for name, code in [("a", "AccessDenied"), ("b", "InvalidObjectState"), ("c", "AccessDenied")]:
        world.artifacts.put("stt-transcripts", f"acct-1/tr-1/{name}")
        world.artifacts.refuse[f"acct-1/tr-1/{name}"] = code

    result = await world.executor.execute(_purge_scope())

    assert [str(e) for e in result.errors] == [
        f"S3 refused 3 versions under {SCOPE}: AccessDenied, InvalidObjectState"
    ]
    assert _artifacts(world, "object_version", "refused") == 3
