"""The item store trusts a GSI only after a consistent read, and deletes only what is still linked."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from reconciler.adapters.aws import Caller, RetryPolicy
from reconciler.adapters.dynamodb import DynamoDBItemStore
from reconciler.core.plan import LinkQuery

QUERY = LinkQuery("llm_requests", "transcript_id", "tr-1", "by_transcript")


class StubDynamoDB:
    """A GSI entry still says r1 belongs to tr-1; the item itself has moved to tr-2."""

    def __init__(self) -> None:
        self.items = {
            "r1": {"request_id": {"S": "r1"}, "transcript_id": {"S": "tr-2"}},
            "r2": {"request_id": {"S": "r2"}, "transcript_id": {"S": "tr-1"}},
        }
        self.deletes: list[dict[str, Any]] = []

    async def query(self, **params: Any) -> dict[str, Any]:
        assert params["IndexName"] == "by_transcript"
        return {
            "Items": [
                {"request_id": {"S": "r1"}, "transcript_id": {"S": "tr-1"}},
                {"request_id": {"S": "r2"}},
            ]
        }

    async def get_item(self, **params: Any) -> dict[str, Any]:
        assert params["ConsistentRead"] is True
        item = self.items.get(params["Key"]["request_id"]["S"])
        return {"Item": item} if item else {}

    async def delete_item(self, **params: Any) -> dict[str, Any]:
        self.deletes.append(params)
        item = self.items.get(params["Key"]["request_id"]["S"])
        if item is None or item["transcript_id"] != params["ExpressionAttributeValues"][":v"]:
            error: Any = {"Error": {"Code": "ConditionalCheckFailedException"}, "ResponseMetadata": {}}
            raise ClientError(error, "DeleteItem")
        del self.items[params["Key"]["request_id"]["S"]]
        return {"Attributes": item}


def _store(stub: StubDynamoDB) -> DynamoDBItemStore:
    return DynamoDBItemStore(stub, Caller(RetryPolicy(attempts=2)))  # type: ignore[arg-type]


async def test_a_stale_index_entry_is_not_a_link() -> None:
    found = [image async for image in _store(StubDynamoDB()).find(QUERY, ("request_id",))]
    assert found == [{"request_id": "r2", "transcript_id": "tr-1"}]


async def test_the_delete_is_conditioned_on_the_link_and_returns_the_old_image() -> None:
    stub = StubDynamoDB()
    store = _store(stub)
    assert await store.delete_linked(QUERY, {"request_id": "r1"}) is None  # moved to tr-2: left alone
    assert "r1" in stub.items
    assert await store.delete_linked(QUERY, {"request_id": "r2"}) == {
        "request_id": "r2",
        "transcript_id": "tr-1",
    }
    assert await store.delete_linked(QUERY, {"request_id": "r2"}) is None  # already gone
    assert {d["ReturnValues"] for d in stub.deletes} == {"ALL_OLD"}
    assert {d["ConditionExpression"] for d in stub.deletes} == {"#k = :v"}
