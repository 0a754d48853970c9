"""Fault injection between a worker and moto's server: a loopback HTTP proxy.

The proxy listens on a free 127.0.0.1 port and forwards each request to moto. A seeded draw per request
decides whether it instead answers with an AWS error, waits first, or drops the connection, either before
forwarding (the request never ran) or after (it ran, and its answer is lost). Errors have the shapes the
services send and botocore parses, checked by tests/test_faults.py:

- S3 (rest-xml): the HTTP status, ``x-amz-request-id`` and ``x-amz-id-2`` headers and an
  ``<Error><Code>`` body. https://docs.aws.amazon.com/AmazonS3/latest/API/ErrorResponses.html
- DynamoDB and DynamoDB Streams (JSON 1.0): HTTP 400, ``x-amzn-RequestId``, ``x-amz-crc32`` and a body
  ``{"__type": "namespace#Code", "message": ...}``; botocore reads the code after ``#``.
  https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Programming.Errors.html

Requests are named as AWS names them: from ``X-Amz-Target`` for the JSON services, from the method and
query string for S3 (path-style: with an IP endpoint botocore puts the bucket in the path). Every fault is
counted by kind and operation, so a test can prove its faults fired. The seed fixes the sequence of draws,
not which request meets which draw: concurrent requests arrive in any order.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import uuid
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Literal, Self
from urllib.parse import parse_qsl, urlsplit

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

Service = Literal["s3", "dynamodb", "streams"]
SERVICES: frozenset[Service] = frozenset({"s3", "dynamodb", "streams"})


class Kind(StrEnum):
    """What the proxy can do to one request. Error kinds are named by their AWS error code."""

    SLOW_DOWN = "SlowDown"
    INTERNAL_ERROR = "InternalError"
    THROTTLING = "ThrottlingException"
    THROUGHPUT_EXCEEDED = "ProvisionedThroughputExceededException"
    EXPIRED_ITERATOR = "ExpiredIteratorException"
    TRIMMED_DATA = "TrimmedDataAccessException"
    LIMIT_EXCEEDED = "LimitExceededException"
    LATENCY = "latency"
    DROP_BEFORE = "drop_before"
    DROP_AFTER = "drop_after"


@dataclass(frozen=True, slots=True)
class _Shape:
    status: int
    message: str
    services: frozenset[Service]
    json_type: str | None = None  # the JSON ``__type``; None: an S3 XML error


_DYNAMODB = "com.amazonaws.dynamodb.v20120810"
_SHAPES: dict[Kind, _Shape] = {
    Kind.SLOW_DOWN: _Shape(503, "Please reduce your request rate.", frozenset({"s3"})),
    Kind.INTERNAL_ERROR: _Shape(
        500, "We encountered an internal error. Please try again.", frozenset({"s3"})
    ),
    Kind.THROTTLING: _Shape(
        400,
        "Rate of requests exceeds the allowed throughput.",
        frozenset({"dynamodb", "streams"}),
        "com.amazon.coral.availability#ThrottlingException",
    ),
    Kind.THROUGHPUT_EXCEEDED: _Shape(
        400,
        "The level of configured provisioned throughput for the table was exceeded.",
        frozenset({"dynamodb"}),
        f"{_DYNAMODB}#ProvisionedThroughputExceededException",
    ),
    Kind.EXPIRED_ITERATOR: _Shape(
        400, "Iterator expired.", frozenset({"streams"}), f"{_DYNAMODB}#ExpiredIteratorException"
    ),
    Kind.TRIMMED_DATA: _Shape(
        400,
        "The operation attempted to read past the oldest stream record in a shard.",
        frozenset({"streams"}),
        f"{_DYNAMODB}#TrimmedDataAccessException",
    ),
    Kind.LIMIT_EXCEEDED: _Shape(
        400,
        "Too many concurrent requests for this shard.",
        frozenset({"streams", "dynamodb"}),
        f"{_DYNAMODB}#LimitExceededException",
    ),
}


@dataclass(frozen=True, slots=True)
class Call:
    """One request as AWS names it."""

    service: Service
    operation: str


@dataclass(frozen=True, slots=True)
class Rule:
    """``kind`` on a share ``rate`` of the requests to ``services`` (default: every service whose errors
    have that shape), only ``operations`` if given, and no more than ``times`` times if given."""

    kind: Kind
    rate: float
    services: frozenset[Service] | None = None
    operations: frozenset[str] | None = None
    times: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.rate <= 1:
            raise ValueError(f"rate {self.rate} is not a share of requests")
        shape = _SHAPES.get(self.kind)
        if shape is not None and self.services is not None and not self.services <= shape.services:
            raise ValueError(f"{self.kind} has no shape for {sorted(self.services - shape.services)}")

    def applies(self, call: Call) -> bool:
        shape = _SHAPES.get(self.kind)
        services = self.services or (shape.services if shape else SERVICES)
        return call.service in services and (self.operations is None or call.operation in self.operations)


def identify(method: str, path: str, query: str, target: str | None) -> Call:
    """The service and operation of a request (path-style S3, JSON ``X-Amz-Target`` otherwise)."""
    if target:
        prefix, _, operation = target.partition(".")
        return Call("streams" if prefix.startswith("DynamoDBStreams") else "dynamodb", operation)
    names = {name for name, _ in parse_qsl(query, keep_blank_values=True)}
    parts = path.lstrip("/").split("/", 1)
    if not parts[0]:
        return Call("s3", "ListBuckets")
    if len(parts) == 1 or not parts[1]:
        for (verb, sub), operation in _BUCKET_SUBRESOURCES.items():
            if verb == method and sub in names:
                return Call("s3", operation)
        return Call("s3", _BUCKET.get(method, f"{method}Bucket"))
    return Call("s3", _OBJECT.get(method, f"{method}Object"))


_BUCKET_SUBRESOURCES = {
    ("GET", "versions"): "ListObjectVersions",
    ("POST", "delete"): "DeleteObjects",
    ("GET", "list-type"): "ListObjectsV2",
    ("PUT", "versioning"): "PutBucketVersioning",
    ("GET", "versioning"): "GetBucketVersioning",
    ("GET", "location"): "GetBucketLocation",
}
_BUCKET = {"GET": "ListObjects", "PUT": "CreateBucket", "DELETE": "DeleteBucket", "HEAD": "HeadBucket"}
_OBJECT = {"GET": "GetObject", "PUT": "PutObject", "DELETE": "DeleteObject", "HEAD": "HeadObject"}
# Hop-by-hop headers, and what aiohttp computes again for the bytes it sends.
_NOT_FORWARDED = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "expect", "content-length"}
)


def error_response(kind: Kind, service: Service, *, head: bool = False) -> web.Response:
    """``kind`` as ``service`` sends it (a HEAD answer has no body, as S3's has none)."""
    shape = _SHAPES[kind]
    request_id = uuid.uuid4().hex.upper()
    if shape.json_type is None:
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{kind}</Code><Message>{shape.message}</Message>"
            f"<RequestId>{request_id[:16]}</RequestId><HostId>{request_id}</HostId></Error>"
        ).encode()
        headers = {
            "Content-Type": "application/xml",
            "x-amz-request-id": request_id[:16],
            "x-amz-id-2": request_id,
            "Server": "AmazonS3",
        }
    else:
        body = json.dumps({"__type": shape.json_type, "message": shape.message}).encode()
        headers = {
            "Content-Type": "application/x-amz-json-1.0",
            "x-amzn-RequestId": request_id,
            "x-amz-crc32": str(zlib.crc32(body)),
        }
    if service not in shape.services:
        raise ValueError(f"{kind} has no {service} shape")
    return web.Response(status=shape.status, body=b"" if head else body, headers=headers)


class FaultProxy:
    """An async context manager: ``url`` forwards to ``upstream`` and injects what ``rules`` ask for.

    Rules are exclusive per request: one draw in [0, 1) walks the rules that apply, so rates add up (a
    request meets at most one fault); a spent rule (``times``) no longer counts. ``enabled`` switches
    injection off and on; ``injected`` counts by (kind, operation), ``calls`` every request by operation."""

    def __init__(
        self,
        upstream: str,
        rules: Iterable[Rule] = (),
        *,
        seed: int = 0,
        max_latency: float = 0.05,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.rules = tuple(rules)
        self.enabled = True
        self.injected: Counter[tuple[Kind, str]] = Counter()
        self._fired: Counter[Rule] = Counter()
        self.calls: Counter[str] = Counter()
        self._rng = random.Random(seed)  # noqa: S311 - test faults, not crypto
        self._max_latency = max_latency
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None
        self.url = ""

    def count(self, kind: Kind, operation: str | None = None) -> int:
        """Faults of ``kind`` injected (into ``operation`` only, if given)."""
        return sum(n for (k, op), n in self.injected.items() if k is kind and operation in {None, op})

    def choose(self, call: Call) -> Kind | None:
        """The fault for one request, if any."""
        self.calls[call.operation] += 1
        if not self.enabled:
            return None
        draw, total = self._rng.random(), 0.0
        for rule in self.rules:
            if rule.applies(call) and (rule.times is None or self._fired[rule] < rule.times):
                total += rule.rate
                if draw < total:
                    self._fired[rule] += 1
                    self.injected[rule.kind, call.operation] += 1
                    return rule.kind
        return None

    async def __aenter__(self) -> Self:
        self._session = ClientSession(
            connector=TCPConnector(limit=0),
            timeout=ClientTimeout(total=60),
            auto_decompress=False,
            skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(self._runner, sock).start()
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        url = urlsplit(str(request.rel_url))
        call = identify(request.method, url.path, url.query, request.headers.get("X-Amz-Target"))
        kind = self.choose(call)
        if kind is Kind.DROP_BEFORE:
            return _drop(request)
        if kind in _SHAPES:
            return error_response(kind, call.service, head=request.method == "HEAD")
        if kind is Kind.LATENCY:
            await asyncio.sleep(self._rng.uniform(0, self._max_latency))
        status, headers, answer = await self._forward(request, body)
        if kind is Kind.DROP_AFTER:
            return _drop(request)
        return web.Response(status=status, headers=headers, body=answer)

    async def _forward(self, request: web.Request, body: bytes) -> tuple[int, Mapping[str, str], bytes]:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED}
        async with self._session.request(
            request.method, self.upstream + str(request.rel_url), headers=headers, data=body or None
        ) as answer:
            payload = await answer.read()
            kept = {k: v for k, v in answer.headers.items() if k.lower() not in _NOT_FORWARDED}
            return answer.status, kept, payload


def _drop(request: web.Request) -> web.StreamResponse:
    """Close the client's connection without a word: the client sees it disconnect mid-request."""
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=204)  # never written: the connection is gone
