"""The outbound TLS policy (tls): TLS 1.2 and 1.3 with the published suites only, proved against local TLS
servers that offer TLS 1.1, a weak suite, and a good configuration; and plain HTTP only to loopback."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog
from botocore.exceptions import EndpointConnectionError, SSLError

from reconciler.adapters.aws import AwsClients, AwsSettings
from reconciler.adapters.tls import TLS12_SUITES, TLS13_SUITES, check_endpoint, policy_context
from reconciler.errors import ConfigError

LIST_BUCKETS = (
    b'<?xml version="1.0" encoding="UTF-8"?>'
    b'<ListAllMyBucketsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
    b"<Owner><ID>o</ID></Owner><Buckets><Bucket><Name>reachable</Name>"
    b"<CreationDate>2026-01-01T00:00:00.000Z</CreationDate></Bucket></Buckets></ListAllMyBucketsResult>"
)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed ECDSA certificate for 127.0.0.1, made with the openssl command."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    command = [
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-days",
        "2",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-addext",
        "subjectAltName=IP:127.0.0.1",
    ]
    subprocess.run([*command, "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)  # noqa: S603
    return cert, key


def _server_context(certificate: tuple[Path, Path], offer: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1 is deprecated: that is the point
        if offer == "tls1.1":
            context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
            context.set_ciphers("DEFAULT:@SECLEVEL=0")
        elif offer == "weak suite":
            context.maximum_version = ssl.TLSVersion.TLSv1_2
            # CBC: botocore's defaults accept it, the policy (AES-GCM only in TLS 1.2) does not.
            context.set_ciphers("ECDHE-ECDSA-AES128-SHA256")
    return context


@contextlib.asynccontextmanager
async def _https(context: ssl.SSLContext) -> AsyncIterator[str]:
    """An HTTPS server on a free loopback port that answers any request with an S3 bucket list."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            head = (
                f"HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: {len(LIST_BUCKETS)}\r\n"
            )
            writer.write(head.encode() + b"Connection: close\r\n\r\n" + LIST_BUCKETS)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=context)
    try:
        yield f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


async def _list_buckets(endpoint: str, policy: str = "strict") -> list[str]:
    aws = AwsSettings(
        region="us-east-1",
        endpoint_url=endpoint,
        credentials=("k", "s"),
        tls_policy=policy,  # type: ignore[arg-type]
    )
    async with AwsClients(aws) as clients:
        answer = await clients.s3.list_buckets()
    return [bucket["Name"] for bucket in answer["Buckets"]]


@pytest.fixture
def trusted(certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    monkeypatch.setenv("AWS_CA_BUNDLE", str(certificate[0]))
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    return certificate


def test_tls_the_policy_offers_exactly_the_published_suites_from_tls_1_2_up() -> None:
    context = policy_context()
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2
    assert {cipher["name"] for cipher in context.get_ciphers()} == TLS13_SUITES | set(TLS12_SUITES)


async def test_tls_a_server_offering_only_tls_1_1_is_refused(trusted: tuple[Path, Path]) -> None:
    async with _https(_server_context(trusted, "tls1.1")) as endpoint:
        with pytest.raises((SSLError, EndpointConnectionError)):
            await _list_buckets(endpoint)


async def test_tls_a_server_offering_only_a_weak_suite_is_refused(trusted: tuple[Path, Path]) -> None:
    async with _https(_server_context(trusted, "weak suite")) as endpoint:
        with pytest.raises((SSLError, EndpointConnectionError)):
            await _list_buckets(endpoint)


async def test_tls_a_well_configured_server_is_accepted(trusted: tuple[Path, Path]) -> None:
    async with _https(_server_context(trusted, "good")) as endpoint:
        assert await _list_buckets(endpoint) == ["reachable"]


async def test_tls_relaxed_keeps_botocores_defaults_and_says_so(trusted: tuple[Path, Path]) -> None:
    """The weak suite the policy refuses is what botocore's defaults accept: relaxed is not the policy."""
    with structlog.testing.capture_logs() as events:
        async with _https(_server_context(trusted, "weak suite")) as endpoint:
            assert await _list_buckets(endpoint, policy="relaxed") == ["reachable"]
    assert [e["event"] for e in events if e["log_level"] == "warning"] == ["tls.relaxed"]


@pytest.mark.parametrize(
    ("endpoint", "allowed"),
    [
        ("http://127.0.0.1:5000", True),
        ("http://localhost:5000", True),
        ("http://[::1]:5000", True),
        ("https://dynamodb.eu-west-1.amazonaws.com", True),
        ("http://dynamodb.eu-west-1.amazonaws.com", False),
        ("http://10.0.0.5:4566", False),
        ("ftp://127.0.0.1", False),
    ],
)
def test_tls_plain_http_only_to_a_loopback_endpoint(endpoint: str, *, allowed: bool) -> None:
    if allowed:
        check_endpoint(endpoint)
    else:
        with pytest.raises(ConfigError, match="plain HTTP is allowed only to loopback"):
            check_endpoint(endpoint)
