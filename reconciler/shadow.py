"""Shadow mode (``reconciler run --dry-run``): the real pipeline, reading only.

A shadow worker reads the streams as a real one does, under leases and checkpoints of its own
(``Settings.shadow_checkpoint_table``), classifies every record and resolves its plan with the executor's
dry run: the same listings and queries a real run makes, through the same scope checks. What a real run
would delete, refuse or dead-letter is logged (``shadow.*`` events: identifiers and S3 keys, never image
content) and counted (``reconciler_shadow_*``) instead, and nothing is deleted or dead-lettered.

The dry run never asks to delete; the stores below refuse it anyway, so a wiring mistake fails loudly
instead of deleting.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence

import structlog

from reconciler.core.classify import Cause
from reconciler.core.dynamodb_json import Image
from reconciler.core.plan import LinkQuery, key_hash
from reconciler.core.scope import S3Location
from reconciler.errors import PermanentError
from reconciler.execution import ExecutionResult, ScopedUnsafe
from reconciler.observability.metrics import SHADOW_TARGET_KINDS, Metrics
from reconciler.ports import (
    ArtifactStore,
    DeadLetter,
    DeleteReport,
    ItemStore,
    LetterKind,
    LetterStatus,
    ObjectVersion,
    VersionPage,
)

log = structlog.get_logger("reconciler.shadow")

MAX_LOGGED = 100
"""S3 keys or letter targets named in one event; the counts beside them are always whole."""


class ShadowReport:
    """Logs and counts what a real run would have done with each record."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def would_delete(
        self, table: str, cause: Cause, key: Mapping[str, object], result: ExecutionResult
    ) -> None:
        """A record whose deletion a real run would carry out: every version, delete marker and linked
        item the dry run found, counted by kind; S3 keys named (up to ``MAX_LOGGED``), linked items counted
        by table."""
        kinds = Counter(p.kind for p in result.planned)
        for kind in SHADOW_TARGET_KINDS:
            self._metrics.shadow_targets.labels(table, cause.value, kind).inc(kinds[kind])
        self._metrics.shadow_records.labels(table, cause.value).inc()
        keys = sorted({p.where for p in result.planned if p.kind != "item"})
        linked = Counter(p.where for p in result.planned if p.kind == "item")
        log.info(
            "shadow.would_delete",
            table=table,
            key_hash=key_hash(table, key),
            cause=cause.value,
            object_versions=kinds["object_version"],
            delete_markers=kinds["delete_marker"],
            items=kinds["item"],
            linked_items=dict(sorted(linked.items())),
            absent=result.tally.absent,
            refused=len(result.unsafe),
            s3_keys=keys[:MAX_LOGGED],
            s3_keys_not_logged=max(len(keys) - MAX_LOGGED, 0),
        )

    def would_refuse(self, refusals: Sequence[ScopedUnsafe], *, log_at_most: int) -> None:
        """Targets the scope check refuses, as a real run would (and would dead-letter): every one counted,
        the first ``log_at_most`` logged one by one, the rest in a sum."""
        counted = Counter((s.table, s.unsafe.reason.value) for s in refusals)
        for (table, reason), count in counted.items():
            self._metrics.shadow_refusals.labels(table, reason).inc(count)
        if len(refusals) > log_at_most:
            log.warning("shadow.refusals_not_logged", count=len(refusals) - log_at_most)
        for scoped in refusals[:log_at_most]:
            log.warning(
                "shadow.would_refuse",
                table=scoped.table,
                key_hash=key_hash(scoped.table, scoped.key),
                target=scoped.unsafe.target,
                reason=scoped.unsafe.reason.value,
            )


class ShadowDeadLetters:
    """A ``DeadLetterStore`` that writes nothing: each letter a real run would write is logged and counted,
    and it holds none (nothing to list, resolve, purge or count)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def put(self, letter: DeadLetter) -> bool:
        """False: no letter was written, so none is new and ``reconciler_dead_letters_total`` stays still."""
        self._metrics.shadow_dead_letters.labels(letter.source_table, letter.kind).inc()
        item = letter.item_table
        log.warning(
            "shadow.would_dead_letter",
            table=letter.source_table,
            shard=letter.shard_id,
            sequence_number=letter.sequence_number,
            kind=letter.kind,
            cause=letter.cause,
            reason=letter.reason,
            key_hash=key_hash(item, letter.item_key) if item and letter.item_key else None,
            targets=list(letter.targets[:MAX_LOGGED]),
            targets_not_logged=max(len(letter.targets) - MAX_LOGGED, 0),
        )
        return False

    async def list(
        self,
        *,
        kind: LetterKind | None = None,  # noqa: ARG002 - the protocol's filters; there is nothing to filter
        since: dt.datetime | None = None,  # noqa: ARG002
        status: LetterStatus | None = None,  # noqa: ARG002
    ) -> AsyncIterator[DeadLetter]:
        none: tuple[DeadLetter, ...] = ()
        for letter in none:
            yield letter

    async def get(self, letter_id: str) -> DeadLetter | None:  # noqa: ARG002 - no letter is held
        return None

    async def resolve(self, letter_id: str, at: dt.datetime) -> bool:  # noqa: ARG002 - no letter is held
        return False

    async def purge_resolved(self, older_than: dt.datetime) -> int:  # noqa: ARG002 - no letter is held
        return 0

    async def count_pending(self, kind: LetterKind) -> int:  # noqa: ARG002 - no letter is held
        return 0


class ReadOnlyArtifacts:
    """An ``ArtifactStore`` that lists and refuses to delete."""

    def __init__(self, inner: ArtifactStore) -> None:
        self._inner = inner

    def list_versions(
        self, location: S3Location, *, exact: bool, after: ObjectVersion | None = None
    ) -> AsyncGenerator[VersionPage, None]:
        return self._inner.list_versions(location, exact=exact, after=after)

    async def delete_versions(self, bucket: str, versions: Sequence[ObjectVersion]) -> DeleteReport:
        raise _refused("DeleteObjects", bucket, len(versions))


class ReadOnlyItems:
    """An ``ItemStore`` that reads and refuses to delete."""

    def __init__(self, inner: ItemStore) -> None:
        self._inner = inner

    def find(self, query: LinkQuery, key_attributes: Sequence[str]) -> AsyncIterator[Image]:
        return self._inner.find(query, key_attributes)

    async def get(self, table: str, key: Mapping[str, object]) -> Image | None:
        return await self._inner.get(table, key)

    async def get_many(self, table: str, keys: Sequence[Mapping[str, object]]) -> list[Image | None]:
        return await self._inner.get_many(table, keys)

    async def delete_linked(self, query: LinkQuery, key: Mapping[str, object]) -> Image | None:  # noqa: ARG002 - refused whatever the key
        raise _refused("DeleteItem", query.table, 1)


def _refused(operation: str, resource: str, count: int) -> PermanentError:
    log.error("shadow.write_refused", operation=operation, resource=resource, count=count)
    return PermanentError(f"dry run: {operation} on {resource} refused")
