"""Concurrent deletes and reads of records in flight share requests; each caller gets just its own answer."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pytest

from reconciler.batching import CoalescingArtifactStore, CoalescingItemStore
from reconciler.core.dynamodb_json import Image
from reconciler.errors import TransientError
from reconciler.ports import DeleteReport, ObjectVersion
from reconciler.testing import FakeArtifactStore, FakeItemStore

BUCKET = "stt-transcripts"


@dataclass
class CountingArtifacts(FakeArtifactStore):
    """Records each ``delete_versions`` call; refuses keys in ``refuse``; fails every call while ``fail``."""

    requests: list[list[ObjectVersion]] = field(default_factory=list)
    fail: bool = False

    async def delete_versions(self, bucket: str, versions: Sequence[ObjectVersion]) -> DeleteReport:
        self.requests.append(list(versions))
        assert len(set(versions)) == len(versions), "a request names a version twice"
        if self.fail:
            raise TransientError("SlowDown")
        present = set(self.buckets.get(bucket, []))
        report = await super().delete_versions(bucket, versions)
        return DeleteReport(
            deleted=tuple(v for v in report.deleted if v in present),
            refused=report.refused,
            absent=tuple(v for v in report.deleted if v not in present),
        )


def _versions(store: FakeArtifactStore, prefix: str, n: int) -> list[ObjectVersion]:
    for i in range(n):
        store.put(BUCKET, f"{prefix}/{i:04}")
    return [v for v in store.buckets[BUCKET] if v.key.startswith(f"{prefix}/")]


async def test_two_records_deletes_in_one_bucket_become_one_request() -> None:
    inner = CountingArtifacts()
    first, second = _versions(inner, "tr-1", 3), _versions(inner, "tr-2", 2)
    store = CoalescingArtifactStore(inner, linger=0.01)

    one, two = await asyncio.gather(
        store.delete_versions(BUCKET, first), store.delete_versions(BUCKET, second)
    )

    assert len(inner.requests) == 1
    assert (list(one.deleted), list(two.deleted)) == (first, second)
    assert inner.buckets[BUCKET] == []


async def test_more_than_a_thousand_keys_are_split_into_requests_of_at_most_a_thousand() -> None:
    inner = CountingArtifacts()
    callers = [_versions(inner, f"tr-{n}", 400) for n in range(3)]
    store = CoalescingArtifactStore(inner, linger=0.01)

    reports = await asyncio.gather(*(store.delete_versions(BUCKET, c) for c in callers))

    assert sorted(len(r) for r in inner.requests) == [200, 1000]
    for versions, report in zip(callers, reports, strict=True):
        assert set(report.deleted) == set(versions)
        assert len(report.deleted) == len(versions)


async def test_a_full_batch_is_sent_without_waiting_for_the_linger() -> None:
    inner = CountingArtifacts()
    store = CoalescingArtifactStore(inner, linger=3600)
    async with asyncio.timeout(5):
        report = await store.delete_versions(BUCKET, _versions(inner, "tr-1", 1000))
    assert len(report.deleted) == 1000


async def test_each_caller_gets_only_its_own_deletions_refusals_and_absences() -> None:
    inner = CountingArtifacts()
    inner.refuse["tr-1/0001"] = "AccessDenied"
    first = _versions(inner, "tr-1", 3)
    second = _versions(inner, "tr-2", 2)
    gone = ObjectVersion("tr-2/gone", "v999")
    store = CoalescingArtifactStore(inner, linger=0.01)

    one, two = await asyncio.gather(
        store.delete_versions(BUCKET, first), store.delete_versions(BUCKET, [*second, gone])
    )

    assert one == DeleteReport(deleted=(first[0], first[2]), refused=((first[1], "AccessDenied"),))
    assert two == DeleteReport(deleted=tuple(second), absent=(gone,))


async def test_a_version_asked_for_by_two_callers_is_sent_once_and_both_get_the_answer() -> None:
    inner = CountingArtifacts()
    shared = _versions(inner, "tr-1", 2)
    store = CoalescingArtifactStore(inner, linger=0.01)

    one, two = await asyncio.gather(
        store.delete_versions(BUCKET, shared), store.delete_versions(BUCKET, shared[:1])
    )

    assert inner.requests == [shared]
    assert (one.deleted, two.deleted) == (tuple(shared), (shared[0],))


async def test_an_error_of_the_shared_request_is_every_callers_error() -> None:
    inner = CountingArtifacts(fail=True)
    store = CoalescingArtifactStore(inner, linger=0.01)
    results = await asyncio.gather(
        store.delete_versions(BUCKET, _versions(inner, "tr-1", 1)),
        store.delete_versions(BUCKET, _versions(inner, "tr-2", 1)),
        return_exceptions=True,
    )
    assert [type(r) for r in results] == [TransientError, TransientError]
    assert len(inner.requests) == 1


async def test_buckets_are_batched_apart() -> None:
    inner = CountingArtifacts()
    inner.put("other", "k")
    store = CoalescingArtifactStore(inner, linger=0.01)
    await asyncio.gather(
        store.delete_versions(BUCKET, _versions(inner, "tr-1", 1)),
        store.delete_versions("other", list(inner.buckets["other"])),
    )
    assert len(inner.requests) == 2


async def test_a_cancelled_caller_leaves_the_shared_request_to_the_others() -> None:
    inner = CountingArtifacts()
    store = CoalescingArtifactStore(inner, linger=0.01)
    leaving = asyncio.create_task(store.delete_versions(BUCKET, _versions(inner, "tr-1", 1)))
    staying = asyncio.create_task(store.delete_versions(BUCKET, _versions(inner, "tr-2", 1)))
    await asyncio.sleep(0)
    leaving.cancel()
    report = await staying
    assert len(report.deleted) == 1
    await store.close()


@dataclass
class CountingItems(FakeItemStore):
    batches: list[list[Mapping[str, object]]] = field(default_factory=list)

    async def get_many(self, table: str, keys: Sequence[Mapping[str, object]]) -> list[Image | None]:
        self.batches.append(list(keys))
        return await super().get_many(table, keys)


async def test_concurrent_gets_of_one_table_share_a_batched_read_of_at_most_a_hundred_keys() -> None:
    inner = CountingItems()
    for n in range(150):
        inner.put("transcripts", {"transcript_id": f"tr-{n}", "n": n})
    store = CoalescingItemStore(inner, linger=0.01)

    found = await asyncio.gather(
        *(store.get("transcripts", {"transcript_id": f"tr-{n}"}) for n in range(150)),
        store.get("transcripts", {"transcript_id": "missing"}),
        store.get("transcripts", {"transcript_id": "tr-120"}),  # asked twice: read once
    )

    assert [len(b) for b in inner.batches] == [100, 51]
    assert [f["n"] if f else None for f in found] == [*range(150), None, 120]


async def test_gets_of_different_tables_are_not_mixed() -> None:
    inner = CountingItems()
    store = CoalescingItemStore(inner, linger=0.01)
    await asyncio.gather(store.get("a", {"k": "1"}), store.get("b", {"k": "1"}))
    assert len(inner.batches) == 2


def test_a_batch_needs_a_positive_limit() -> None:
    with pytest.raises(ValueError, match="limit"):
        CoalescingArtifactStore(FakeArtifactStore(), max_keys=0)
