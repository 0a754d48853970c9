"""moto's real HTTP server on a free loopback port, plus a stand-in for DynamoDB's TTL service.

moto never deletes expired items and never sets ``userIdentity``. ``ttl_delete`` deletes an item through
moto's backend and stamps the REMOVE record the way GetRecords spells it:
``{"PrincipalId": ..., "Type": ...}`` (moto's serializer drops the lower-case Lambda spelling).

moto also ignores ``EncodingType=url`` on ``ListObjectVersions`` (S3 honours it), so a key holding a
character XML cannot carry would break its listings; the server started here encodes them as S3 does.

``at_scale`` makes moto's costs follow the answer rather than the whole bucket or table (the answers stay
the same), for tests that hold thousands of versions and items.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from itertools import accumulate
from typing import Any

from moto.dynamodb.models import dynamodb_backends
from moto.dynamodb.models.table import StreamShard, Table
from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.s3.models import S3Backend, s3_backends
from moto.s3.responses import S3Response
from moto.s3.utils import _VersionedKeyStore

ACCOUNT_ID = "123456789012"
REGION = "us-east-1"
CREDENTIALS = ("testing", "testing")
TTL_IDENTITY = {"PrincipalId": "dynamodb.amazonaws.com", "Type": "Service"}

_stamp = threading.local()
_install_lock = threading.Lock()


def _install_ttl_stamp() -> None:
    with _install_lock:
        if getattr(StreamShard.add, "_ttl_stamp", False):
            return
        original = StreamShard.add

        def add(self: StreamShard, old: Any, new: Any) -> None:
            original(self, old, new)
            if getattr(_stamp, "active", False) and new is None and self.items:
                self.items[-1].record["userIdentity"] = dict(TTL_IDENTITY)

        add._ttl_stamp = True  # type: ignore[attr-defined]  # noqa: SLF001 - marks our own wrapper
        StreamShard.add = add  # type: ignore[method-assign]


def _install_listing_encoding() -> None:
    """Make moto's ListObjectVersions honour ``EncodingType=url`` as S3 does (keys and markers encoded,
    space as '+'): https://docs.aws.amazon.com/AmazonS3/latest/API/API_ListObjectVersions.html"""
    with _install_lock:
        if getattr(S3Response.list_object_versions, "_encodes", False):
            return
        original = S3Response.list_object_versions

        def list_object_versions(self: S3Response) -> Any:
            if self.querystring.get("encoding-type", [None])[0] != "url":
                return original(self)
            serialized = self.serialized

            def encoded(action_result: Any) -> Any:
                result = action_result.result
                for entry in (*result.get("Versions", []), *result.get("DeleteMarkers", [])):
                    entry["Key"] = urllib.parse.quote_plus(entry["Key"], safe="/")
                for name in ("NextKeyMarker", "KeyMarker", "Prefix"):
                    if result.get(name):
                        result[name] = urllib.parse.quote_plus(result[name], safe="/")
                result["EncodingType"] = "url"
                return serialized(action_result)

            self.serialized = encoded  # type: ignore[method-assign]
            try:
                return original(self)
            finally:
                del self.serialized

        list_object_versions._encodes = True  # type: ignore[attr-defined]  # noqa: SLF001 - our own wrapper
        S3Response.list_object_versions = list_object_versions  # type: ignore[method-assign]


@contextmanager
def at_scale() -> Iterator[None]:
    """moto, answering exactly as before, at a cost that follows the answer instead of the store:

    - ``ListObjectVersions`` deep-copies every version of the bucket on each call; here it copies only the
      keys under the prefix, from the key marker on, and (without a delimiter) only as many as the page can
      hold, the marker key's versions and one more included, so truncation and markers come out the same;
    - every DynamoDB ``Query`` and ``Scan`` sorts the whole table comparing ``DynamoType`` objects (two
      Decimal or str conversions per comparison); here each item's sort key is converted once.

    Installed for the block only; not reentrant."""
    with _install_lock:
        listing, iterlists, all_items = (
            S3Backend.list_object_versions,
            _VersionedKeyStore.iterlists,
            Table.all_items,
        )

        def list_object_versions(self: S3Backend, bucket_name: str, *args: Any, **kwargs: Any) -> Any:
            _narrow.page = _Page(
                kwargs.get("prefix") or "",
                kwargs.get("key_marker"),
                None if kwargs.get("delimiter") else kwargs.get("max_keys", 1000),
            )
            try:
                return listing(self, bucket_name, *args, **kwargs)
            finally:
                _narrow.page = None

        def narrowed(self: _VersionedKeyStore) -> Iterator[tuple[str, list[Any]]]:
            page: _Page | None = getattr(_narrow, "page", None)
            return iterlists(self) if page is None else page.select(self)

        def sorted_once(self: Table) -> list[Any]:
            items = [
                v
                for hashed in self.items.values()
                for v in (hashed.values() if self.range_key_attr else [hashed])
            ]
            return sorted(items, key=_sort_key)

        S3Backend.list_object_versions = list_object_versions  # type: ignore[method-assign]
        _VersionedKeyStore.iterlists = narrowed
        Table.all_items = sorted_once  # type: ignore[method-assign]
    try:
        yield
    finally:
        with _install_lock:
            S3Backend.list_object_versions = listing  # type: ignore[method-assign]
            _VersionedKeyStore.iterlists = iterlists
            Table.all_items = all_items  # type: ignore[method-assign]


_narrow = threading.local()


class _Page:
    """What one ``ListObjectVersions`` call can answer with: keys under ``prefix`` from ``marker`` on, as
    many as a page of ``limit`` versions needs (all of them with no limit)."""

    def __init__(self, prefix: str, marker: str | None, limit: int | None) -> None:
        self.prefix, self.marker, self.limit = prefix, marker, limit

    def select(self, store: _VersionedKeyStore) -> Iterator[tuple[str, list[Any]]]:
        # dict.items on a copy: the raw version lists, read in one step while requests mutate the store
        chosen = sorted(
            (
                (key, versions)
                for key, versions in list(dict.items(store))
                if key.startswith(self.prefix) and (self.marker is None or key >= self.marker)
            ),
            key=lambda entry: entry[0],
        )
        if self.limit is None:
            return iter(chosen)
        # The marker key's versions may all be skipped and the first one after it is dropped when no version
        # marker is given; one more than a page tells moto the listing is truncated.
        enough = self.limit + len(store.getlist(self.marker or "", []) or []) + 2
        counts = list(accumulate(len(versions) for _, versions in chosen))
        end = next((n + 1 for n, total in enumerate(counts) if total >= enough), len(chosen))
        return iter(chosen[:end])


def _sort_key(item: Any) -> Any:
    """moto's own order (``(hash_key, range_key)`` or ``hash_key``, compared by ``cast_value``), converted
    once per item."""
    if item.range_key:
        return (item.hash_key.cast_value, item.range_key.cast_value)
    return item.hash_key.cast_value


def ttl_delete(table: str, key: Mapping[str, Any]) -> None:
    """Delete ``key`` (DynamoDB JSON) from ``table`` as DynamoDB's TTL service would."""
    backend = dynamodb_backends[ACCOUNT_ID][REGION]
    _stamp.active = True
    try:
        backend.delete_item(table, dict(key))
    finally:
        _stamp.active = False


class BackendSeeder:
    """Writes demo data straight into moto's in-process store: the same state, no HTTP round trip each."""

    def put_object(self, bucket: str, key: str, body: bytes) -> None:
        s3_backends[ACCOUNT_ID]["aws"].put_object(bucket, key, body)

    def put_old_object(self, bucket: str, key: str, body: bytes, age: dt.timedelta) -> None:
        """An object version written ``age`` ago (its ``LastModified``), as a file left from long ago is."""
        version = s3_backends[ACCOUNT_ID]["aws"].put_object(bucket, key, body)
        version.last_modified = version.last_modified - age  # moto keeps a naive UTC time

    def put_item(self, table: str, item: dict[str, Any]) -> None:
        dynamodb_backends[ACCOUNT_ID][REGION].put_item(table, item)


@contextmanager
def moto_server() -> Iterator[str]:
    """Start moto on 127.0.0.1 and a port the kernel picks; yield its endpoint URL."""
    _install_ttl_stamp()
    _install_listing_encoding()
    # moto's request log and its tracebacks for requests it fails (retried by us) are noise here.
    logging.getLogger("werkzeug").setLevel(logging.CRITICAL)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def reset(endpoint: str) -> None:
    """Clear every moto backend (between tests)."""
    request = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")  # noqa: S310 - loopback
    with urllib.request.urlopen(request, timeout=10):  # noqa: S310 - loopback only
        pass
