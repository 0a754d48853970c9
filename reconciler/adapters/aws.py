"""AWS clients, the retry policy and the mapping of AWS errors onto the ``ReconcilerError`` tree.

stamina owns retries; botocore's own are switched off (``total_max_attempts: 1`` means one attempt, no retry)
so the two layers do not multiply.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

import aiohttp
import stamina
import stamina.instrumentation
import structlog
from aiobotocore.config import AioConfig
from aiobotocore.httpsession import AIOHTTPSession
from aiobotocore.session import get_session
from botocore.exceptions import (
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
    NoAuthTokenError,
    NoCredentialsError,
    PartialCredentialsError,
    SSOError,
    TokenRetrievalError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from reconciler.adapters.tls import PolicySession, check_endpoint, policy_context
from reconciler.errors import (
    AccessError,
    ConfigError,
    CredentialsError,
    MissingCredentialsError,
    PermanentError,
    ReconcilerError,
    TransientError,
)

if TYPE_CHECKING:
    from stamina.instrumentation import RetryDetails
    from types_aiobotocore_dynamodb import DynamoDBClient
    from types_aiobotocore_dynamodbstreams import DynamoDBStreamsClient
    from types_aiobotocore_s3 import S3Client

    from reconciler.settings import Settings, TlsPolicy

T = TypeVar("T")
log = structlog.get_logger("reconciler.aws")

# https://docs.aws.amazon.com/sdkref/latest/guide/feature-retry-behavior.html (throttling and transient codes)
THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "RequestThrottled",
        "SlowDown",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
        "InternalError",
        "InternalServerError",
        "ServiceUnavailable",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)


# Whole-request refusals that say something about the deployment, not about the record.
ACCESS_CODES = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "AllAccessDisabled",
        "AuthFailure",
        "ExpiredToken",
        "ExpiredTokenException",
        "InvalidAccessKeyId",
        "InvalidClientTokenId",
        "InvalidToken",
        "MissingAuthenticationToken",
        "MissingAuthenticationTokenException",
        "NoSuchBucket",
        "RequestExpired",
        "ResourceNotFoundException",
        "SignatureDoesNotMatch",
        "TokenRefreshRequired",
        "UnrecognizedClientException",
    }
)


# Credential failures are not ClientErrors: botocore raises these before a request is sent.
CREDENTIAL_ERRORS = (
    NoCredentialsError,
    PartialCredentialsError,
    CredentialRetrievalError,
    TokenRetrievalError,
    NoAuthTokenError,
    SSOError,
)


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def http_status(exc: ClientError) -> int:
    """The HTTP status of an AWS error answer (0 if it had none)."""
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def is_retriable(exc: Exception) -> bool:
    """The one retry predicate: our own ``retriable`` flag, AWS throttling and 5xx, and network trouble."""
    if isinstance(exc, ReconcilerError):
        return isinstance(exc, TransientError)  # AccessError waits at the record level, not in a tight loop
    if isinstance(exc, ClientError):
        return error_code(exc) in THROTTLING_CODES or http_status(exc) >= 500  # noqa: PLR2004 - 5xx
    return isinstance(exc, BotoConnectionError | HTTPClientError | aiohttp.ClientError | TimeoutError)


def translate(exc: Exception, call: tuple[str, str | None] | None = None) -> ReconcilerError:
    """An AWS or network error, after retries, as a member of our tree; ``call`` (the operation, and the
    bucket, table or stream it was about) is named in the message."""
    if isinstance(exc, ReconcilerError):
        return exc
    if isinstance(exc, CREDENTIAL_ERRORS):
        provider = getattr(exc, "kwargs", {}).get("provider")
        source = f" from {provider}" if isinstance(provider, str) else ""
        kind = MissingCredentialsError if isinstance(exc, NoCredentialsError) else CredentialsError
        return kind(f"no usable AWS credentials{source}: {type(exc).__name__}")
    code = error_code(exc) if isinstance(exc, ClientError) else type(exc).__name__
    name = code
    if call is not None:
        operation, resource = call
        name += f" ({operation} on {resource})" if resource else f" ({operation})"
    if code in ACCESS_CODES:
        return AccessError(f"AWS refused the request: {name} (check credentials, IAM and deployed resources)")
    if is_retriable(exc):
        return TransientError(f"AWS call failed after retries: {name}")
    return PermanentError(f"AWS refused the call: {name}")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 6
    timeout: float = 60.0
    wait_initial: float = 0.2
    wait_max: float = 10.0


# Request parameters that name the resource a call is about: never a key, an item or an object's name.
_RESOURCE_PARAMETERS = ("TableName", "table", "Bucket", "bucket", "StreamArn")
F = TypeVar("F", bound=Callable[..., Any])


def aws_operation(name: str) -> Callable[[F], F]:
    """Names the AWS operation a wrapper of ours makes, for the retry log."""

    def named(fn: F) -> F:
        fn.aws_operation = name  # type: ignore[attr-defined]
        return fn

    return named


def log_retry(details: RetryDetails) -> None:
    """stamina's own structlog hook writes ``repr()`` of the error, which for a library's error may quote
    a value: this one names the error code or class only, with the operation and the bucket or table."""
    cause = details.caused_by
    error = error_code(cause) if isinstance(cause, ClientError) else type(cause).__name__
    operation, resource = _CALL.get()
    log.warning(
        "aws.retry_scheduled",
        operation=operation,
        resource=resource,
        error=error,
        retry_num=details.retry_num,
        wait_for=round(details.wait_for, 3),
    )


# The call being retried, for the hook: stamina's details of a ``retry_context`` attempt name only
# "<context block>". A context variable, so concurrent calls in other tasks each see their own.
_CALL: contextvars.ContextVar[tuple[str, str | None]] = contextvars.ContextVar(
    "aws_call", default=("?", None)
)


def _described(fn: Callable[..., Awaitable[Any]], kwargs: dict[str, Any]) -> tuple[str, str | None]:
    """The AWS operation (botocore names a client's methods after them; our wrappers take the client's
    method as ``fn``) and the bucket, table or stream it is about."""
    target = kwargs.get("fn", fn)
    name = getattr(target, "aws_operation", None) or getattr(target, "__name__", type(target).__name__)
    resource = next((str(kwargs[p]) for p in _RESOURCE_PARAMETERS if p in kwargs), None)
    if resource is None and isinstance(kwargs.get("RequestItems"), dict):  # BatchGetItem: its tables
        resource = ",".join(sorted(kwargs["RequestItems"]))
    return str(name), resource


class Caller:
    """Runs AWS calls under the retry policy and translates what still fails."""

    def __init__(self, policy: RetryPolicy) -> None:
        # Retries counted by stamina's Prometheus hook (stamina_retries_total) and logged by ours.
        stamina.instrumentation.set_on_retry_hooks([log_retry, stamina.instrumentation.PrometheusOnRetryHook])
        self._retrying = stamina.AsyncRetryingCaller(
            attempts=policy.attempts,
            timeout=policy.timeout,
            wait_initial=policy.wait_initial,
            wait_max=policy.wait_max,
        ).on(is_retriable)

    async def __call__(self, fn: Callable[..., Awaitable[T]], /, **kwargs: Any) -> T:
        described = _CALL.set(_described(fn, kwargs))
        try:
            return await self._retrying(fn, **kwargs)
        except (
            ClientError,
            BotoConnectionError,
            HTTPClientError,
            aiohttp.ClientError,
            TimeoutError,
            *CREDENTIAL_ERRORS,
        ) as exc:
            raise translate(exc, _CALL.get()) from exc
        finally:
            _CALL.reset(described)


LEASE_CONNECTIONS = 4


@dataclass(frozen=True, slots=True)
class AwsSettings:
    region: str | None
    """None: botocore's own chain (AWS_REGION, AWS_DEFAULT_REGION, the profile in the AWS config file)."""
    endpoint_url: str | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_pool_connections: int = 50
    credentials: tuple[str, str] | None = None
    """Explicit keys, for the embedded demo and tests only; production uses the default chain."""
    tls_policy: TlsPolicy = "strict"

    @classmethod
    def of(cls, settings: Settings) -> AwsSettings:
        """The Region, endpoint and TLS policy of the worker's settings."""
        return cls(region=settings.region, endpoint_url=settings.endpoint_url, tls_policy=settings.tls_policy)


class AwsClients:
    """The clients the worker uses, opened and closed together (an async context manager).

    The lease table has a DynamoDB client of its own: with hundreds of deletion calls queued for the
    shared connection pool, a heartbeat behind them would arrive after its lease expired.
    """

    s3: S3Client
    dynamodb: DynamoDBClient
    streams: DynamoDBStreamsClient
    leases: DynamoDBClient

    def __init__(self, settings: AwsSettings) -> None:
        self._settings = settings
        self._stack = contextlib.AsyncExitStack()
        self._closed = False

    async def __aenter__(self) -> Self:
        session = get_session()
        check_endpoint(self._settings.endpoint_url or os.environ.get("AWS_ENDPOINT_URL"))
        strict = self._settings.tls_policy == "strict"
        if strict:
            policy_context()  # ConfigError now, not at the first request, if OpenSSL cannot keep the policy
        else:
            log.warning("tls.relaxed", detail="outbound TLS uses botocore's defaults, not the TLS policy")
        config = AioConfig(
            retries={"total_max_attempts": 1},  # stamina owns retries
            connect_timeout=self._settings.connect_timeout,
            read_timeout=self._settings.read_timeout,
            max_pool_connections=self._settings.max_pool_connections,
            http_session_cls=PolicySession if strict else AIOHTTPSession,
        )
        common: dict[str, Any] = {"config": config}
        if self._settings.region:
            common["region_name"] = self._settings.region
        if self._settings.endpoint_url:
            common["endpoint_url"] = self._settings.endpoint_url
        if self._settings.credentials:
            common["aws_access_key_id"], common["aws_secret_access_key"] = self._settings.credentials
        if not (self._settings.region or session.get_config_variable("region")):
            raise ConfigError(
                "no AWS Region: set AWS_REGION (or RECONCILER_REGION, --region), or a region in the AWS"
                " config file's profile"
            )
        self.s3 = await self._stack.enter_async_context(session.create_client("s3", **common))
        self.dynamodb = await self._stack.enter_async_context(session.create_client("dynamodb", **common))
        self.streams = await self._stack.enter_async_context(
            session.create_client("dynamodbstreams", **common)
        )
        own_pool = common | {"config": config.merge(AioConfig(max_pool_connections=LEASE_CONNECTIONS))}
        self.leases = await self._stack.enter_async_context(session.create_client("dynamodb", **own_pool))
        return self

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await asyncio.shield(self._stack.aclose())

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
