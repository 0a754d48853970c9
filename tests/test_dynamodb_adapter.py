"""The item store trusts a GSI only after a consistent read, and deletes only what is still linked."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from botocore.exceptions import ClientError

from reconciler.adapters.aws import Caller, RetryPolicy
from reconciler.adapters.dynamodb import DynamoDBItemStore
from reconciler.core.plan import LinkQuery
from reconciler.errors import TransientError

QUERY = LinkQuery("llm_requests", "transcript_id", "tr-1", "by_transcript")


class StubDynamoDB:
    """A GSI entry still says r1 belongs to tr-1; the item itself has moved to tr-2."""

    def __init__(self) -> None:
        self.items = {
            "r1": {"request_id": {"S": "r1"}, "transcript_id": {"S": "tr-2"}},
            "r2": {"request_id": {"S": "r2"}, "transcript_id": {"S": "tr-1"}},
        }
        self.deletes: list[dict[str, Any]] = []
        self.batch_gets: list[dict[str, Any]] = []
        self.unprocessed = 0

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

    async def batch_get_item(self, **params: Any) -> dict[str, Any]:
        self.batch_gets.append(copy.deepcopy(params))  # the adapter reuses its list of keys on a retry
        ((table, request),) = params["RequestItems"].items()
        assert request["ConsistentRead"] is True
        keys = request["Keys"]
        if self.unprocessed:  # DynamoDB may read only part of a batch: the rest comes back unprocessed
            self.unprocessed -= 1
            keys, left = keys[:1], keys[1:]
            return {
                "Responses": {table: self._read(keys)},
                "UnprocessedKeys": {table: {"Keys": left}} if left else {},
            }
        return {"Responses": {table: self._read(keys)}, "UnprocessedKeys": {}}

    def _read(self, keys: list[dict[str, Any]]) -> list[dict[str, Any]]:
        found = [self.items.get(key["request_id"]["S"]) for key in keys]
        return [item for item in reversed(found) if item]  # in any order, as DynamoDB answers

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
    stub = StubDynamoDB()
    found = [image async for image in _store(stub).find(QUERY, ("request_id",))]
    assert found == [{"request_id": "r2", "transcript_id": "tr-1"}]
    assert len(stub.batch_gets) == 1  # one consistent batched read per page of the index, not one per item


async def test_unprocessed_keys_are_asked_for_again_never_dropped() -> None:
    stub = StubDynamoDB()
    stub.unprocessed = 1
    keys = [{"request_id": "r1"}, {"request_id": "r9"}, {"request_id": "r2"}, {"request_id": "r1"}]
    found = await _store(stub).get_many("llm_requests", keys)
    assert [f["request_id"] if f else None for f in found] == ["r1", None, "r2", "r1"]
    sent = [
        [k["request_id"]["S"] for k in g["RequestItems"]["llm_requests"]["Keys"]] for g in stub.batch_gets
    ]
    assert sent == [["r1", "r9", "r2"], ["r9", "r2"]]  # each key once; the retry asks only for the rest


async def test_keys_still_unprocessed_after_the_last_attempt_are_an_error() -> None:
    stub = StubDynamoDB()
    stub.unprocessed = 5  # one key read a call: four keys outlast three attempts
    with pytest.raises(TransientError):
        await _store(stub).get_many("llm_requests", [{"request_id": f"r{n}"} for n in range(4)])


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
