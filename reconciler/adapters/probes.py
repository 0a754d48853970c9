"""The pre-flight checks' AWS calls (``reconciler.preflight``): read-only, or refused by design.

Each check names the resource and, for a refusal, the IAM action that is missing. AWS answers that say
nothing about the deployment (throttling, 5xx, a credentials service that is down) are raised as retriable
errors: the pre-flight loop waits them out.

``DeleteItem`` on a linked table is proven with a condition that can never hold
(``attribute_exists(k) AND attribute_not_exists(k)``): DynamoDB checks IAM before it evaluates a condition
(https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/specifying-conditions.html), so a
granted call fails with ``ConditionalCheckFailedException`` and a missing grant with
``AccessDeniedException``; no item can match, so none is ever deleted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from reconciler.adapters.aws import Caller, error_code
from reconciler.core.dynamodb_json import encode_value
from reconciler.core.records import StreamViewType
from reconciler.core.spec import ExpiryIndex
from reconciler.errors import AccessError, CredentialsError, PermanentError, ReconcilerError
from reconciler.preflight import OwnTable, Problem

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient
    from types_aiobotocore_dynamodbstreams import DynamoDBStreamsClient
    from types_aiobotocore_s3 import S3Client

MISSING = frozenset({"ResourceNotFoundException", "NoSuchBucket"})
DENIED = frozenset({"AccessDenied", "AccessDeniedException", "AllAccessDisabled"})
# A key value no real item is likely to hold: reads find nothing; the impossible delete never matches.
_DUMMY: dict[str, Any] = {"S": {"S": "#reconciler-preflight"}, "N": {"N": "0"}, "B": {"B": b"#reconciler"}}


# What a shard can answer when it is read at an awkward moment (an iterator expired, records trimmed): the
# call was allowed, which is all the pre-flight asks.
_STREAM_STATES = frozenset({"ExpiredIteratorException", "TrimmedDataAccessException"})


def _code(exc: ReconcilerError) -> str:
    cause = exc.__cause__
    return error_code(cause) if isinstance(cause, ClientError) else ""


class _Refused(Exception):  # noqa: N818 - an answer, not a failure: turned into a Problem at once
    def __init__(self, problem: Problem) -> None:
        self.problem = problem


class AwsResourceProbe:
    def __init__(
        self,
        dynamodb: DynamoDBClient,
        streams: DynamoDBStreamsClient,
        s3: S3Client,
        call: Caller,
        *,
        read_only: bool = False,
    ) -> None:
        """With ``read_only`` (a dry run, which deletes nothing) no ``DeleteItem`` grant is proven, so no
        write call reaches a linked table."""
        self._dynamodb = dynamodb
        self._streams = streams
        self._s3 = s3
        self._call = call
        self._read_only = read_only

    async def _ask(
        self, resource: str, action: str, fn: Any, /, granted: frozenset[str] = frozenset(), **params: Any
    ) -> Any:
        """One call; a missing resource or a missing grant becomes a ``Problem`` (raised as ``_Refused``).
        An error coded in ``granted`` proves the grant (IAM is checked first) and answers None."""
        try:
            return await self._call(fn, **params)
        except CredentialsError:
            raise  # the credentials source may come back: waited out
        except (AccessError, PermanentError) as exc:
            code = _code(exc)
            if code in granted:
                return None
            if code in MISSING:
                raise _Refused(Problem(resource, "does not exist")) from exc
            if code in DENIED:
                raise _Refused(Problem(resource, f"not allowed: {action}")) from exc
            if isinstance(exc, AccessError) and code:  # bad keys, an expired token, a wrong signature
                raise _Refused(Problem(resource, f"AWS refused the credentials: {code}")) from exc
            raise

    async def _describe(self, table: str, resource: str) -> dict[str, Any]:
        response = await self._ask(
            resource, "dynamodb:DescribeTable", self._dynamodb.describe_table, TableName=table
        )
        return dict(response["Table"])

    async def source(
        self, table: str, *, sweep: bool = False, index: ExpiryIndex | None = None, ttl: str | None = None
    ) -> list[Problem]:
        resource = f"source table {table!r}"
        try:
            description = await self._describe(table, resource)
            spec = description.get("StreamSpecification", {})
            arn = description.get("LatestStreamArn")
            if not arn or not spec.get("StreamEnabled", False):
                return [Problem(resource, "has no stream; enable one with OLD_IMAGE or NEW_AND_OLD_IMAGES")]
            view = spec.get("StreamViewType")
            if view is None or not StreamViewType(view).has_old_image:
                return [Problem(resource, f"streams {view}; OLD_IMAGE or NEW_AND_OLD_IMAGES is needed")]
            problems = await self._stream(f"stream of table {table!r}", arn)
            await self._read(resource, table, _dummy_key(description))
            if sweep:  # the expiry sweeper's calls: a one-item Scan (or Query), and an impossible delete
                if index is not None and ttl is not None:
                    await self._expiry_index(resource, table, description, index, ttl)
                else:
                    await self._ask(resource, "dynamodb:Scan", self._dynamodb.scan, TableName=table, Limit=1)
                await self._impossible_delete(resource, table, description)
        except _Refused as refused:
            return [refused.problem]
        return problems

    async def _expiry_index(
        self, resource: str, table: str, description: dict[str, Any], index: ExpiryIndex, ttl: str
    ) -> None:
        """The sparse index exists with the partition key named and the TTL as its sort key, and may be
        queried."""
        where = f"expiry index {index.name!r} of {resource}"
        found = {i["IndexName"]: i["KeySchema"] for i in description.get("GlobalSecondaryIndexes", [])}
        if index.name not in found:
            raise _Refused(Problem(where, "does not exist"))
        schema = {k["KeyType"]: k["AttributeName"] for k in found[index.name]}
        if schema != {"HASH": index.partition_attribute, "RANGE": ttl}:
            wanted = f"partition key {index.partition_attribute!r} and sort key {ttl!r}"
            raise _Refused(Problem(where, f"must have {wanted}"))
        await self._ask(
            where,
            "dynamodb:Query",
            self._dynamodb.query,
            TableName=table,
            IndexName=index.name,
            KeyConditionExpression="#p = :p",
            ExpressionAttributeNames={"#p": index.partition_attribute},
            ExpressionAttributeValues={":p": encode_value(index.partition_values[0])},
            Limit=1,
        )

    async def _read(self, resource: str, table: str, key: dict[str, Any]) -> None:
        await self._ask(
            resource,
            "dynamodb:BatchGetItem",
            self._dynamodb.batch_get_item,
            RequestItems={table: {"Keys": [key]}},
        )

    async def _stream(self, resource: str, arn: str) -> list[Problem]:
        try:
            described = await self._ask(
                resource, "dynamodb:DescribeStream", self._streams.describe_stream, StreamArn=arn, Limit=1
            )
            shards = described["StreamDescription"].get("Shards", [])
            if not shards:
                return []  # a new stream: nothing to read yet, nothing more to prove
            iterator = await self._ask(
                resource,
                "dynamodb:GetShardIterator",
                self._streams.get_shard_iterator,
                granted=_STREAM_STATES,
                StreamArn=arn,
                ShardId=shards[0]["ShardId"],
                ShardIteratorType="LATEST",
            )
            if iterator is not None:
                await self._ask(
                    resource,
                    "dynamodb:GetRecords",
                    self._streams.get_records,
                    granted=_STREAM_STATES,
                    ShardIterator=iterator["ShardIterator"],
                    Limit=1,
                )
        except _Refused as refused:
            return [refused.problem]
        return []

    async def linked(self, table: str, indexes: frozenset[str], *, scan: bool = False) -> list[Problem]:
        resource = f"linked table {table!r}"
        try:
            description = await self._describe(table, resource)
            present = {
                index["IndexName"]: index["KeySchema"]
                for kind in ("GlobalSecondaryIndexes", "LocalSecondaryIndexes")
                for index in description.get(kind, [])
            }
            missing = sorted(indexes - set(present))
            if missing:
                return [Problem(f"index {name!r} of {resource}", "does not exist") for name in missing]
            types = {a["AttributeName"]: a["AttributeType"] for a in description["AttributeDefinitions"]}
            targets: list[tuple[str | None, list[dict[str, Any]]]] = [
                (name, present[name]) for name in sorted(indexes)
            ] or [(None, description["KeySchema"])]
            for index, schema in targets:
                await self._query(resource, table, index, _partition(schema), types)
            if scan:  # the orphan sweep's read of the whole table
                await self._ask(resource, "dynamodb:Scan", self._dynamodb.scan, TableName=table, Limit=1)
            if not self._read_only:
                await self._impossible_delete(resource, table, description)
        except _Refused as refused:
            return [refused.problem]
        return []

    async def _query(
        self, resource: str, table: str, index: str | None, attribute: str, types: dict[str, str]
    ) -> None:
        params: dict[str, Any] = {
            "TableName": table,
            "KeyConditionExpression": "#k = :v",
            "ExpressionAttributeNames": {"#k": attribute},
            "ExpressionAttributeValues": {":v": _DUMMY[types[attribute]]},
            "Select": "COUNT",
            "Limit": 1,
        }
        where = f"{resource} index {index!r}" if index else resource
        if index:
            params["IndexName"] = index
        await self._ask(where, "dynamodb:Query", self._dynamodb.query, **params)

    async def _impossible_delete(self, resource: str, table: str, description: dict[str, Any]) -> None:
        partition = _partition(description["KeySchema"])
        try:
            await self._ask(
                resource,
                "dynamodb:DeleteItem",
                self._dynamodb.delete_item,
                TableName=table,
                Key=_dummy_key(description),
                ConditionExpression="attribute_exists(#k) AND attribute_not_exists(#k)",
                ExpressionAttributeNames={"#k": partition},
            )
        except PermanentError as exc:
            if _code(exc) != "ConditionalCheckFailedException":
                raise
            return  # granted, and (as always) nothing matched
        raise PermanentError(f"{resource}: an impossible conditional delete succeeded")  # pragma: no cover

    async def bucket(self, bucket: str, prefixes: tuple[str, ...]) -> list[Problem]:
        try:
            for prefix in prefixes:
                await self._ask(
                    f"bucket {bucket!r}" + (f" prefix {prefix!r}" if prefix else ""),
                    "s3:ListBucketVersions",
                    self._s3.list_object_versions,
                    Bucket=bucket,
                    Prefix=prefix,
                    MaxKeys=1,
                )
        except _Refused as refused:
            problem = refused.problem
            if problem.detail == "does not exist":  # the bucket, whichever prefix found it
                problem = Problem(f"bucket {bucket!r}", problem.detail)
            return [problem]
        return []

    async def accounts_table(self, table: str) -> list[Problem]:
        """An age rule's accounts: the table exists and a Scan is allowed (one item, keys only)."""
        resource = f"accounts table {table!r}"
        try:
            await self._describe(table, resource)
            await self._ask(resource, "dynamodb:Scan", self._dynamodb.scan, TableName=table, Limit=1)
        except _Refused as refused:
            return [refused.problem]
        return []

    async def own_table(self, table: str, own: OwnTable) -> list[Problem]:
        resource = f"{own.role} {table!r}"
        hint = "create it from deploy/aws/tables.cfn.yaml, or run with --create-tables"
        try:
            description = await self._describe(table, resource)
        except _Refused as refused:
            problem = refused.problem
            if problem.detail == "does not exist":
                problem = Problem(resource, f"does not exist ({hint})")
            return [problem]
        present = {index["IndexName"] for index in description.get("GlobalSecondaryIndexes", [])}
        return [
            Problem(f"index {name!r} of {resource}", f"does not exist (add it: {hint})")
            for name in sorted(own.indexes - present)
        ]


def _partition(schema: list[dict[str, Any]]) -> str:
    return str(next(k["AttributeName"] for k in schema if k["KeyType"] == "HASH"))


def _dummy_key(description: dict[str, Any]) -> dict[str, Any]:
    types = {a["AttributeName"]: a["AttributeType"] for a in description["AttributeDefinitions"]}
    return {k["AttributeName"]: _DUMMY[types[k["AttributeName"]]] for k in description["KeySchema"]}
