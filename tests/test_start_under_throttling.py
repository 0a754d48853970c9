"""Start-up under throttling (fault): creating the worker's tables waits throttles out through the retry
policy, where botocore's waiter gave up (and the worker died) on the first throttled DescribeTable."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from reconciler.adapters.aws import Caller, RetryPolicy
from reconciler.adapters.tables import CHECKPOINTS, create_table, create_worker_tables


def _throttle(operation: str) -> ClientError:
    error: Any = {"Error": {"Code": "ThrottlingException"}, "ResponseMetadata": {"HTTPStatusCode": 400}}
    return ClientError(error, operation)


class Throttled:
    """Each operation is throttled on its first call; a new table is CREATING once, then ACTIVE."""

    def __init__(self, existing: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.calls: list[str] = []
        self.tables: dict[str, list[str]] = {name: ["ACTIVE"] for name in existing}
        self.ttl: dict[str, str] = {}

    def _once(self, operation: str) -> None:
        self.calls.append(operation)
        if self.calls.count(operation) == 1:
            raise _throttle(operation)

    async def create_table(self, *, TableName: str, **_: Any) -> dict[str, Any]:  # noqa: N803
        self._once("CreateTable")
        if TableName in self.tables:
            error: Any = {"Error": {"Code": "ResourceInUseException"}, "ResponseMetadata": {}}
            raise ClientError(error, "CreateTable")
        self.tables[TableName] = ["CREATING", "ACTIVE"]
        return {}

    async def describe_table(self, *, TableName: str) -> dict[str, Any]:  # noqa: N803
        self._once("DescribeTable")
        states = self.tables[TableName]
        return {"Table": {"TableStatus": states.pop(0) if len(states) > 1 else states[0]}}

    async def update_time_to_live(self, *, TableName: str, TimeToLiveSpecification: Any) -> dict[str, Any]:  # noqa: N803
        self._once("UpdateTimeToLive")
        self.ttl[TableName] = TimeToLiveSpecification["AttributeName"]
        return {}


async def test_fault_throttled_table_creation_is_retried_until_the_table_is_active() -> None:
    client = Throttled()
    created = await create_table(
        client,  # type: ignore[arg-type]
        "checkpoints",
        CHECKPOINTS.attributes,
        CHECKPOINTS.ttl_attribute,
        call=Caller(RetryPolicy(attempts=3)),
        poll_seconds=0,
    )
    assert created
    assert client.tables["checkpoints"] == ["ACTIVE"]
    assert client.ttl == {"checkpoints": CHECKPOINTS.ttl_attribute}
    assert client.calls.count("CreateTable") == 2
    assert client.calls.count("UpdateTimeToLive") == 2


async def test_fault_an_existing_table_is_left_alone_even_when_throttled() -> None:
    client = Throttled(existing={"checkpoints", "letters"})
    created = await create_worker_tables(
        client,  # type: ignore[arg-type]
        "checkpoints",
        "letters",
        Caller(RetryPolicy(attempts=3)),
    )
    assert created == {"checkpoints": False, "letters": False}
    assert "UpdateTimeToLive" not in client.calls
