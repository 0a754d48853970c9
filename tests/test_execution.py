"""Purging a location deletes every version across pages, and stops on what S3 refuses."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from conftest import World

from reconciler.core.plan import DeletionPlan
from reconciler.core.scope import S3Location
from reconciler.errors import PermanentError, TransientError
from reconciler.execution import Executor
from reconciler.ports import DeleteReport, ObjectVersion
from reconciler.testing import FakeArtifactStore

SCOPE = S3Location("stt-transcripts", "acct-1/tr-1/")


def _plan(*prefixes: S3Location, objects: tuple[S3Location, ...] = ()) -> DeletionPlan:
    return DeletionPlan("transcripts", {"transcript_id": "tr-1"}, (SCOPE,), objects, prefixes, (), ())


@pytest.mark.parametrize("page_size", [1, 3, 1000])
async def test_every_version_under_a_prefix_goes_whatever_the_page_size(world: World, page_size: int) -> None:
    world.artifacts.page_size = page_size
    for n in range(4):
        world.artifacts.put("stt-transcripts", f"acct-1/tr-1/file-{n}", versions=3)
        world.artifacts.mark_deleted("stt-transcripts", f"acct-1/tr-1/file-{n}")
    world.artifacts.put("stt-transcripts", "acct-1/tr-10/other", versions=2)  # a sibling that shares a prefix

    result = await world.executor.execute(_plan(SCOPE))

    assert result.errors == []
    assert (result.tally.object_versions, result.tally.delete_markers) == (12, 4)
    assert world.artifacts.keys("stt-transcripts") == {"acct-1/tr-10/other"}


async def test_refused_versions_are_skipped_on_relisting_and_reported(world: World) -> None:
    world.artifacts.page_size = 2
    for n in range(7):
        world.artifacts.put("stt-transcripts", f"acct-1/tr-1/f{n}")
    for n in (0, 1, 2):
        world.artifacts.refuse[f"acct-1/tr-1/f{n}"] = "AccessDenied"

    result = await world.executor.execute(_plan(SCOPE))

    assert [type(e).__name__ for e in result.errors] == ["PermanentError"]
    assert "AccessDenied" in str(result.errors[0])
    assert world.artifacts.keys("stt-transcripts") == {f"acct-1/tr-1/f{n}" for n in (0, 1, 2)}
    assert result.tally.object_versions == 4


async def test_an_exact_object_keeps_its_neighbours(world: World) -> None:
    world.artifacts.put("stt-transcripts", "acct-1/tr-1/a.json", versions=2)
    world.artifacts.put("stt-transcripts", "acct-1/tr-1/a.json.bak")
    result = await world.executor.execute(
        _plan(objects=(S3Location("stt-transcripts", "acct-1/tr-1/a.json"),))
    )
    assert result.tally.object_versions == 2
    assert world.artifacts.buckets["stt-transcripts"] == [ObjectVersion("acct-1/tr-1/a.json.bak", "v3")]


async def test_a_location_with_nothing_left_counts_as_absent(world: World) -> None:
    result = await world.executor.execute(_plan(SCOPE))
    assert result.tally.absent == 1
    assert world.sample("reconciler_artifacts_total", kind="object", outcome="absent") == 1


async def test_odd_but_literal_keys_under_the_prefix_are_the_items_own(world: World) -> None:
    for key in ("acct-1/tr-1//double-slash", "acct-1/tr-1/../dots", "acct-1/tr-1/./dot"):
        world.artifacts.put("stt-transcripts", key)
    world.artifacts.put("stt-transcripts", "acct-1/dots")  # what a path-normalising tool would hit
    result = await world.executor.execute(_plan(SCOPE))
    assert result.errors == []
    assert world.artifacts.keys("stt-transcripts") == {"acct-1/dots"}


class ForgetfulStore(FakeArtifactStore):
    """Reports every version of one key deleted but keeps it, as S3 does for a key that reached it changed."""

    async def delete_versions(self, bucket: str, versions: Sequence[ObjectVersion]) -> DeleteReport:
        kept = [v for v in versions if v.key.endswith("stays")]
        report = await super().delete_versions(bucket, [v for v in versions if v not in kept])
        self.buckets[bucket].extend(kept)
        return DeleteReport(deleted=(*report.deleted, *kept))


async def test_a_version_reported_deleted_but_still_listed_is_an_error_never_a_count(world: World) -> None:
    store = ForgetfulStore(page_size=2)  # a listing of more than one page is read again after each delete
    store.put("stt-transcripts", "acct-1/tr-1/a-stays")
    store.put("stt-transcripts", "acct-1/tr-1/b-goes", versions=2)
    executor = Executor(world.rules, store, world.items, world.metrics)

    result = await executor.execute(_plan(SCOPE))

    assert [type(e) for e in result.errors] == [PermanentError]
    assert "still listed" in str(result.errors[0])
    assert result.tally.object_versions == 1  # the one that really went before the relisting found out
    assert world.sample("reconciler_artifacts_total", kind="object_version", outcome="deleted") == 1
    assert store.keys("stt-transcripts") == {"acct-1/tr-1/a-stays", "acct-1/tr-1/b-goes"}


async def test_versions_s3_says_were_gone_already_count_as_absent_not_deleted(world: World) -> None:
    class GoneAlready(FakeArtifactStore):
        async def delete_versions(self, bucket: str, versions: Sequence[ObjectVersion]) -> DeleteReport:
            await super().delete_versions(bucket, versions)
            return DeleteReport(absent=tuple(versions))

    store = GoneAlready()
    store.put("stt-transcripts", "acct-1/tr-1/x", versions=3)
    result = await Executor(world.rules, store, world.items, world.metrics).execute(_plan(SCOPE))

    assert result.errors == []
    assert result.tally.object_versions == 0
    assert world.sample("reconciler_artifacts_total", kind="object_version", outcome="absent") == 3
    assert world.sample("reconciler_artifacts_total", kind="object_version", outcome="deleted") == 0


async def test_versions_deleted_before_a_later_page_fails_are_still_counted(world: World) -> None:
    class FailsSecondPage(FakeArtifactStore):
        calls = 0

        async def delete_versions(self, bucket: str, versions: Sequence[ObjectVersion]) -> DeleteReport:
            self.calls += 1
            if self.calls == 2:
                raise TransientError("throttled")
            return await super().delete_versions(bucket, versions)

    store = FailsSecondPage(page_size=2)
    store.put("stt-transcripts", "acct-1/tr-1/a", versions=4)
    result = await Executor(world.rules, store, world.items, world.metrics).execute(_plan(SCOPE))

    assert [type(e) for e in result.errors] == [TransientError]
    assert result.tally.object_versions == 2  # the first page went, and says so
    assert world.sample("reconciler_artifacts_total", kind="object_version", outcome="deleted") == 2
