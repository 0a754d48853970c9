"""Start-up under throttling (fault): creating the worker's tables (and adding an index a table lacks) waits
throttles out through the retry policy, where botocore's waiter gave up (and the worker died) on the first
throttled DescribeTable."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from reconciler.adapters.aws import Caller, RetryPolicy
from reconciler.adapters.tables import CHECKPOINTS, LETTERS_INDEX, create_table, create_worker_tables


def _throttle(operation: str) -> ClientError:
    error: Any = {"Error": {"Code": "ThrottlingException"}, "ResponseMetadata": {"HTTPStatusCode": 400}}
    return ClientError(error, operation)


class Throttled:
    """Each operation is throttled on its first call; a new table, or a new index, is CREATING once, then
    ACTIVE."""

    def __init__(self, existing: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.calls: list[str] = []
        self.tables: dict[str, list[str]] = {name: ["ACTIVE"] for name in existing}
        self.indexes: dict[str, dict[str, list[str]]] = {name: {} for name in existing}
        self.ttl: dict[str, str] = {}

    def _once(self, operation: str) -> None:
        self.calls.append(operation)
        if self.calls.count(operation) == 1:
            raise _throttle(operation)

    async def create_table(self, *, TableName: str, **kwargs: Any) -> dict[str, Any]:  # noqa: N803
        self._once("CreateTable")
        if TableName in self.tables:
            error: Any = {"Error": {"Code": "ResourceInUseException"}, "ResponseMetadata": {}}
            raise ClientError(error, "CreateTable")
        self.tables[TableName] = ["CREATING", "ACTIVE"]
        self.indexes[TableName] = {
            i["IndexName"]: ["CREATING", "ACTIVE"] for i in kwargs.get("GlobalSecondaryIndexes", [])
        }
        return {}

    async def update_table(
        self,
        *,
        TableName: str,  # noqa: N803 - botocore's parameter names
        GlobalSecondaryIndexUpdates: Any,  # noqa: N803
        **_: Any,
    ) -> dict[str, Any]:
        self._once("UpdateTable")
        for update in GlobalSecondaryIndexUpdates:
            self.indexes[TableName][update["Create"]["IndexName"]] = ["CREATING", "ACTIVE"]
        return {}

    async def describe_table(self, *, TableName: str) -> dict[str, Any]:  # noqa: N803
        self._once("DescribeTable")
        states = self.tables[TableName]
        indexes = [
            {"IndexName": name, "IndexStatus": s.pop(0) if len(s) > 1 else s[0]}
            for name, s in self.indexes[TableName].items()
        ]
        status = states.pop(0) if len(states) > 1 else states[0]
        return {"Table": {"TableStatus": status, "GlobalSecondaryIndexes": indexes}}

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
    client.indexes["letters"][LETTERS_INDEX.name] = ["ACTIVE"]
    created = await create_worker_tables(
        client,  # type: ignore[arg-type]
        "checkpoints",
        "letters",
        Caller(RetryPolicy(attempts=3)),
    )
    assert created == {"checkpoints": False, "letters": False}
    assert "UpdateTimeToLive" not in client.calls
    assert "UpdateTable" not in client.calls


async def test_fault_an_existing_letter_table_gets_its_missing_index_and_waits_until_it_is_active() -> None:
    """A table from an earlier release: UpdateTable adds the index (throttled once), then the index is
    waited for until ACTIVE; the checkpoint table, which has no index, is not updated."""
    client = Throttled(existing={"checkpoints", "letters"})
    created = await create_worker_tables(
        client,  # type: ignore[arg-type]
        "checkpoints",
        "letters",
        Caller(RetryPolicy(attempts=3)),
    )
    assert created == {"checkpoints": False, "letters": False}
    assert client.calls.count("UpdateTable") == 2  # one throttled, one made
    assert client.indexes == {"checkpoints": {}, "letters": {LETTERS_INDEX.name: ["ACTIVE"]}}


async def test_fault_a_new_letter_table_is_created_with_its_index_and_waits_for_it() -> None:
    client = Throttled()
    await create_worker_tables(
        client,  # type: ignore[arg-type]
        "checkpoints",
        "letters",
        Caller(RetryPolicy(attempts=3)),
    )
    assert client.indexes["letters"] == {LETTERS_INDEX.name: ["ACTIVE"]}
    assert "UpdateTable" not in client.calls
