"""``reconciler demo``: two replicas of the real worker against a speech-to-text layout on an in-process
moto server.

Plays DynamoDB's TTL service and a few customers, then kills the replica reading the stream half-way, with
no graceful shutdown: the other one takes the shard once the lease expires and finishes the work. A few
transcripts expired days ago and no TTL service deletes them: the replicas' sweeper enforces their expiry.
The files of one transcript outlived its item (deleted during an outage longer than the stream's
retention): the orphan sweep finds and deletes them. Then it checks the promise: nothing linked to a deleted
transcript remains, and nothing of a live transcript was touched. Exit status 0 only if both hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from prometheus_client import CollectorRegistry

from reconciler.adapters.aws import AwsClients, AwsSettings
from reconciler.app import build_worker
from reconciler.demo.layout import (
    UPLOADS,
    Layout,
    Snapshot,
    Transcript,
    artifacts_of,
    changes,
    expiry,
    items_of,
)
from reconciler.demo.moto_server import CREDENTIALS, REGION, BackendSeeder, moto_server, reset, ttl_delete
from reconciler.demo.report import Replicas, Samples, sample, summary
from reconciler.observability.logs import configure_logging
from reconciler.rules import load_rules
from reconciler.settings import Settings
from reconciler.worker import Worker

Print = Callable[[str], None]
WAIT_SECONDS = 60.0
SWEPT = "reconciler_sweep_items_total"
LEASE_SECONDS = 3.0
GRACE_SECONDS = 3 * 3600.0
"""The demo's enforcement grace: the TTL service's deletions (an hour or two after expiry) fall inside it,
the overdue transcripts (days after) outside."""
ORPHAN_AGE = dt.timedelta(days=2)


def rules_path() -> Path:
    return Path(str(resources.files("reconciler.demo").joinpath("rules.toml")))


def local_settings(endpoint: str, **overrides: object) -> Settings:
    """Settings for a worker on a local moto server: any free port, its own tables, quick polling."""
    fast: dict[str, object] = {
        "config": rules_path(),
        "endpoint_url": endpoint,
        "http_port": 0,
        "create_tables": True,
        "worker_id": "local",
        "idle_poll_seconds": 0.2,
        "max_idle_poll_seconds": 0.5,
        "retry_backoff_seconds": 0.5,
        "discovery_seconds": 2.0,
        "dead_letter_count_seconds": 2.0,
        "lease_seconds": LEASE_SECONDS,
        "heartbeat_seconds": 0.5,
        "enforce_expiry": False,  # the demo plays DynamoDB's TTL service itself and counts who deleted what
        "orphan_sweep": False,  # tests' objects are younger than the minimum age: a sweep would only list
        "age_sweep": False,  # likewise
    }
    return Settings.model_validate(fast | overrides)


@dataclass(frozen=True, slots=True)
class Population:
    ttl: list[Transcript]
    expired: list[Transcript]
    requested: list[Transcript]
    live: list[Transcript]
    overdue: list[Transcript]
    """Expired days ago, still in the table: DynamoDB's TTL service has not got to them (``overdue=True``)."""
    orphan: Transcript
    """Files only: its item was deleted while no worker ran, and its stream record is long gone."""

    @property
    def deleted(self) -> list[Transcript]:
        """The transcripts whose removal is a stream record."""
        return [*self.ttl, *self.expired, *self.requested]


def populate(count: int, now: dt.datetime, seed: int = 7, *, overdue: bool = False) -> Population:
    """TTL-expired transcripts (most), a few expired ones a replica deletes, customer deletions, live ones,
    a few overdue for days, and one orphan.

    One customer-deleted transcript is tampered: its audio_url points at a live transcript's audio, which the
    scope check must refuse.
    """
    rng = random.Random(seed)  # noqa: S311 - demo data, not crypto
    accounts = [f"acct-{n:03d}" for n in range(4)]

    def make(n: int, seconds: float) -> Transcript:
        return Transcript(accounts[n % len(accounts)], f"tr-{n:05d}", expiry(now, seconds))

    live_n, requested_n, expired_n = max(2, count // 6), max(2, count // 8), max(1, count // 10)
    overdue_n = max(2, count // 10) if overdue else 0
    ttl_n = count - live_n - requested_n - expired_n - overdue_n
    items = iter(range(count))
    ttl = [make(next(items), -rng.uniform(60, 7200)) for _ in range(ttl_n)]
    expired = [make(next(items), -rng.uniform(60, 3600)) for _ in range(expired_n)]
    requested = [make(next(items), rng.uniform(86400, 30 * 86400)) for _ in range(requested_n)]
    live = [make(next(items), rng.uniform(86400, 30 * 86400)) for _ in range(live_n)]
    late = [make(next(items), -rng.uniform(2 * 86400, 5 * 86400)) for _ in range(overdue_n)]
    orphan = dataclasses.replace(
        make(count, -rng.uniform(3 * 86400, 5 * 86400)), created_at=int((now - ORPHAN_AGE).timestamp())
    )
    victim = live[0]
    tampered = requested[-1]
    requested[-1] = Transcript(
        tampered.account_id,
        tampered.transcript_id,
        tampered.expires_at,
        audio_url=f"s3://{UPLOADS}/{victim.account_id}/{victim.transcript_id}/audio.wav",
    )
    return Population(ttl, expired, requested, live, late, orphan)


async def run_demo(count: int = 40, echo: Print = print, log_level: str = "ERROR") -> int:
    configure_logging(json=False, level=log_level)
    started = time.monotonic()

    def out(line: str) -> None:
        echo(f"[{time.monotonic() - started:5.1f}s] {line}" if line else "")

    with moto_server() as endpoint:
        reset(endpoint)  # moto's stores are per process: start from nothing
        out(f"moto server listening on {endpoint}")
        aws = AwsSettings(region=REGION, endpoint_url=endpoint, credentials=CREDENTIALS)
        registries = [CollectorRegistry(), CollectorRegistry()]
        registry = Replicas(registries)
        async with AwsClients(aws) as clients:
            layout = Layout(clients.s3, clients.dynamodb)
            await layout.create()
            population = populate(count, dt.datetime.now(dt.UTC), overdue=True)
            seeder = BackendSeeder()
            await layout.add([*population.deleted, *population.overdue, *population.live], seed=seeder)
            for bucket, key, body in artifacts_of(population.orphan):
                seeder.put_old_object(bucket, key, body, ORPHAN_AGE)
            for table, item in items_of(population.orphan):
                if table == "llm_requests":  # its transcript and speech outputs were deleted, these not
                    seeder.put_item(table, item)
            live_before = await layout.snapshot(population.live)
            kept = sum(len(v) for v in live_before.values())
            out(
                f"created {count} transcripts with audio, transcript files (versioned), speech outputs and"
                f" LLM requests; {kept} versions and items belong to the {len(population.live)} live ones"
            )
            out(
                f"{len(population.overdue)} of them expired 2 to 5 days ago and are still there: DynamoDB's"
                " TTL service has not got to them (moto has none: it never will)"
            )
            out(
                f"the files and LLM requests of {population.orphan.account_id}/"
                f"{population.orphan.transcript_id} outlived its item: deleted during an outage longer than"
                " the stream's 24-hour retention"
            )
            async with contextlib.AsyncExitStack() as stack:
                workers: dict[str, Worker] = {}
                for name, own in zip(("replica-a", "replica-b"), registries, strict=True):
                    settings = local_settings(
                        endpoint,
                        worker_id=name,
                        enforce_expiry=True,
                        expiry_grace_seconds=GRACE_SECONDS,
                        sweep_segments=2,
                        orphan_sweep=True,
                    )
                    rules = load_rules(settings.config)
                    workers[name] = await stack.enter_async_context(
                        build_worker(settings, rules, own, aws=aws)
                    )
                tasks = {name: asyncio.create_task(w.run()) for name, w in workers.items()}
                out(f"started 2 replicas; leases last {LEASE_SECONDS:.0f}s")
                await _delete(layout, population, out)
                finished = await _failover(workers, tasks, registry, len(population.deleted), out)
                finished = finished and await _wait(registry, len(population.deleted), out)
                finished = finished and await _drained(layout, [*population.deleted, *population.overdue])
                finished = finished and await _enforced(layout, population.overdue, registry, out)
                finished = finished and await _orphaned(layout, population.orphan, registry, out)
                for name, task in tasks.items():
                    if not task.done():
                        workers[name].handle_exit()
                        await task
            remaining = 0
            for t in [*population.deleted, *population.overdue, population.orphan]:
                left = await layout.remaining(t)
                if left:
                    out(f"LEFT BEHIND: {left} artifacts of {t.account_id}/{t.transcript_id}")
                remaining += left
            changed = await touched(layout, population.live, live_before)
            refused = await _unsafe_letters(layout, local_settings(endpoint).dead_letter_table)
    summary(registry, out, remaining, changed, time.monotonic() - started, refused)
    # The promise, checked against moto's state: all gone, nothing else touched, the tampered URI refused.
    return 0 if finished and remaining == 0 and changed == 0 and refused == 1 else 1


async def _enforced(layout: Layout, overdue: list[Transcript], registry: Samples, out: Print) -> bool:
    """Every overdue transcript's item is gone (its artifacts are checked with the rest)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        left = [t for t in overdue if await layout.exists(t)]
        if not left:
            outcomes = {
                o: int(sample(registry, SWEPT, table="transcripts", outcome=o))
                for o in ("enforced", "skipped", "left_to_stream")
            }
            # Only the sweeper deletes overdue items here; one it deleted but never counted was the killed
            # replica's, cut off inside the plan, and its stream REMOVE finished the rest.
            cut = len(overdue) - outcomes["enforced"] - outcomes["left_to_stream"]
            out(
                f"all {len(overdue)} overdue transcripts are gone: the sweeper deleted them itself"
                " (conditional DeleteItem, then the same plan at once): "
                + ", ".join(f"{o} {n}" for o, n in outcomes.items())
                + (f"; {cut} by the killed replica, finished by its stream REMOVE" if cut > 0 else "")
            )
            return True
        await asyncio.sleep(0.25)
    out(f"overdue transcripts still there after {WAIT_SECONDS:.0f}s")
    return False


async def _orphaned(layout: Layout, orphan: Transcript, registry: Samples, out: Print) -> bool:
    """The replicas' orphan sweep (a scheduled job: one replica at a time, at once on a first deployment)
    deleted the orphan's LLM requests with their files, and its other files."""
    deadline = time.monotonic() + WAIT_SECONDS
    runs = {"job": "orphans", "outcome": "succeeded"}
    while time.monotonic() < deadline:
        swept = sample(registry, "reconciler_scheduled_runs_total", **runs)
        if swept and not await layout.remaining(orphan):
            deleted = {
                kind: sum(
                    sample(registry, "reconciler_orphans_deleted_total", kind=kind, table=table)
                    for table in ("transcripts", "speech_outputs", "llm_requests")
                )
                for kind in ("item", "object")
            }
            out(
                f"the replicas' orphan sweep found the orphan: deleted {int(deleted['item'])} LLM requests"
                f" whose transcript is gone, with their files, and {int(deleted['object'])} orphaned objects;"
                " live transcripts' files and the deleted ones' (younger than a day) were left alone"
            )
            return True
        await asyncio.sleep(0.25)
    out(f"the orphan's files or items were still there after {WAIT_SECONDS:.0f}s")
    return False


async def _unsafe_letters(layout: Layout, table: str) -> int:
    """Dead letters for refused targets in the table itself: a metric counts a letter once per process,
    and a replica killed between writing a letter and counting it never counts it."""
    found = await layout.dynamodb.scan(
        TableName=table,
        FilterExpression="#k = :unsafe",
        ExpressionAttributeNames={"#k": "kind"},
        ExpressionAttributeValues={":unsafe": {"S": "unsafe"}},
    )
    return len(found["Items"])


async def _delete(layout: Layout, population: Population, out: Print) -> None:
    for t in population.ttl:
        ttl_delete("transcripts", {"transcript_id": {"S": t.transcript_id}})
    out(
        f"TTL service deleted {len(population.ttl)} expired transcripts"
        " (userIdentity: dynamodb.amazonaws.com)"
    )
    for t in [*population.expired, *population.requested]:
        await layout.dynamodb.delete_item(
            TableName="transcripts", Key={"transcript_id": {"S": t.transcript_id}}
        )
    out(
        f"a replica deleted {len(population.expired)} expired transcripts without the TTL identity;"
        f" customers deleted {len(population.requested)} (one with a tampered audio_url)"
    )


async def _failover(
    workers: dict[str, Worker],
    tasks: dict[str, asyncio.Task[None]],
    registry: Samples,
    expected: int,
    out: Print,
) -> bool:
    """Kill the replica holding the shard a third of the way in (no drain, no release, like SIGKILL), then
    wait for the other to take the shard over once the lease expires."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline and _done(registry) < expected / 3:  # noqa: ASYNC110 - polling
        await asyncio.sleep(0.05)
    holder = next((n for n, w in workers.items() if w.coordinator.held), None)
    if holder is None:
        out("no replica holds the shard")
        return False
    tasks[holder].cancel()
    await asyncio.gather(tasks[holder], return_exceptions=True)
    killed = time.monotonic()
    out(f"killed {holder} after {int(_done(registry))}/{expected} deletions: no drain, no lease release")
    (survivor,) = (w for n, w in workers.items() if n != holder)
    while time.monotonic() < deadline and not survivor.coordinator.held:  # noqa: ASYNC110 - polling
        await asyncio.sleep(0.05)
    if not survivor.coordinator.held:
        return False
    out(f"the other replica took the shard over after {time.monotonic() - killed:.1f}s (lease expiry)")
    return True


def _done(registry: Samples) -> float:
    return sum(
        sample(registry, "reconciler_record_outcomes_total", table="transcripts", outcome=o)
        for o in ("deleted", "dead_lettered")
    )


async def _drained(layout: Layout, deleted: list[Transcript]) -> bool:
    """Records redelivered after the kill count twice, so the count alone is not proof: poll what is left."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if all([await layout.remaining(t) == 0 for t in deleted]):
            return True
        await asyncio.sleep(0.5)
    return False


async def _wait(registry: Samples, expected: int, out: Print) -> bool:
    deadline = time.monotonic() + WAIT_SECONDS
    done = -1.0
    while time.monotonic() < deadline:
        now_done = _done(registry)
        if now_done != done:
            done = now_done
            out(f"deletions finished: {int(done)} (of {expected} records; redelivered ones count again)")
        if done >= expected:
            return True
        await asyncio.sleep(0.25)
    out(f"worker did not finish within {WAIT_SECONDS:.0f}s")
    return False


async def touched(layout: Layout, live: list[Transcript], before: Snapshot) -> int:
    """Versions and items of live transcripts that differ from ``before``: objects, the transcript item,
    its speech outputs and its LLM requests, compared whole."""
    return changes(before, await layout.snapshot(live))
