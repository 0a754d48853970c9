"""The dead-letter table: letters written (``UpdateItem``), listed, counted, read, resolved and purged.

One item per letter, keyed by ``letter_id``. The index ``by-kind-status`` is keyed by ``kind_status``
("failed#pending") and ``created_key`` (the first write's UTC time with the letter id, so keys are unique and
sort by time): listing by kind and time, counting pending letters and finding those to redrive or purge are
Queries that read only the letters of one kind and status, never a table scan. Resolving moves a letter to
its kind's ``resolved`` partition and keeps it; only ``purge_resolved`` deletes, and only resolved letters.
https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/bp-indexes-general-sparse-indexes.html
"""

from __future__ import annotations

import datetime as dt
import typing
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, cast

import structlog
from botocore.exceptions import ClientError

from reconciler.adapters.aws import Caller, aws_operation, error_code
from reconciler.adapters.tables import LETTERS_INDEX
from reconciler.core.dynamodb_json import decode_image, encode_key, encode_value
from reconciler.core.letters import LetterPlan
from reconciler.errors import DecodeError
from reconciler.ports import DeadLetter, LetterKind, LetterStatus

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient

log = structlog.get_logger("reconciler.letters")

KINDS: tuple[LetterKind, ...] = typing.get_args(LetterKind)
STATUSES: tuple[LetterStatus, ...] = typing.get_args(LetterStatus)


def time_key(at: dt.datetime) -> str:
    """A UTC time as fixed-width text, so that text order is time order."""
    return at.astimezone(dt.UTC).isoformat(timespec="microseconds")


def kind_status(kind: str, status: str) -> str:
    return f"{kind}#{status}"


def kind_of(letter_id: str) -> str:
    """A letter id ends with its kind (``DeadLetter.letter_id``)."""
    return letter_id.rpartition("#")[2]


class DynamoDBDeadLetterStore:
    def __init__(
        self, client: DynamoDBClient, call: Caller, table: str, *, page_size: int | None = None
    ) -> None:
        """``page_size`` caps the items a Query reads per page (DynamoDB's own cap is 1 MB)."""
        self._client = client
        self._call = call
        self._table = table
        self._page = {"Limit": page_size} if page_size else {}

    async def put(self, letter: DeadLetter) -> bool:
        """``UpdateItem``: the letter's fields are set and it is pending; its first ``created_at`` (and index
        key) kept; its targets ADDed to a string set, so a letter written again (a redelivered record) never
        loses the targets an earlier write named."""
        fields = _fields(letter)
        names = {f"#f{n}": name for n, name in enumerate(fields)}
        values = {f":f{n}": value for n, value in enumerate(fields.values())}
        sets = [f"#f{n} = :f{n}" for n in range(len(fields))]
        first = {"created_at": {"S": letter.created_at.isoformat()}}
        first["created_key"] = {"S": f"{time_key(letter.created_at)}#{letter.letter_id}"}
        for n, (name, value) in enumerate(first.items()):
            names[f"#c{n}"], values[f":c{n}"] = name, value
            sets.append(f"#c{n} = if_not_exists(#c{n}, :c{n})")
        update = "SET " + ", ".join(sets)
        if letter.targets:
            names["#t"], values[":t"] = "targets", {"SS": list(dict.fromkeys(letter.targets))}
            update += " ADD #t :t"
        response = await self._call(
            self._client.update_item,
            TableName=self._table,
            Key={"letter_id": {"S": letter.letter_id}},
            UpdateExpression=update,
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
            ReturnValues="ALL_OLD",
        )
        return "Attributes" not in response  # nothing was there before: the letter is new

    async def list(
        self,
        *,
        kind: LetterKind | None = None,
        since: dt.datetime | None = None,
        status: LetterStatus | None = None,
    ) -> AsyncIterator[DeadLetter]:
        for each_kind in (kind,) if kind else KINDS:
            for each_status in (status,) if status else STATUSES:
                async for item in self._query(kind_status(each_kind, each_status), since):
                    yield _letter(item)

    async def _query(
        self, partition: str, since: dt.datetime | None, **extra: Any
    ) -> AsyncIterator[Mapping[str, Any]]:
        """Items of one index partition (created at or after ``since``), page by page."""
        condition = "#p = :p"
        names = {"#p": "kind_status"}
        values: dict[str, Any] = {":p": {"S": partition}}
        if since is not None:
            condition += " AND #s >= :s"
            names["#s"], values[":s"] = "created_key", {"S": time_key(since)}
        params: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": LETTERS_INDEX.name,
            "KeyConditionExpression": condition,
            **extra,
            "ExpressionAttributeNames": names | extra.get("ExpressionAttributeNames", {}),
            "ExpressionAttributeValues": values | extra.get("ExpressionAttributeValues", {}),
            **self._page,
        }
        while True:
            page = await self._call(self._client.query, **params)
            for item in page.get("Items", []):
                yield item
            if "LastEvaluatedKey" not in page:
                return
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    async def get(self, letter_id: str) -> DeadLetter | None:
        response = await self._call(
            self._client.get_item,
            TableName=self._table,
            Key={"letter_id": {"S": letter_id}},
            ConsistentRead=True,
        )
        item = response.get("Item")
        return _letter(item) if item else None

    async def resolve(self, letter_id: str, at: dt.datetime) -> bool:
        """Conditional on the letter existing, being of the kind its id names, and being pending (a letter
        from before statuses were stored counts as pending)."""
        kind = kind_of(letter_id)
        return await self._call(
            self._conditional,
            fn=self._client.update_item,
            TableName=self._table,
            Key={"letter_id": {"S": letter_id}},
            UpdateExpression="SET #st = :resolved, #ra = :at, #ks = :ks",
            ConditionExpression="#k = :kind AND (#st = :pending OR attribute_not_exists(#st))",
            ExpressionAttributeNames={
                "#st": "status",
                "#ra": "resolved_at",
                "#ks": "kind_status",
                "#k": "kind",
            },
            ExpressionAttributeValues={
                ":resolved": {"S": "resolved"},
                ":pending": {"S": "pending"},
                ":at": {"S": time_key(at)},
                ":ks": {"S": kind_status(kind, "resolved")},
                ":kind": {"S": kind},
            },
        )

    async def purge_resolved(self, older_than: dt.datetime) -> int:
        """Each kind's resolved partition, filtered to letters resolved before the cut-off; each deleted
        only if it is still resolved, and resolved before the cut-off, when the delete runs."""
        cut = {":cut": {"S": time_key(older_than)}, ":resolved": {"S": "resolved"}}
        names = {"#st": "status", "#ra": "resolved_at"}
        purged = 0
        for kind in KINDS:
            found = self._query(
                kind_status(kind, "resolved"),
                None,
                FilterExpression="#ra < :cut",
                ProjectionExpression="letter_id",
                ExpressionAttributeNames={"#ra": "resolved_at"},
                ExpressionAttributeValues={":cut": cut[":cut"]},
            )
            async for item in found:
                purged += await self._call(
                    self._conditional,
                    fn=self._client.delete_item,
                    TableName=self._table,
                    Key={"letter_id": item["letter_id"]},
                    ConditionExpression="#st = :resolved AND #ra < :cut",
                    ExpressionAttributeNames=names,
                    ExpressionAttributeValues=cut,
                )
        return purged

    async def count_pending(self, kind: LetterKind) -> int:
        """``Select=COUNT`` over the kind's pending partition: no letter is returned, page by page (a Query
        counts at most 1 MB of items per page)."""
        params: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": LETTERS_INDEX.name,
            "KeyConditionExpression": "#p = :p",
            "ExpressionAttributeNames": {"#p": "kind_status"},
            "ExpressionAttributeValues": {":p": {"S": kind_status(kind, "pending")}},
            "Select": "COUNT",
            **self._page,
        }
        count = 0
        while True:
            page = await self._call(self._client.query, **params)
            count += int(page.get("Count", 0))
            if "LastEvaluatedKey" not in page:
                return count
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    @staticmethod
    @aws_operation("conditional_write")
    async def _conditional(*, fn: Any, **kwargs: Any) -> bool:
        """A conditional write: True if it was made, False if its condition did not hold."""
        try:
            await fn(**kwargs)
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise
        return True


def _fields(letter: DeadLetter) -> dict[str, Any]:
    """What every write sets: the record's identifiers and the reason, pending in its kind's partition."""
    fields: dict[str, Any] = {
        "source_table": {"S": letter.source_table},
        "stream_arn": {"S": letter.stream_arn},
        "shard_id": {"S": letter.shard_id},
        "sequence_number": {"S": letter.sequence_number},
        "event_id": {"S": letter.event_id or "-"},
        "kind": {"S": letter.kind},
        "reason": {"S": letter.reason},
        "status": {"S": "pending"},
        "kind_status": {"S": kind_status(letter.kind, "pending")},
    }
    if letter.cause:
        fields["cause"] = {"S": letter.cause}
    if letter.item_table:
        fields["item_table"] = {"S": letter.item_table}
    if letter.item_key:
        fields["item_key"] = {"M": encode_key(letter.item_key)}
    if letter.attempts:
        fields["attempts"] = {"N": str(letter.attempts)}
    if letter.first_attempt is not None:
        fields["first_attempt"] = {"S": letter.first_attempt.isoformat()}
    if letter.last_attempt is not None:
        fields["last_attempt"] = {"S": letter.last_attempt.isoformat()}
    if letter.plan is not None:
        fields["plan"] = encode_value(letter.plan.to_data())
    return fields


def _letter(item: Mapping[str, Any]) -> DeadLetter:
    """A stored letter; a plan that cannot be read is left out (redrive then refuses the letter)."""
    data = decode_image(item)
    plan: LetterPlan | None = None
    if "plan" in data:
        try:
            plan = LetterPlan.from_data(data["plan"])
        except DecodeError as exc:
            log.warning("dead_letter.plan_unreadable", letter_id=data.get("letter_id"), error=str(exc))
    key = data.get("item_key")
    return DeadLetter(
        source_table=str(data.get("source_table", "")),
        stream_arn=str(data.get("stream_arn", "")),
        shard_id=str(data.get("shard_id", "")),
        sequence_number=str(data.get("sequence_number", "")),
        event_id="" if data.get("event_id") in {None, "-"} else str(data["event_id"]),
        kind=cast("LetterKind", data.get("kind")),
        reason=str(data.get("reason", "")),
        created_at=dt.datetime.fromisoformat(str(data["created_at"])),
        cause=_optional(data, "cause"),
        item_table=_optional(data, "item_table"),
        item_key=dict(key) if isinstance(key, Mapping) else {},
        targets=tuple(sorted(cast("frozenset[str]", data.get("targets", frozenset())))),
        attempts=int(cast("int", data.get("attempts", 0))),
        first_attempt=_time(data, "first_attempt"),
        last_attempt=_time(data, "last_attempt"),
        plan=plan,
        status="resolved" if data.get("status") == "resolved" else "pending",
        resolved_at=_time(data, "resolved_at"),
    )


def _optional(data: Mapping[str, object], name: str) -> str | None:
    value = data.get(name)
    return str(value) if value is not None else None


def _time(data: Mapping[str, object], name: str) -> dt.datetime | None:
    value = data.get(name)
    return dt.datetime.fromisoformat(str(value)) if value is not None else None
