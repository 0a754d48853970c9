"""The benchmark's backend: moto's server in a process of its own, behind a WSGI wrapper that can add a fixed
delay to every request (emulating AWS round trips), counts requests by operation, and serves a few admin
calls under ``/_bench/`` (seed a dataset, play the TTL service, read and reset counters).

Run as ``python -m bench.server``; it prints ``PORT <n>`` once listening on 127.0.0.1.

moto's ``ListObjectVersions`` deep-copies every version in the bucket on each call, whatever the prefix
(O(bucket), where S3's cost follows the page). With ``--s3-like-listing`` the server narrows the bucket to
the prefix before moto copies it, so the listing costs what S3's would and a benchmark times the client,
not moto. The benchmark says which it measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from moto.s3.models import S3Backend
from moto.s3.utils import _VersionedKeyStore
from werkzeug.serving import make_server

from reconciler.demo.layout import Transcript, artifacts_of, items_of
from reconciler.demo.moto_server import (
    BackendSeeder,
    _install_listing_encoding,
    _install_ttl_stamp,
    ttl_delete,
)

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WsgiApp = Callable[[Environ, StartResponse], Iterable[bytes]]


def operation(environ: Environ) -> tuple[str, str]:
    """(service, operation) of a request, from its target header (DynamoDB, Streams) or shape (S3)."""
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if target:
        service = "streams" if target.startswith("DynamoDBStreams") else "dynamodb"
        return service, target.split(".")[-1]
    method = environ["REQUEST_METHOD"]
    query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    path = environ.get("PATH_INFO", "/").lstrip("/")
    on_object = "/" in path and not path.endswith("/")
    if not on_object and method == "GET" and "versions" in query:
        return "s3", "ListObjectVersions"
    if not on_object and method == "POST" and "delete" in query:
        return "s3", "DeleteObjects"
    name = (
        "DeleteObject"
        if method == "DELETE" and on_object
        else f"{method} {'object' if on_object else 'bucket'}"
    )
    return "s3", name


class Harness:
    """The WSGI wrapper: delay, count, admin calls; everything else goes to moto."""

    def __init__(self, app: WsgiApp) -> None:
        self._app = app
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.delays = {"s3": 0.0, "dynamodb": 0.0, "streams": 0.0}

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "").startswith("/_bench/"):
            return self._admin(environ, start_response)
        service, name = operation(environ)
        with self._lock:
            self.counts[f"{service}:{name}"] += 1
        delay = self.delays[service]
        if delay:
            time.sleep(delay)  # one fixed round trip per request; the threaded server serves others meanwhile
        return self._app(environ, start_response)

    def _admin(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = json.loads(environ["wsgi.input"].read(length) or b"{}")
        command = environ["PATH_INFO"].removeprefix("/_bench/")
        answer: object = {}
        match command:
            case "latency":
                self.delays.update({k: float(v) for k, v in body.items()})
                answer = self.delays
            case "counts":
                with self._lock:
                    answer, self.counts = dict(self.counts), Counter()
            case "seed":
                seed(body)
            case "ttl-delete":
                for transcript in body["transcripts"]:
                    ttl_delete("transcripts", {"transcript_id": {"S": transcript}})
            case _:
                start_response("404 Not Found", [("Content-Type", "application/json")])
                return [b"{}"]
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(answer).encode()]


def seed(body: dict[str, Any]) -> None:
    """Write transcripts (``[account, id, expires_at]`` each) and everything linked, into moto's store."""
    seeder = BackendSeeder()
    for account, transcript, expires_at in body["transcripts"]:
        t = Transcript(account, transcript, expires_at)
        for bucket, key, data in artifacts_of(t):
            seeder.put_object(bucket, key, data)
        for table, item in items_of(t):
            seeder.put_item(table, item)


_narrow = threading.local()


def install_s3_like_listing() -> None:
    """Let moto copy only the versions under the requested prefix, as S3's cost would suggest (see the module
    doc). The narrowing is per thread and mutates nothing: a delete served meanwhile sees the whole bucket."""
    original_list = S3Backend.list_object_versions

    def iterlists(self: _VersionedKeyStore) -> Iterator[tuple[str, list[Any]]]:
        prefix = getattr(_narrow, "prefix", None)
        for key, versions in self._iterlists():
            if prefix is None or key.startswith(prefix):
                yield key, versions

    def list_object_versions(self: S3Backend, bucket_name: str, *args: Any, **kwargs: Any) -> Any:
        _narrow.prefix = kwargs.get("prefix") or ""
        try:
            return original_list(self, bucket_name, *args, **kwargs)
        finally:
            _narrow.prefix = None

    _VersionedKeyStore.iterlists = iterlists
    S3Backend.list_object_versions = list_object_versions  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--s3-like-listing", action="store_true")
    args = parser.parse_args(argv)
    _install_ttl_stamp()
    _install_listing_encoding()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    if args.s3_like_listing:
        install_s3_like_listing()
    harness = Harness(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, harness, threaded=True)
    print(f"PORT {server.server_address[1]}", flush=True)  # noqa: T201 - the parent reads this line
    # Requests fail loudly if the parent goes away: stdin closing is our cue to stop.

    def stop_when_orphaned() -> None:
        sys.stdin.read()
        server.shutdown()

    threading.Thread(target=stop_when_orphaned, daemon=True).start()
    server.serve_forever()


if __name__ == "__main__":
    main()
