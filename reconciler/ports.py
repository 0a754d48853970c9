"""What the pipeline needs from the outside world, as small Protocols.

aiobotocore implementations live in ``reconciler.adapters``; in-memory fakes for tests and the benchmark live
in ``reconciler.testing``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from reconciler.core.dynamodb_json import Image
from reconciler.core.leases import Lease
from reconciler.core.letters import LetterPlan
from reconciler.core.plan import LinkQuery, key_hash
from reconciler.core.records import StreamViewType
from reconciler.core.scope import S3Location
from reconciler.core.spec import AccountsTable, ExpiryIndex

LetterKind = Literal["undecodable", "no_image", "unsafe", "failed", "recreated", "trimmed"]
"""Why a dead letter was written; also the ``kind`` label of ``reconciler_dead_letters_total``."""
LetterStatus = Literal["pending", "resolved"]
"""A letter is pending until its work is done (redriven) or a person resolved it; written again, pending."""


@dataclass(frozen=True, slots=True)
class ObjectVersion:
    """One version or delete marker of an S3 object ("null" on unversioned buckets)."""

    key: str
    version_id: str
    is_delete_marker: bool = False
    last_modified: dt.datetime | None = field(default=None, compare=False)
    """When S3 says the version was written (None if unknown); not part of the version's identity."""


@dataclass(frozen=True, slots=True)
class VersionPage:
    """One page of a version listing; ``more`` if the listing goes on after it."""

    versions: list[ObjectVersion]
    more: bool


@dataclass(frozen=True, slots=True)
class DeleteReport:
    """What a batch delete did: versions deleted, versions S3 said were gone already, and per-version
    refusals (code) that are final."""

    deleted: tuple[ObjectVersion, ...] = ()
    refused: tuple[tuple[ObjectVersion, str], ...] = ()
    absent: tuple[ObjectVersion, ...] = ()


class ArtifactStore(Protocol):
    def list_versions(
        self, location: S3Location, *, exact: bool, after: ObjectVersion | None = None
    ) -> AsyncGenerator[VersionPage, None]:
        """Pages of every version and delete marker under ``location`` (only its own key if ``exact``), in
        S3's listing order; with ``after``, an existing version, only those listed after it."""
        ...

    async def delete_versions(self, bucket: str, versions: Sequence[ObjectVersion]) -> DeleteReport:
        """Delete these versions for good; transient per-key errors are retried inside."""
        ...


class AccountDirectory(Protocol):
    def accounts(self, source: AccountsTable) -> AsyncIterator[object]:
        """The value of ``source.attribute`` of every item of ``source.table`` that has it (and whose filter
        attribute equals the filter value, if set), decoded (a string, a ``Decimal``...), read with a Scan
        that projects only those attributes, page by page. A missing table is an ``AccessError``."""
        ...


class ItemStore(Protocol):
    def find(self, query: LinkQuery, key_attributes: Sequence[str]) -> AsyncIterator[Image]:
        """Full, current (strongly consistent) images of the items that ``query`` matches now."""
        ...

    async def get(self, table: str, key: Mapping[str, object]) -> Image | None:
        """The item's current image (strongly consistent), or None."""
        ...

    async def get_many(self, table: str, keys: Sequence[Mapping[str, object]]) -> list[Image | None]:
        """``get`` for each of ``keys``, in their order, read in batches; None where there is no item."""
        ...

    async def delete_linked(self, query: LinkQuery, key: Mapping[str, object]) -> Image | None:
        """Delete the item at ``key`` only if it still matches ``query``; its image as deleted, or None
        if it was gone already or no longer matches."""
        ...


@dataclass(frozen=True, slots=True)
class StreamInfo:
    table: str
    arn: str
    view_type: StreamViewType | None


@dataclass(frozen=True, slots=True)
class Shard:
    stream_arn: str
    shard_id: str
    parent_id: str | None
    closed: bool


@dataclass(frozen=True, slots=True)
class RecordsPage:
    records: list[Mapping[str, object]]
    next_iterator: str | None


class StreamSource(Protocol):
    async def describe(self, table: str) -> StreamInfo: ...

    async def shards(self, stream_arn: str) -> list[Shard]: ...

    async def iterator(self, shard: Shard, after: str | None) -> str:
        """An iterator after the checkpoint ``after``, or at TRIM_HORIZON when there is none."""
        ...

    async def records(self, iterator: str, limit: int) -> RecordsPage: ...

    async def children(self, shard: Shard) -> list[Shard]:
        """The shards split from ``shard`` (DescribeStream with a CHILD_SHARDS filter); may lag briefly."""
        ...


class LeaseStore(Protocol):
    """The lease table. Every write is conditional; a lost race is an answer (None, False), not an error,
    except for a checkpoint, which raises ``LeaseLostError`` so its shard stops at once."""

    async def create(self, lease: Lease) -> bool:
        """Add an unowned lease for a shard if it has none; True if this call added it."""
        ...

    async def leases(self, stream_arn: str) -> list[Lease]:
        """Every lease of a stream, strongly consistent."""
        ...

    async def get(self, stream_arn: str, shard_id: str) -> Lease | None: ...

    async def take(self, lease: Lease, owner: str) -> Lease | None:
        """Own ``lease`` if it is unchanged since it was read (same counter); the taken lease with a new
        token, or None if another worker moved first."""
        ...

    async def renew(self, lease: Lease) -> Lease | None:
        """Move the counter of a lease held under ``lease.token``; None if it is no longer held."""
        ...

    async def checkpoint(self, lease: Lease, position: str) -> None:
        """Record a sequence number under ``lease.token`` (``LeaseLostError`` if not held); never moves an
        existing checkpoint backwards. ``SHARD_END`` also gives the lease up: nothing is left to read."""
        ...

    async def release(self, lease: Lease) -> bool:
        """Give up a lease held under ``lease.token`` so a peer takes it at once; False if not held."""
        ...


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Metadata only: identifiers, S3 URIs and reasons, never the content of an image."""

    source_table: str
    stream_arn: str
    shard_id: str
    sequence_number: str
    event_id: str
    kind: LetterKind
    reason: str
    created_at: dt.datetime
    cause: str | None = None
    item_table: str | None = None
    item_key: Mapping[str, object] = field(default_factory=dict)
    targets: tuple[str, ...] = ()
    attempts: int = 0
    first_attempt: dt.datetime | None = None
    last_attempt: dt.datetime | None = None
    plan: LetterPlan | None = None
    """What redrive re-executes (metadata only); None where there is no plan (no image, no record)."""
    status: LetterStatus = "pending"
    resolved_at: dt.datetime | None = None
    """When the letter was last resolved; kept when a redelivered record makes it pending again."""

    @property
    def letter_id(self) -> str:
        """Deterministic, so a redelivered record overwrites its letter instead of adding one."""
        return f"{self.stream_arn}#{self.shard_id}#{self.sequence_number}#{self.kind}"


class DeadLetterStore(Protocol):
    """The dead-letter table. Letters are listed by kind and time through an index, never a table scan; a
    letter is an audit record: resolving keeps it, and only ``purge_resolved`` deletes."""

    async def put(self, letter: DeadLetter) -> bool:
        """Write ``letter`` durably, pending; a letter with the same id is updated (pending again, its first
        ``created_at`` kept), its ``targets`` added to those it held (never dropped). True if the letter is
        new, so a redelivered record is not counted twice."""
        ...

    def list(
        self,
        *,
        kind: LetterKind | None = None,
        since: dt.datetime | None = None,
        status: LetterStatus | None = None,
    ) -> AsyncIterator[DeadLetter]:
        """Letters of ``kind`` (every kind if None) created at or after ``since``, of ``status`` (both if
        None): by kind, then status, oldest first, read page by page. The index is eventually consistent."""
        ...

    async def get(self, letter_id: str) -> DeadLetter | None:
        """The letter as stored now (a strongly consistent read), or None."""
        ...

    async def resolve(self, letter_id: str, at: dt.datetime) -> bool:
        """Mark a pending letter resolved at ``at``; False (and nothing written) if it is not pending."""
        ...

    async def purge_resolved(self, older_than: dt.datetime) -> int:
        """Delete letters resolved before ``older_than`` (each only if still resolved then); how many."""
        ...

    async def count_pending(self, kind: LetterKind) -> int:
        """Pending letters of ``kind``, counted from the index without reading whole letters."""
        ...


@dataclass(frozen=True, slots=True)
class ItemKey:
    """A DynamoDB item by table and key: an identifier, never the item's content."""

    table: str
    key: Mapping[str, object]

    def __hash__(self) -> int:  # the key is a dict: hashed as its key hash, compared as itself
        return hash((self.table, key_hash(self.table, self.key)))


Verification = Literal["verified", "leftover", "not_checked"]
"""The re-check of a receipt's targets right after its deletion (a label of ``reconciler_receipts_total``)."""
ReceiptLetterStatus = Literal["pending", "redriven"]
"""A receipt's dead letter: ``pending`` (written with it, e.g. refused targets), or ``redriven`` (a redrive
finished the letter's work and wrote the receipt)."""


@dataclass(frozen=True, slots=True)
class ReceiptCounts:
    """What the deletion removed, by artifact kind. ``under_prefixes`` is the part of the versions and delete
    markers that lay under prefixes; ``absent`` counts targets that were gone already."""

    object_versions: int = 0
    delete_markers: int = 0
    under_prefixes: int = 0
    linked_items: int = 0
    absent: int = 0


@dataclass(frozen=True, slots=True)
class Receipt:
    """The confirmation of one item's deletion. Metadata only: identifiers, S3 URIs, times and counts, never
    the content of an image. ``event`` names the stream record (stream ARN, shard, sequence number) it
    confirms; ``omitted`` counts targets beyond those stored (an item row holds at most 400 KB)."""

    table: str
    key: Mapping[str, object]
    cause: str
    event: str
    event_time: dt.datetime
    completed_at: dt.datetime
    counts: ReceiptCounts
    verification: Verification
    expires_at: dt.datetime | None = None
    leftover: int = 0
    verified_at: dt.datetime | None = None
    dead_letter_id: str | None = None
    dead_letter_kind: LetterKind | None = None
    dead_letter_status: ReceiptLetterStatus | None = None
    objects: tuple[S3Location, ...] = ()
    prefixes: tuple[S3Location, ...] = ()
    items: tuple[ItemKey, ...] = ()
    omitted: int = 0


class ReceiptStore(Protocol):
    async def put(self, receipt: Receipt) -> bool:
        """Store ``receipt`` as its item's receipt. The first receipt written for an event stays (a
        redelivered record writes nothing new), and a receipt of an earlier event never replaces a later
        one; False when nothing was written for one of those reasons."""
        ...

    async def update(self, receipt: Receipt) -> bool:
        """Store ``receipt`` over its item's receipt of the same event (a redrive finished the work), or as
        new; a receipt of a later event is never replaced (False, nothing written)."""
        ...

    async def get(self, table: str, key_hash: str) -> Receipt | None:
        """The receipt of the item of ``table`` whose key hashes to ``key_hash`` (``core.plan.key_hash``)."""
        ...


@dataclass(frozen=True, slots=True)
class ExpiryWindow:
    """Which TTL values are due for enforcement: epoch seconds at or after ``after`` (TTL itself ignores
    older ones) and before ``before`` (now minus the grace)."""

    ttl_attribute: str
    after: int
    before: int


@dataclass(frozen=True, slots=True)
class CandidatePage:
    """One Scan page of a segment: the due items' keys and TTL only (never whole images), where the next
    page starts (None at the segment's end), and the read capacity the page consumed."""

    items: Sequence[Image]
    start: Image | None
    read_units: float


class LinkedItemScan(Protocol):
    """A linked table read whole, page by page, for the orphan sweep."""

    async def scan_linked(
        self, table: str, attributes: Sequence[str], *, start: Image | None, limit: int
    ) -> CandidatePage:
        """At most ``limit`` items of ``table`` after ``start``, with only ``attributes`` (never whole
        images), the next page's start (None at the end) and the read units the page consumed."""
        ...


class ExpiredItems(Protocol):
    """A source table's items past their TTL, found by a parallel Scan and deleted one by one."""

    async def scan(
        self,
        table: str,
        window: ExpiryWindow,
        *,
        segment: int,
        segments: int,
        start: Image | None,
        limit: int,
    ) -> CandidatePage:
        """Evaluate at most ``limit`` items of ``segment`` after ``start``; return those inside ``window``."""
        ...

    async def query(
        self,
        table: str,
        window: ExpiryWindow,
        *,
        index: ExpiryIndex,
        value: str | int,
        start: Image | None,
        limit: int,
    ) -> CandidatePage:
        """At most ``limit`` items of the sparse ``index``'s partition ``value`` after ``start`` whose TTL
        (the index's sort key) is inside ``window``: their keys and TTL only."""
        ...

    async def enforce(self, table: str, key: Image, window: ExpiryWindow) -> Image | None:
        """Delete the item at ``key`` only if its TTL is still inside ``window``; its whole image as deleted,
        or None if the TTL was extended (or the item is gone)."""
        ...


@dataclass(frozen=True, slots=True)
class SweepPosition:
    """How far a segment is swept: pass ``number``, ``page`` pages into it, the next page's ``start``; a
    finished pass has ``finished_at`` (epoch seconds) and no start."""

    number: int
    page: int
    start: Image | None = None
    finished_at: float | None = None
    started_at: float | None = None
    """A scheduled job's: when its last run that finished had started (what that run covered)."""

    @property
    def order(self) -> tuple[int, int]:
        return (self.number, self.page)


class SweepPositions(Protocol):
    """Sweep positions, stored with the segment's lease and written only under its token."""

    async def load(self, lease: Lease) -> SweepPosition | None: ...

    async def save(self, lease: Lease, position: SweepPosition) -> None:
        """Store ``position`` (``LeaseLostError`` if the lease is not held); a position before the stored
        one (same pass, fewer pages; an earlier pass) leaves it as it is."""
        ...
