"""The worker's tables are described once (``reconciler/adapters/tables.py``): the CloudFormation template
declares the same keys, on demand and encrypted with KMS, and ``reconciler init-tables`` creates them."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiobotocore.session import get_session
from cfnlint.api import lint_file  # type: ignore[import-untyped]

from reconciler.adapters.aws import AwsClients, AwsSettings, Caller, RetryPolicy
from reconciler.adapters.leases import FINISHED_SHARD_RETENTION, DynamoDBLeaseStore
from reconciler.adapters.letters import DynamoDBDeadLetterStore
from reconciler.adapters.tables import (
    CHECKPOINTS,
    DEAD_LETTERS,
    WORKER_TABLES,
    create_table,
    create_worker_tables,
)
from reconciler.cli import main
from reconciler.core.leases import SHARD_END, Lease
from reconciler.demo.moto_server import CREDENTIALS, REGION, reset
from reconciler.ports import DeadLetter
from reconciler.settings import Settings

TEMPLATE = Path(__file__).parent.parent / "deploy" / "aws" / "tables.cfn.yaml"
# Settings field -> (logical id, table-name parameter) in the template.
IN_TEMPLATE = {
    "checkpoint_table": ("CheckpointTable", "CheckpointTableName"),
    "dead_letter_table": ("DeadLetterTable", "DeadLetterTableName"),
}


def _default(field: str) -> str:
    return str(Settings.model_fields[field].default)


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(TEMPLATE.read_text(encoding="utf-8"))
    return loaded


def _properties(template: dict[str, Any], field: str) -> dict[str, Any]:
    properties: dict[str, Any] = template["Resources"][IN_TEMPLATE[field][0]]["Properties"]
    return properties


def test_the_template_holds_exactly_the_worker_tables(template: dict[str, Any]) -> None:
    """A table added to WORKER_TABLES (leases, receipts) must be added to the template too."""
    tables = {k for k, v in template["Resources"].items() if v["Type"] == "AWS::DynamoDB::Table"}
    assert set(IN_TEMPLATE) == set(WORKER_TABLES)
    assert tables == {logical for logical, _ in IN_TEMPLATE.values()}


@pytest.mark.parametrize("field", sorted(WORKER_TABLES))
def test_the_template_declares_the_keys_the_worker_creates(template: dict[str, Any], field: str) -> None:
    properties = _properties(template, field)
    assert properties["KeySchema"] == WORKER_TABLES[field].key_schema()
    assert properties["AttributeDefinitions"] == WORKER_TABLES[field].attribute_definitions()
    indexes = [i.definition() for i in WORKER_TABLES[field].indexes]
    assert properties.get("GlobalSecondaryIndexes", []) == indexes


@pytest.mark.parametrize("field", sorted(WORKER_TABLES))
def test_tables_are_on_demand_kms_encrypted_recoverable_and_kept(
    template: dict[str, Any], field: str
) -> None:
    properties = _properties(template, field)
    assert properties["BillingMode"] == "PAY_PER_REQUEST"
    assert properties["SSESpecification"]["SSEEnabled"] is True
    assert properties["SSESpecification"]["SSEType"] == "KMS"
    key = {"Fn::If": ["HasCustomerKey", {"Ref": "KmsKeyId"}, {"Ref": "AWS::NoValue"}]}
    assert properties["SSESpecification"]["KMSMasterKeyId"] == key
    assert properties["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    # TTL exactly where the worker writes an expiry: finished shards' checkpoints; never dead letters.
    ttl = WORKER_TABLES[field].ttl_attribute
    if ttl is None:
        assert "TimeToLiveSpecification" not in properties
    else:
        assert properties["TimeToLiveSpecification"] == {"AttributeName": ttl, "Enabled": True}
    resource = template["Resources"][IN_TEMPLATE[field][0]]
    assert resource["DeletionPolicy"] == resource["UpdateReplacePolicy"] == "Retain"


def test_without_a_key_the_aws_managed_key_is_used(template: dict[str, Any]) -> None:
    assert template["Parameters"]["KmsKeyId"]["Default"] == ""
    condition = {"Fn::Not": [{"Fn::Equals": [{"Ref": "KmsKeyId"}, ""]}]}
    assert template["Conditions"]["HasCustomerKey"] == condition


@pytest.mark.parametrize("field", sorted(WORKER_TABLES))
def test_table_names_default_to_the_worker_settings(template: dict[str, Any], field: str) -> None:
    logical, parameter = IN_TEMPLATE[field]
    assert _properties(template, field)["TableName"] == {"Ref": parameter}
    assert template["Parameters"][parameter]["Default"] == _default(field)
    assert {"Fn::GetAtt": [logical, "Arn"]} in [o["Value"] for o in template["Outputs"].values()]


def test_the_template_passes_cfn_lint() -> None:
    assert [str(match) for match in lint_file(TEMPLATE)] == []


# --- against moto's server -----------------------------------------------------------------------------


@pytest.fixture
def aws_env(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A clean moto; credentials from the environment, as the CLI reads them; no worker settings set."""
    reset(endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", CREDENTIALS[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CREDENTIALS[1])
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    for field in Settings.model_fields:
        monkeypatch.delenv(f"RECONCILER_{field.upper()}", raising=False)
    return endpoint


Described = tuple[list[Any], list[Any], dict[str, Any]]


async def _key_schemas(endpoint: str, names: list[str]) -> dict[str, Described]:
    """Keys, attribute definitions and indexes (name: key schema and projection) of each table."""
    aws = AwsSettings(region=REGION, endpoint_url=endpoint, credentials=CREDENTIALS)
    async with AwsClients(aws) as clients:
        described = [(await clients.dynamodb.describe_table(TableName=n))["Table"] for n in names]
    return {
        t["TableName"]: (
            list(t["KeySchema"]),
            sorted(t["AttributeDefinitions"], key=str),
            {
                i["IndexName"]: (i["KeySchema"], i["Projection"]["ProjectionType"])
                for i in t.get("GlobalSecondaryIndexes", [])
            },
        )
        for t in described
    }


def _expected(names: dict[str, str]) -> dict[str, Described]:
    return {
        names[field]: (
            keys.key_schema(),
            sorted(keys.attribute_definitions(), key=str),
            {i.name: (i.definition()["KeySchema"], i.projection) for i in keys.indexes},
        )
        for field, keys in WORKER_TABLES.items()
    }


@pytest.mark.integration
def test_init_tables_creates_the_worker_tables_and_accepts_existing_ones(
    aws_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["init-tables", "--endpoint-url", aws_env, "--region", REGION]
    names = {field: _default(field) for field in WORKER_TABLES}
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines() == [f"created: {n}" for n in names.values()]
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines() == [f"exists: {n}" for n in names.values()]
    assert asyncio.run(_key_schemas(aws_env, list(names.values()))) == _expected(names)


@pytest.mark.integration
def test_init_tables_takes_names_from_flags_then_the_worker_environment(
    aws_env: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECONCILER_DEAD_LETTER_TABLE", "env-letters")
    monkeypatch.setenv("AWS_REGION", REGION)
    assert main(["init-tables", "--endpoint-url", aws_env, "--checkpoint-table", "flag-checkpoints"]) == 0
    assert capsys.readouterr().out.splitlines() == ["created: flag-checkpoints", "created: env-letters"]
    names = {"checkpoint_table": "flag-checkpoints", "dead_letter_table": "env-letters"}
    assert asyncio.run(_key_schemas(aws_env, list(names.values()))) == _expected(names)


@pytest.mark.integration
def test_init_tables_reports_an_unreachable_endpoint_briefly(
    aws_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["init-tables", "--endpoint-url", "http://127.0.0.1:9", "--region", REGION]) == 1
    assert capsys.readouterr().err.startswith("reconciler: cannot create the tables: ")


async def _deploy(endpoint: str, parameters: dict[str, str]) -> None:
    access, secret = CREDENTIALS
    async with get_session().create_client(
        "cloudformation",
        region_name=REGION,
        endpoint_url=endpoint,
        aws_access_key_id=access,
        aws_secret_access_key=secret,
    ) as cfn:
        await cfn.create_stack(
            StackName="reconciler-tables",
            TemplateBody=TEMPLATE.read_text(encoding="utf-8"),
            Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
        )
        stack = (await cfn.describe_stacks(StackName="reconciler-tables"))["Stacks"][0]
        assert stack["StackStatus"] == "CREATE_COMPLETE"


@pytest.mark.integration
def test_the_template_deploys_the_tables_init_tables_would_create(aws_env: str) -> None:
    """moto's CloudFormation builds the template's tables; their keys are those of WORKER_TABLES."""
    names = {"checkpoint_table": "cfn-checkpoints", "dead_letter_table": "cfn-letters"}
    asyncio.run(_deploy(aws_env, {IN_TEMPLATE[f][1]: n for f, n in names.items()}))
    assert asyncio.run(_key_schemas(aws_env, list(names.values()))) == _expected(names)


@pytest.mark.integration
async def test_only_a_finished_shards_checkpoint_expires(aws_env: str) -> None:
    """TTL is on for checkpoints; live positions carry no expiry, SHARD_END rows expire once their shard
    can no longer be listed (24 h after its records end) and not much later."""
    aws = AwsSettings(region=REGION, endpoint_url=aws_env, credentials=CREDENTIALS)
    async with AwsClients(aws) as clients:
        await create_worker_tables(clients.dynamodb, "checkpoints", "dead-letters")
        store = DynamoDBLeaseStore(clients.dynamodb, Caller(RetryPolicy(attempts=2)), "checkpoints", "w1")
        for shard_id in ("shardId-live", "shardId-done"):
            await store.create(Lease("arn:stream", shard_id, "transcripts"))
        live = await store.take(Lease("arn:stream", "shardId-live", "transcripts"), "w1")
        done = await store.take(Lease("arn:stream", "shardId-done", "transcripts"), "w1")
        assert live is not None
        assert done is not None
        await store.checkpoint(live, "100")
        await store.checkpoint(done, "200")
        await store.checkpoint(done, SHARD_END)
        rows = {
            i["shard_id"]["S"]: i for i in (await clients.dynamodb.scan(TableName="checkpoints"))["Items"]
        }
        ttl = (await clients.dynamodb.describe_time_to_live(TableName="checkpoints"))["TimeToLiveDescription"]
        letters = await clients.dynamodb.describe_time_to_live(TableName="dead-letters")
    assert ttl["TimeToLiveStatus"] == "ENABLED"
    assert ttl["AttributeName"] == CHECKPOINTS.ttl_attribute
    assert letters["TimeToLiveDescription"]["TimeToLiveStatus"] == "DISABLED"
    assert "expires_at" not in rows["shardId-live"]
    expires = int(rows["shardId-done"]["expires_at"]["N"])
    assert abs(expires - (time.time() + FINISHED_SHARD_RETENTION.total_seconds())) < 60
    assert dt.timedelta(hours=24) < FINISHED_SHARD_RETENTION <= dt.timedelta(days=2)


@pytest.mark.integration
async def test_a_letter_table_from_an_earlier_release_gets_its_index(aws_env: str) -> None:
    """``create_worker_tables`` adds the index with UpdateTable to a table created without it; letters
    written from then on are listed through it."""
    aws = AwsSettings(region=REGION, endpoint_url=aws_env, credentials=CREDENTIALS)
    async with AwsClients(aws) as clients:
        await create_table(clients.dynamodb, "letters", DEAD_LETTERS.attributes)  # as an earlier release did
        assert await create_worker_tables(clients.dynamodb, "checkpoints", "letters") == {
            "checkpoints": True,
            "letters": False,
        }
        store = DynamoDBDeadLetterStore(clients.dynamodb, Caller(RetryPolicy(attempts=2)), "letters")
        letter = DeadLetter(
            "transcripts", "arn:s", "shardId-1", "7", "e7", "failed", "why", dt.datetime.now(dt.UTC)
        )
        await store.put(letter)
        assert [x.letter_id async for x in store.list(kind="failed")] == [letter.letter_id]
    described = (await _key_schemas(aws_env, ["letters"]))["letters"]
    assert (
        described == _expected({"checkpoint_table": "checkpoints", "dead_letter_table": "letters"})["letters"]
    )
