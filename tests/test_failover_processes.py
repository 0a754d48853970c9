"""Several worker processes (``python -m reconciler run``) over two source tables on moto's server: a
SIGKILLed replica's shards are taken once its leases expire and every linked artifact still goes; a SIGTERMed
replica releases its leases and a peer takes them at once; a replica added later gets its share without two
replicas reading one shard for longer than a lease period.

Leases last 2 s and heartbeats come every 0.2 s; every wait polls the lease table or the replicas' logs."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from conftest import worker_env

from reconciler.demo.layout import Layout, Transcript, expiry
from reconciler.demo.moto_server import BackendSeeder, ttl_delete

pytestmark = pytest.mark.integration

DEMO_RULES = Path(__file__).parent.parent / "reconciler" / "demo" / "rules.toml"
LEASE = 2.0
SOURCES = ("transcripts", "llm_requests")


class Replica:
    """One worker process; its JSON log events are collected as they come."""

    def __init__(self, name: str, process: asyncio.subprocess.Process) -> None:
        self.name = name
        self.process = process
        self.events: list[dict[str, object]] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stderr is not None
        while line := await self.process.stderr.readline():
            with contextlib.suppress(ValueError):
                self.events.append(json.loads(line))

    def logged(self, event: str, **fields: object) -> list[dict[str, object]]:
        return [
            e for e in self.events if e["event"] == event and all(e.get(k) == v for k, v in fields.items())
        ]

    async def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()
        await self._reader

    async def term(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.process.wait(), timeout=30)
        await self._reader
        return code


@pytest.fixture
async def replicas(
    endpoint: str, layout: Layout, tmp_path: Path
) -> AsyncIterator[Callable[..., asyncio.Future[Replica]]]:
    """Start replicas by name; every one still running at the end is killed."""
    await layout.dynamodb.update_table(
        TableName="llm_requests",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )
    rules = tmp_path / "rules.toml"
    text = DEMO_RULES.read_text(encoding="utf-8")
    rules.write_text(
        text.replace('sources = ["transcripts"]', f"sources = {list(SOURCES)!r}".replace("'", '"'))
    )
    started: list[Replica] = []

    async def start(name: str, lease: float = LEASE) -> Replica:
        env = worker_env(
            endpoint,
            worker_id=name,
            lease_seconds=str(lease),
            heartbeat_seconds="0.2",
            discovery_seconds="0.5",
            checkpoint_seconds="0",
            idle_poll_seconds="0.05",
            max_idle_poll_seconds="0.2",
            retry_backoff_seconds="0.2",
        )
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "reconciler", "run", "--config", str(rules),
            env=env, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        replica = Replica(name, process)
        started.append(replica)
        return replica

    yield start  # type: ignore[misc]
    for replica in started:
        if replica.process.returncode is None:
            await replica.kill()


async def _owners(layout: Layout) -> dict[str, str | None]:
    """Source table -> owner of its stream's shard lease (moto: one shard per stream)."""
    try:
        rows = (await layout.dynamodb.scan(TableName="reconciler-checkpoints"))["Items"]
    except layout.dynamodb.exceptions.ResourceNotFoundException:
        return {}  # the first replica is still creating it
    return {
        row["source_table"]["S"]: row.get("lease_owner", {}).get("S")
        for row in rows
        if "source_table" in row and row["source_table"]["S"]
    }


async def _until(condition: Callable[[], object], seconds: float = 30.0) -> None:
    async with asyncio.timeout(seconds):
        while not await _value(condition()):  # noqa: ASYNC110 - polling other processes' state
            await asyncio.sleep(0.05)


async def _value(result: object) -> object:
    return await result if asyncio.iscoroutine(result) else result


async def _balanced(layout: Layout, names: set[str]) -> bool:
    owners = await _owners(layout)
    return set(owners) == set(SOURCES) and set(owners.values()) == names


def _doomed(count: int, prefix: str) -> list[Transcript]:
    now = dt.datetime.now(dt.UTC)
    return [Transcript("acct-1", f"{prefix}-{n}", expiry(now, -60)) for n in range(count)]


async def _expire(layout: Layout, transcripts: list[Transcript]) -> None:
    await layout.add(transcripts, seed=BackendSeeder())
    for t in transcripts:
        ttl_delete("transcripts", {"transcript_id": {"S": t.transcript_id}})


async def _all_gone(layout: Layout, transcripts: list[Transcript]) -> bool:
    return all([await layout.remaining(t) == 0 for t in transcripts])


async def test_failover_a_killed_replicas_shards_are_taken_within_the_lease_timeout(
    layout: Layout, replicas: Callable[..., asyncio.Future[Replica]]
) -> None:
    a, b = await replicas("a"), await replicas("b")
    await _until(lambda: _balanced(layout, {"a", "b"}))
    victim = a if (await _owners(layout))["transcripts"] == "a" else b
    survivor = b if victim is a else a
    doomed = _doomed(40, "killed")
    await _expire(layout, doomed)
    await _until(lambda: victim.logged("deletion.completed"))
    await victim.kill()  # mid-work: its window was full of records
    killed = time.monotonic()
    await _until(lambda: _balanced(layout, {survivor.name}), seconds=LEASE + 10)
    taken = time.monotonic() - killed
    await _until(lambda: _all_gone(layout, doomed), seconds=60)
    assert taken <= LEASE + 3  # the lease period, a heartbeat or two, and process scheduling
    assert survivor.logged("lease.taken", how="expired", table="transcripts")


async def test_failover_a_terminated_replica_releases_its_leases_and_a_peer_takes_them_at_once(
    layout: Layout, replicas: Callable[..., asyncio.Future[Replica]]
) -> None:
    """Leases of 30 s here: only a release explains a takeover in a few heartbeats."""
    a, b = await replicas("a", lease=30.0), await replicas("b", lease=30.0)
    await _until(lambda: _balanced(layout, {"a", "b"}))
    leaving = a if (await _owners(layout))["transcripts"] == "a" else b
    staying = b if leaving is a else a
    assert await leaving.term() == 0
    stopped = time.monotonic()
    assert leaving.logged("lease.released_all")
    await _until(lambda: _balanced(layout, {staying.name}), seconds=10)
    assert time.monotonic() - stopped < 5
    doomed = _doomed(10, "after-term")
    await _expire(layout, doomed)
    await _until(lambda: _all_gone(layout, doomed), seconds=60)


async def test_lease_an_added_replica_takes_its_share_without_two_readers_beyond_a_lease_period(
    layout: Layout, replicas: Callable[..., asyncio.Future[Replica]]
) -> None:
    first = await replicas("first")
    await _until(lambda: _balanced(layout, {"first"}))
    doomed = _doomed(20, "rebalanced")
    await _expire(layout, doomed)
    second = await replicas("second")
    await _until(lambda: _balanced(layout, {"first", "second"}))
    await _until(lambda: _all_gone(layout, doomed), seconds=60)
    [stolen] = second.logged("lease.taken", how="stolen")
    await _until(lambda: first.logged("shard.stopped", lost=True, shard=stolen["shard"]))
    [stopped] = first.logged("shard.stopped", lost=True, shard=stolen["shard"])
    overlap = _at(stopped) - _at(stolen)
    assert overlap <= dt.timedelta(seconds=LEASE)  # the old owner stops within a heartbeat or two
    assert await second.term() == 0
    assert await first.term() == 0


def _at(event: dict[str, object]) -> dt.datetime:
    return dt.datetime.fromisoformat(str(event["timestamp"]))
