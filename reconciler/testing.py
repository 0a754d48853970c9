"""In-memory fakes of every port, for unit tests and the benchmark. No AWS, no network.

They keep the semantics the pipeline relies on: versions and delete markers, per-key refusals, items found by
key or index, records delivered in order from a checkpoint, shards that split and close, iterators that
expire, reads that are throttled, and leases whose every write is conditional.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import decimal
import hashlib
import typing
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Iterator,
    Mapping,
    MutableMapping,
    Sequence,
)
from dataclasses import dataclass, field

from reconciler.core.dynamodb_json import Image, decode_image, encode_key
from reconciler.core.leases import SHARD_END, Lease
from reconciler.core.plan import LinkQuery, key_hash
from reconciler.core.records import StreamViewType
from reconciler.core.scope import S3Location
from reconciler.core.spec import AccountsTable, ExpiryIndex
from reconciler.errors import (
    AccessError,
    ConfigError,
    ExpiredIteratorError,
    LeaseLostError,
    PermanentError,
    TransientError,
    TrimmedDataError,
)
from reconciler.ports import (
    CandidatePage,
    DeadLetter,
    DeleteReport,
    ExpiryWindow,
    LetterKind,
    LetterStatus,
    ObjectVersion,
    Receipt,
    RecordsPage,
    Shard,
    StreamInfo,
    SweepPosition,
    VersionPage,
)


@dataclass
class FakeArtifactStore:
    """Buckets of object versions. ``refuse`` maps a key to an S3 error code (Object Lock's AccessDenied)."""

    buckets: dict[str, list[ObjectVersion]] = field(default_factory=dict)
    refuse: dict[str, str] = field(default_factory=dict)
    page_size: int = 1000
    pages_listed: int = 0  # pages of listings read, as ListObjectVersions calls would be
    _counter: int = 0

    def put(self, bucket: str, key: str, versions: int = 1, modified: dt.datetime | None = None) -> None:
        """Add ``versions`` versions of ``key``, written at ``modified`` (default: now), as S3 lists them."""
        written = modified or dt.datetime.now(dt.UTC)
        for _ in range(versions):
            self._counter += 1
            self.buckets.setdefault(bucket, []).append(
                ObjectVersion(key, f"v{self._counter}", last_modified=written)
            )

    def mark_deleted(self, bucket: str, key: str) -> None:
        """A plain delete on a versioned bucket: adds a delete marker, keeps the data."""
        self._counter += 1
        self.buckets.setdefault(bucket, []).append(
            ObjectVersion(
                key, f"m{self._counter}", is_delete_marker=True, last_modified=dt.datetime.now(dt.UTC)
            )
        )

    def keys(self, bucket: str) -> set[str]:
        return {v.key for v in self.buckets.get(bucket, [])}

    async def list_versions(
        self, location: S3Location, *, exact: bool, after: ObjectVersion | None = None
    ) -> AsyncGenerator[VersionPage, None]:
        resume = (after.key, after.version_id) if after is not None else None
        matches = [
            v
            for v in sorted(self.buckets.get(location.bucket, []), key=lambda v: (v.key, v.version_id))
            if (v.key == location.key if exact else v.key.startswith(location.key))
            and (resume is None or (v.key, v.version_id) > resume)
        ]
        for start in range(0, max(len(matches), 1), self.page_size):
            self.pages_listed += 1
            yield VersionPage(matches[start : start + self.page_size], start + self.page_size < len(matches))

    async def delete_versions(self, bucket: str, versions: Sequence[ObjectVersion]) -> DeleteReport:
        assert len(versions) <= 1000, "DeleteObjects takes at most 1,000 keys"  # noqa: S101, PLR2004
        held = self.buckets.get(bucket, [])
        refused = tuple((v, self.refuse[v.key]) for v in versions if v.key in self.refuse)
        gone = [v for v in versions if v.key not in self.refuse]
        self.buckets[bucket] = [v for v in held if v not in set(gone)]
        return DeleteReport(deleted=tuple(gone), refused=refused)


@dataclass
class FakeAccountDirectory:
    """Tables of items naming accounts, stored as DynamoDB would give them back (numbers as Decimal)."""

    tables: dict[str, list[Image]] = field(default_factory=dict)
    scans: int = 0

    def put(self, table: str, item: Mapping[str, object]) -> None:
        self.tables.setdefault(table, []).append(decode_image(encode_key(item)))

    async def accounts(self, source: AccountsTable) -> AsyncIterator[object]:
        if source.table not in self.tables:
            raise AccessError(f"AWS refused the request: ResourceNotFoundException (scan on {source.table})")
        self.scans += 1
        for item in list(self.tables[source.table]):
            wanted = source.filter_attribute is None or _same_value(
                item.get(source.filter_attribute), source.filter_value
            )
            if wanted and source.attribute in item:
                yield item[source.attribute]


def _same_value(actual: object, expected: object) -> bool:
    """DynamoDB's ``=``: the same type and value (a number is never a string, ``true`` is never 1)."""
    decoded = decode_image(encode_key({"v": expected}))["v"]
    return type(actual) is type(decoded) and actual == decoded


@dataclass
class FakeItemStore:
    """Tables of items; ``indexes`` maps (table, index) to the attribute the index is keyed on."""

    tables: dict[str, list[dict[str, object]]] = field(default_factory=dict)
    fail_deletes: bool = False

    def put(self, table: str, item: Mapping[str, object]) -> None:
        self.tables.setdefault(table, []).append(dict(item))

    async def find(self, query: LinkQuery, key_attributes: Sequence[str]) -> AsyncIterator[Image]:  # noqa: ARG002
        for item in list(self.tables.get(query.table, [])):
            if query.matches(item):
                yield dict(item)

    async def get(self, table: str, key: Mapping[str, object]) -> Image | None:
        rows = self.tables.get(table, [])
        return next((dict(r) for r in rows if all(r.get(k) == v for k, v in key.items())), None)

    async def get_many(self, table: str, keys: Sequence[Mapping[str, object]]) -> list[Image | None]:
        return [await self.get(table, key) for key in keys]

    async def scan_linked(
        self, table: str, attributes: Sequence[str], *, start: Image | None, limit: int
    ) -> CandidatePage:
        """Pages in a stable order of the projections (as DynamoDB's is of keys), so deleting items between
        pages skips none; ``start`` is the page's last projection. One read unit an item."""
        rows = [{a: r[a] for a in attributes if a in r} for r in self.tables.get(table, [])]
        rows.sort(key=_order)
        if start is not None:
            rows = [r for r in rows if _order(r) > _order(start)]
        page, more = rows[:limit], len(rows) > limit
        return CandidatePage(page, dict(page[-1]) if more else None, float(len(page)))

    async def delete_linked(self, query: LinkQuery, key: Mapping[str, object]) -> Image | None:
        if self.fail_deletes:
            raise TransientError("ProvisionedThroughputExceededException")
        rows = self.tables.get(query.table, [])
        for row in rows:
            if all(row.get(k) == v for k, v in key.items()):
                if not query.matches(row):
                    return None
                rows.remove(row)
                return dict(row)
        return None


def _order(image: Mapping[str, object]) -> str:
    return repr(sorted((name, repr(value)) for name, value in image.items()))


@dataclass
class FakeStreamSource:
    """One stream per table; records per shard are raw ``GetRecords`` dicts in sequence order.

    Shards split (``split``: the parent closes, its children appear); ``children`` may miss a new child
    for a few calls (``hide_children``), as DescribeStream may; ``expire`` and ``throttle`` make the next
    reads of a shard fail with an expired iterator or a throttle."""

    view_type: StreamViewType = StreamViewType.NEW_AND_OLD_IMAGES
    by_stream: dict[str, list[Shard]] = field(default_factory=dict)
    records_by_shard: dict[str, list[Mapping[str, object]]] = field(default_factory=dict)
    trimmed: set[str] = field(default_factory=set)  # shards that lost records before the first one held
    disabled: bool = False  # the stream was switched off
    missing: set[str] = field(default_factory=set)  # tables that do not exist (ResourceNotFoundException)
    view_types: dict[str, StreamViewType] = field(default_factory=dict)  # per table, else ``view_type``
    hide_children: int = 0
    expire: dict[str, int] = field(default_factory=dict)
    throttle: dict[str, int] = field(default_factory=dict)
    reads: int = 0
    reads_by_shard: dict[str, int] = field(default_factory=dict)
    listings: int = 0  # full DescribeStream listings
    child_lookups: int = 0

    def arn(self, table: str) -> str:
        return f"arn:aws:dynamodb:us-east-1:123456789012:table/{table}/stream/2026-01-01T00:00:00.000"

    def add_shard(
        self, table: str, shard_id: str, *, parent: str | None = None, closed: bool = False
    ) -> Shard:
        shard = Shard(self.arn(table), shard_id, parent, closed)
        self.by_stream.setdefault(self.arn(table), []).append(shard)
        self.records_by_shard.setdefault(shard_id, [])
        return shard

    def close(self, shard_id: str) -> None:
        for shards in self.by_stream.values():
            shards[:] = [dataclasses.replace(s, closed=True) if s.shard_id == shard_id else s for s in shards]

    def split(self, table: str, parent: str, children: Sequence[str]) -> list[Shard]:
        """Close ``parent``; new records go to ``children``."""
        self.close(parent)
        return [self.add_shard(table, child, parent=parent) for child in children]

    def append(self, shard_id: str, record: Mapping[str, object]) -> None:
        self.records_by_shard[shard_id].append(record)

    def shard(self, shard_id: str) -> Shard:
        return next(s for shards in self.by_stream.values() for s in shards if s.shard_id == shard_id)

    async def describe(self, table: str) -> StreamInfo:
        if table in self.missing:
            raise AccessError("AWS refused the request: ResourceNotFoundException")
        if self.disabled:
            raise ConfigError(f"table {table!r} has no stream enabled")
        return StreamInfo(table, self.arn(table), self.view_types.get(table, self.view_type))

    async def shards(self, stream_arn: str) -> list[Shard]:
        self.listings += 1
        return list(self.by_stream.get(stream_arn, []))

    async def children(self, shard: Shard) -> list[Shard]:
        self.child_lookups += 1
        if self.hide_children > 0:
            self.hide_children -= 1
            return []
        return [s for s in self.by_stream.get(shard.stream_arn, []) if s.parent_id == shard.shard_id]

    async def iterator(self, shard: Shard, after: str | None) -> str:
        records = self.records_by_shard[shard.shard_id]
        first = _seq(records[0]) if records else ""
        oldest = int(first) if first.isdigit() else 0
        if after is not None and shard.shard_id in self.trimmed and int(after) + 1 < oldest:
            raise TrimmedDataError("records after the checkpoint were trimmed")
        position = 0
        for record in records if after is not None else []:
            sequence = _seq(record)
            if not sequence.isdigit() or int(sequence) > int(after or 0):
                break
            position += 1
        return f"{shard.shard_id}|{position}"

    async def records(self, iterator: str, limit: int) -> RecordsPage:
        self.reads += 1
        shard_id, position = iterator.split("|")
        self.reads_by_shard[shard_id] = self.reads_by_shard.get(shard_id, 0) + 1
        if self.expire.get(shard_id, 0) > 0:
            self.expire[shard_id] -= 1
            raise ExpiredIteratorError("shard iterator expired")
        if self.throttle.get(shard_id, 0) > 0:
            self.throttle[shard_id] -= 1
            raise TransientError("AWS call failed after retries: LimitExceededException")
        records = self.records_by_shard[shard_id][int(position) : int(position) + limit]
        end = int(position) + len(records)
        done = self.shard(shard_id).closed and end >= len(self.records_by_shard[shard_id])
        return RecordsPage(records, None if done else f"{shard_id}|{end}")


def _seq(record: Mapping[str, object]) -> str:
    """The record's sequence number as text; empty for a malformed record that has none."""
    body = record.get("dynamodb")
    return str(body.get("SequenceNumber", "")) if isinstance(body, Mapping) else ""


@dataclass
class FakeLeaseStore:
    """The lease table in memory, with the adapter's conditions: a take needs an unchanged counter, a renewal,
    checkpoint or release the taker's token; a checkpoint never moves backwards and SHARD_END is final.
    ``positions`` and ``history`` show checkpoints as written."""

    rows: dict[tuple[str, str], Lease] = field(default_factory=dict)
    history: list[str] = field(default_factory=list)
    writes: int = 0
    fail_renewals: bool = False  # a worker cut off from the table: it cannot renew
    _tokens: int = 0

    @property
    def positions(self) -> _Positions:
        """Checkpoints by (stream ARN, shard id); setting one seeds a lease's checkpoint."""
        return _Positions(self)

    def grant(self, stream_arn: str, shard_id: str, table: str, owner: str = "test") -> Lease:
        """Create (if needed) and take a lease at once, outside any event loop: for tests."""
        held = self.rows.get((stream_arn, shard_id)) or Lease(stream_arn, shard_id, table)
        self.rows[held.key] = held
        self._tokens += 1
        return self._write(held, owner=owner, token=f"token-{self._tokens}", counter=held.counter + 1)

    async def create(self, lease: Lease) -> bool:
        if lease.key in self.rows:
            return False
        self.writes += 1
        self.rows[lease.key] = dataclasses.replace(lease, owner=None, token=None, counter=0)
        return True

    async def leases(self, stream_arn: str) -> list[Lease]:
        return [lease for key, lease in self.rows.items() if key[0] == stream_arn]

    async def get(self, stream_arn: str, shard_id: str) -> Lease | None:
        return self.rows.get((stream_arn, shard_id))

    async def take(self, lease: Lease, owner: str) -> Lease | None:
        held = self.rows.get(lease.key)
        if held is None or held.counter != lease.counter:
            return None
        self._tokens += 1
        taken = self._write(held, owner=owner, token=f"token-{self._tokens}", counter=held.counter + 1)
        # As the adapter: a row from before leases names no table; the taker's lease says which it is.
        return taken if taken.table else dataclasses.replace(taken, table=lease.table)

    async def renew(self, lease: Lease) -> Lease | None:
        held = self.rows.get(lease.key)
        if self.fail_renewals:
            raise TransientError("lease table throttled")
        if held is None or held.token is None or held.token != lease.token:
            return None
        return self._write(held, counter=held.counter + 1)

    async def checkpoint(self, lease: Lease, position: str) -> None:
        held = self.rows.get(lease.key)
        if held is None or held.token is None or held.token != lease.token:
            raise LeaseLostError(f"the lease of shard {lease.shard_id} is held by another worker")
        current = held.checkpoint
        if current == SHARD_END or (
            current is not None and position != SHARD_END and int(position) < int(current)
        ):
            return
        self.history.append(position)
        if position == SHARD_END:
            self._write(held, checkpoint=position, owner=None, token=None, counter=held.counter + 1)
        else:
            self._write(held, checkpoint=position)

    async def release(self, lease: Lease) -> bool:
        held = self.rows.get(lease.key)
        if held is None or held.token is None or held.token != lease.token:
            return False
        self._write(held, owner=None, token=None, counter=held.counter + 1)
        return True

    def _write(self, held: Lease, **changes: object) -> Lease:
        self.writes += 1
        updated = dataclasses.replace(held, **changes)  # type: ignore[arg-type]
        self.rows[held.key] = updated
        return updated


class _Positions(MutableMapping[tuple[str, str], str]):
    def __init__(self, store: FakeLeaseStore) -> None:
        self._rows = store.rows

    def __getitem__(self, key: tuple[str, str]) -> str:
        checkpoint = self._rows[key].checkpoint
        if checkpoint is None:
            raise KeyError(key)
        return checkpoint

    def __setitem__(self, key: tuple[str, str], position: str) -> None:
        held = self._rows.get(key) or Lease(*key, table="")
        self._rows[key] = dataclasses.replace(held, checkpoint=position)

    def __delitem__(self, key: tuple[str, str]) -> None:
        self._rows[key] = dataclasses.replace(self._rows[key], checkpoint=None)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return (key for key, lease in self._rows.items() if lease.checkpoint is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


MAX_ITEM_BYTES = 400 * 1024  # DynamoDB refuses to write a larger item (moto checks PutItem, not an ADD)


@dataclass
class FakeDeadLetterStore:
    """The dead-letter table in memory, with the adapter's promises: a letter written again is pending again
    and keeps its first ``created_at`` and every target named; a letter larger than a DynamoDB item is
    refused, as AWS refuses it; listings go by kind, then status, oldest first; resolving and purging are
    conditional on the letter's status. ``fail`` throttles every call."""

    letters: dict[str, DeadLetter] = field(default_factory=dict)
    fail: bool = False

    def _check(self) -> None:
        if self.fail:
            raise TransientError("dead-letter table throttled")

    async def put(self, letter: DeadLetter) -> bool:
        self._check()
        held = self.letters.get(letter.letter_id)
        if held is not None:
            letter = dataclasses.replace(
                letter,
                targets=tuple(dict.fromkeys((*held.targets, *letter.targets))),
                created_at=held.created_at,
                resolved_at=held.resolved_at,
            )
        if _item_bytes(letter) > MAX_ITEM_BYTES:
            raise PermanentError("AWS refused the call: ValidationException")
        self.letters[letter.letter_id] = dataclasses.replace(letter, status="pending")
        return held is None

    async def list(
        self,
        *,
        kind: LetterKind | None = None,
        since: dt.datetime | None = None,
        status: LetterStatus | None = None,
    ) -> AsyncIterator[DeadLetter]:
        self._check()
        kinds: tuple[str, ...] = (kind,) if kind else typing.get_args(LetterKind)
        statuses: tuple[str, ...] = (status,) if status else typing.get_args(LetterStatus)
        found = [
            held
            for held in self.letters.values()
            if held.kind in kinds and held.status in statuses and (since is None or held.created_at >= since)
        ]
        order = {name: n for n, name in enumerate((*kinds, *statuses))}
        found.sort(key=lambda h: (order[h.kind], order[h.status], h.created_at, h.letter_id))
        for held in found:
            yield held

    async def get(self, letter_id: str) -> DeadLetter | None:
        self._check()
        return self.letters.get(letter_id)

    async def resolve(self, letter_id: str, at: dt.datetime) -> bool:
        self._check()
        held = self.letters.get(letter_id)
        if held is None or held.status != "pending":
            return False
        self.letters[letter_id] = dataclasses.replace(held, status="resolved", resolved_at=at)
        return True

    async def purge_resolved(self, older_than: dt.datetime) -> int:
        self._check()
        gone = [
            letter_id
            for letter_id, held in self.letters.items()
            if held.status == "resolved" and held.resolved_at is not None and held.resolved_at < older_than
        ]
        for letter_id in gone:
            del self.letters[letter_id]
        return len(gone)

    async def count_pending(self, kind: LetterKind) -> int:
        self._check()
        return sum(1 for held in self.letters.values() if held.kind == kind and held.status == "pending")


@dataclass
class FakeReceiptStore:
    """Receipts by (table, key hash), with the adapter's condition: the first receipt of an event stays, and
    one of an earlier event never replaces a later one's (``update`` replaces the receipt of its own event).
    ``fail`` makes every call fail as a throttle."""

    receipts: dict[tuple[str, str], Receipt] = field(default_factory=dict)
    fail: bool = False
    writes: int = 0

    async def put(self, receipt: Receipt) -> bool:
        return self._put(receipt, replace_own=False)

    async def update(self, receipt: Receipt) -> bool:
        return self._put(receipt, replace_own=True)

    def _put(self, receipt: Receipt, *, replace_own: bool) -> bool:
        if self.fail:
            raise TransientError("receipts table throttled")
        self.writes += 1
        where = (receipt.table, key_hash(receipt.table, receipt.key))
        held = self.receipts.get(where)
        if held is not None and held.event == receipt.event and not replace_own:
            return False
        if held is not None and held.event != receipt.event and held.event_time > receipt.event_time:
            return False
        self.receipts[where] = receipt
        return True

    async def get(self, table: str, key_hash: str) -> Receipt | None:
        if self.fail:
            raise TransientError("receipts table throttled")
        return self.receipts.get((table, key_hash))


@dataclass
class FakeExpiredItems:
    """The expiry Scan and conditional delete over a ``FakeItemStore``'s tables. Items fall in segments by a
    hash of their key; each evaluated item costs ``units_per_item`` read units, filtered or not (as a Scan's).
    ``after_scan`` runs once a page is read, before it is returned: a test extends a TTL there."""

    items: FakeItemStore
    keys: dict[str, tuple[str, ...]]
    units_per_item: float = 0.5
    after_scan: Callable[[CandidatePage], None] | None = None
    scans: int = 0
    queries: int = 0
    deletes: int = 0

    def segment_of(self, table: str, item: Mapping[str, object], segments: int) -> int:
        text = repr(sorted((k, repr(item.get(k))) for k in self.keys[table]))
        return int(hashlib.sha256(text.encode()).hexdigest(), 16) % segments

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
        self.scans += 1
        key_of = self._key_of(table)
        rows = sorted(
            (r for r in self.items.tables.get(table, []) if self.segment_of(table, r, segments) == segment),
            key=lambda r: repr(key_of(r)),
        )
        if start is not None:
            rows = [r for r in rows if repr(key_of(r)) > repr(dict(start))]
        evaluated = rows[:limit]
        found = [
            {**key_of(r), window.ttl_attribute: r[window.ttl_attribute]} for r in evaluated if _due(r, window)
        ]
        more = len(rows) > limit
        page = CandidatePage(
            found, key_of(evaluated[-1]) if more else None, len(evaluated) * self.units_per_item
        )
        if self.after_scan is not None:
            self.after_scan(page)
        return page

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
        """A sparse index: only items holding the partition attribute are in it, in TTL order; each item
        read costs ``units_per_item`` (only the due ones are read)."""
        self.queries += 1
        key_of = self._key_of(table)

        def order(row: Mapping[str, object]) -> tuple[object, str]:
            return (row[window.ttl_attribute], repr(key_of(row)))

        rows = sorted(
            (
                r
                for r in self.items.tables.get(table, [])
                if r.get(index.partition_attribute) == value and _due(r, window)
            ),
            key=order,
        )
        if start is not None:
            rows = [r for r in rows if order(r) > (start[window.ttl_attribute], repr(key_of(start)))]
        page = rows[:limit]
        found = [{**key_of(r), window.ttl_attribute: r[window.ttl_attribute]} for r in page]
        last = found[-1] if len(rows) > limit else None
        return CandidatePage(found, last, len(page) * self.units_per_item)

    async def enforce(self, table: str, key: Image, window: ExpiryWindow) -> Image | None:
        rows = self.items.tables.get(table, [])
        for row in rows:
            if all(row.get(k) == v for k, v in key.items()):
                if not _due(row, window):
                    return None
                self.deletes += 1
                rows.remove(row)
                return dict(row)
        return None

    def _key_of(self, table: str) -> Callable[[Mapping[str, object]], dict[str, object]]:
        names = self.keys[table]
        return lambda row: {k: row[k] for k in names}


def _due(row: Mapping[str, object], window: ExpiryWindow) -> bool:
    ttl = row.get(window.ttl_attribute)
    return isinstance(ttl, decimal.Decimal) and window.after <= ttl < window.before


@dataclass
class FakeSweepPositions:
    """Sweep positions beside a ``FakeLeaseStore``'s rows, with the adapter's conditions."""

    leases: FakeLeaseStore
    stored: dict[tuple[str, str], SweepPosition] = field(default_factory=dict)
    saves: int = 0

    async def load(self, lease: Lease) -> SweepPosition | None:
        return self.stored.get(lease.key)

    async def save(self, lease: Lease, position: SweepPosition) -> None:
        held = self.leases.rows.get(lease.key)
        if held is None or held.token is None or held.token != lease.token:
            raise LeaseLostError(f"the sweep lease of segment {lease.shard_id} is held by another worker")
        current = self.stored.get(lease.key)
        if current is not None and position.order < current.order:
            return
        self.saves += 1
        self.stored[lease.key] = position


def _item_bytes(letter: DeadLetter) -> int:
    """About what DynamoDB counts: the UTF-8 text of every field and target."""
    texts = [str(value) for value in dataclasses.asdict(letter).values() if value is not None]
    return sum(len(text.encode("utf-8", "surrogatepass")) for text in (*texts, *letter.targets))


class FixedClock:
    """A clock tests move by hand."""

    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


def stream_record(
    sequence: int,
    *,
    event: str = "REMOVE",
    old_image: Mapping[str, object] | None = None,
    keys: Mapping[str, object] | None = None,
    created_at: dt.datetime | None = None,
    identity: str | None = None,
    view_type: str = "NEW_AND_OLD_IMAGES",
) -> dict[str, object]:
    """A raw record as ``GetRecords`` returns it. ``identity``: "botocore", "lambda" or None."""
    image = encode_key(old_image) if old_image is not None else None
    body: dict[str, object] = {
        "ApproximateCreationDateTime": created_at or dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        "SequenceNumber": f"{sequence:021d}",
        "StreamViewType": view_type,
        "Keys": encode_key(keys if keys is not None else dict(list((old_image or {}).items())[:1])),
        "SizeBytes": 1,
    }
    if image is not None and event != "INSERT":
        body["OldImage"] = image
    record: dict[str, object] = {
        "eventID": f"event-{sequence}",
        "eventName": event,
        "eventSource": "aws:dynamodb",
        "dynamodb": body,
    }
    if identity == "botocore":
        record["userIdentity"] = {"PrincipalId": "dynamodb.amazonaws.com", "Type": "Service"}
    elif identity == "lambda":
        record["userIdentity"] = {"principalId": "dynamodb.amazonaws.com", "type": "Service"}
    return record


async def eventually(condition: Callable[[], bool], seconds: float = 10.0, interval: float = 0.005) -> None:
    """Wait until ``condition()`` holds; TimeoutError after ``seconds``. Conditions read metrics or fakes."""
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110 - polling state that offers no event to wait on
            await asyncio.sleep(interval)
