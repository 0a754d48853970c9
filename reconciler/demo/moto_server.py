"""moto's real HTTP server on a free loopback port, plus a stand-in for DynamoDB's TTL service.

moto never deletes expired items and never sets ``userIdentity``. ``ttl_delete`` deletes an item through
moto's backend and stamps the REMOVE record the way GetRecords spells it:
``{"PrincipalId": ..., "Type": ...}`` (moto's serializer drops the lower-case Lambda spelling).

moto also ignores ``EncodingType=url`` on ``ListObjectVersions`` (S3 honours it), so a key holding a
character XML cannot carry would break its listings; the server started here encodes them as S3 does.
"""

from __future__ import annotations

import logging
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from moto.dynamodb.models import dynamodb_backends
from moto.dynamodb.models.table import StreamShard
from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.s3.models import s3_backends
from moto.s3.responses import S3Response

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
