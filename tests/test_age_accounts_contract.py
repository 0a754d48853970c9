"""One contract, two implementations: the in-memory accounts directory of the age rules keeps the promises of
its DynamoDB adapter (a Scan projecting the account attribute, filtered by type and value)."""

from __future__ import annotations

import decimal
from collections.abc import AsyncIterator

import pytest

from reconciler.adapters.accounts import DynamoDBAccountDirectory
from reconciler.adapters.aws import AwsClients, AwsSettings, Caller, RetryPolicy
from reconciler.adapters.tables import create_table
from reconciler.core.dynamodb_json import encode_key
from reconciler.core.spec import AccountsTable
from reconciler.demo.moto_server import CREDENTIALS, REGION, reset
from reconciler.errors import AccessError
from reconciler.ports import AccountDirectory
from reconciler.testing import FakeAccountDirectory

ROWS: list[dict[str, object]] = [
    {"tenant": "a", "account_id": "907", "ttl": "1h"},
    {"tenant": "b", "account_id": 90, "ttl": "1h"},
    {"tenant": "c", "account_id": "9070", "ttl": 1},  # the number 1 is not the string "1"
    {"tenant": "e", "ttl": "1h"},  # no account: skipped
    {"tenant": "f", "account_id": "92"},  # no filter attribute: filtered out
]


@pytest.fixture(params=["fake", pytest.param("moto", marks=pytest.mark.integration)])
async def directory(request: pytest.FixtureRequest) -> AsyncIterator[AccountDirectory]:
    if request.param == "fake":
        fake = FakeAccountDirectory()
        for row in ROWS:
            fake.put("accounts", row)
        yield fake
        return
    endpoint = request.getfixturevalue("endpoint")
    reset(endpoint)
    aws = AwsSettings(region=REGION, endpoint_url=endpoint, credentials=CREDENTIALS)
    async with AwsClients(aws) as clients:
        await create_table(clients.dynamodb, "accounts", ("tenant",), poll_seconds=0.05)
        for row in ROWS:
            await clients.dynamodb.put_item(TableName="accounts", Item=encode_key(row))
        yield DynamoDBAccountDirectory(clients.dynamodb, Caller(RetryPolicy(attempts=1)))


async def _values(directory: AccountDirectory, source: AccountsTable) -> list[object]:
    return sorted([value async for value in directory.accounts(source)], key=repr)


async def test_accounts_are_the_attribute_of_every_item_that_has_it_numbers_as_decimals(
    directory: AccountDirectory,
) -> None:
    found = await _values(directory, AccountsTable("accounts", "account_id"))
    assert found == sorted([decimal.Decimal(90), "907", "9070", "92"], key=repr)


async def test_the_filter_compares_type_and_value(directory: AccountDirectory) -> None:
    # (moto's filter reads BOOL true as equal to the number 1; DynamoDB does not, so no row tests that)
    expected: list[tuple[str | int, list[object]]] = [
        ("1h", [decimal.Decimal(90), "907"]),
        (1, ["9070"]),
        ("1", []),
        ("2h", []),
    ]
    for value, accounts in expected:
        found = await _values(directory, AccountsTable("accounts", "account_id", "ttl", value))
        assert found == sorted(accounts, key=repr), value


async def test_a_missing_accounts_table_is_an_access_error(directory: AccountDirectory) -> None:
    with pytest.raises(AccessError, match="ResourceNotFoundException"):
        await _values(directory, AccountsTable("no-such-table", "account_id"))
