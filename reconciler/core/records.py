"""Stream records as frozen values, decoded once at the edge.

``GetRecords`` (botocore) spells the identity ``{"PrincipalId": ..., "Type": ...}`` and parses
``ApproximateCreationDateTime`` into an aware ``datetime``; the Lambda event format spells it
``{"principalId": ..., "type": ...}`` and carries epoch seconds. Both are accepted.
See https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/time-to-live-ttl-streams.html
"""

from __future__ import annotations

import datetime as dt
import decimal
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from reconciler.core.dynamodb_json import Image, decode_image
from reconciler.errors import DecodeError

TTL_PRINCIPAL = "dynamodb.amazonaws.com"
TTL_IDENTITY_TYPE = "Service"
_SEQUENCE = re.compile(r"[0-9]{1,40}")


class EventName(StrEnum):
    INSERT = "INSERT"
    MODIFY = "MODIFY"
    REMOVE = "REMOVE"


class StreamViewType(StrEnum):
    KEYS_ONLY = "KEYS_ONLY"
    NEW_IMAGE = "NEW_IMAGE"
    OLD_IMAGE = "OLD_IMAGE"
    NEW_AND_OLD_IMAGES = "NEW_AND_OLD_IMAGES"

    @property
    def has_old_image(self) -> bool:
        return self in {StreamViewType.OLD_IMAGE, StreamViewType.NEW_AND_OLD_IMAGES}


@dataclass(frozen=True, slots=True)
class StreamRecord:
    """One decoded stream record; the image is kept in memory only, never logged."""

    event_id: str
    event_name: EventName
    sequence_number: str
    created_at: dt.datetime
    keys: Image
    old_image: Image | None
    view_type: StreamViewType | None
    by_ttl_service: bool
    principal: str | None = None
    """``userIdentity``'s principal, whichever spelling carried it (cascade filters read it)."""
    identity_type: str | None = None

    @property
    def sequence(self) -> int:
        """Sequence numbers are 21-40 digit strings: compare them as integers, never as text."""
        return int(self.sequence_number)


@dataclass(frozen=True, slots=True)
class Undecodable:
    """A record that could not be decoded: kept as data so it is counted and dead-lettered."""

    event_id: str
    sequence_number: str
    reason: str
    keys: Image = field(default_factory=dict)
    """The record's ``Keys`` when they decode on their own, so an operator can find the item."""

    @property
    def sequence(self) -> int:
        return int(self.sequence_number)


def _identity(identity: object) -> tuple[str | None, str | None]:
    """``(principal, type)`` of a ``userIdentity`` in either spelling."""
    if not isinstance(identity, Mapping):
        return None, None
    principal = identity.get("PrincipalId", identity.get("principalId"))
    kind = identity.get("Type", identity.get("type"))
    return (principal if isinstance(principal, str) else None, kind if isinstance(kind, str) else None)


def _created_at(raw: object) -> dt.datetime:
    if isinstance(raw, dt.datetime):
        return raw if raw.tzinfo else raw.replace(tzinfo=dt.UTC)
    if isinstance(raw, int | float | decimal.Decimal) and not isinstance(raw, bool):
        try:
            return dt.datetime.fromtimestamp(float(raw), tz=dt.UTC)
        except (OverflowError, ValueError, OSError) as exc:
            raise DecodeError("ApproximateCreationDateTime is out of range") from exc
    raise DecodeError("ApproximateCreationDateTime is missing or not a time")


def sequence_of(raw: Mapping[str, object]) -> str:
    """The record's sequence number, validated; needed even when nothing else decodes."""
    body = raw.get("dynamodb")
    number = body.get("SequenceNumber") if isinstance(body, Mapping) else None
    if not isinstance(number, str) or not _SEQUENCE.fullmatch(number):
        raise DecodeError("SequenceNumber is missing or not 1-40 digits")
    return number


def decode_record(raw: Mapping[str, object]) -> StreamRecord | Undecodable:
    """Decode one record from ``GetRecords`` (or a Lambda event).

    Raises ``DecodeError`` only when even the sequence number is unusable: without it the record cannot be
    placed relative to the checkpoint, so the caller must stop the shard rather than skip it.
    """
    sequence_number = sequence_of(raw)
    event_id = raw.get("eventID")
    event_id = event_id if isinstance(event_id, str) else ""
    try:
        return _decode(raw, event_id, sequence_number)
    except DecodeError as exc:
        reason = str(exc)
    except Exception as exc:  # noqa: BLE001 - any other surprise in a record is bad input too, kept as data
        reason = f"record could not be decoded: {type(exc).__name__}"
    return Undecodable(event_id, sequence_number, reason, _keys_if_decodable(raw))


def _keys_if_decodable(raw: Mapping[str, object]) -> Image:
    body = raw.get("dynamodb")
    try:
        return decode_image(body.get("Keys", {})) if isinstance(body, Mapping) else {}
    except Exception:  # noqa: BLE001 - the keys are as broken as the rest: the letter names the position only
        return {}


def _decode(raw: Mapping[str, object], event_id: str, sequence_number: str) -> StreamRecord:
    body = raw["dynamodb"]
    if not isinstance(body, Mapping):  # pragma: no cover - sequence_of() already checked it
        raise DecodeError("record has no dynamodb body")
    try:
        event_name = EventName(str(raw.get("eventName")))
    except ValueError as exc:
        raise DecodeError("eventName is not INSERT, MODIFY or REMOVE") from exc
    view = body.get("StreamViewType")
    try:
        view_type = StreamViewType(view) if isinstance(view, str) else None
    except ValueError as exc:
        raise DecodeError("StreamViewType is not a known view type") from exc
    old = body.get("OldImage")
    principal, kind = _identity(raw.get("userIdentity"))
    return StreamRecord(
        event_id=event_id,
        event_name=event_name,
        sequence_number=sequence_number,
        created_at=_created_at(body.get("ApproximateCreationDateTime")),
        keys=decode_image(body.get("Keys", {})),
        old_image=decode_image(old) if old is not None else None,
        view_type=view_type,
        by_ttl_service=principal == TTL_PRINCIPAL and kind == TTL_IDENTITY_TYPE,
        principal=principal,
        identity_type=kind,
    )
