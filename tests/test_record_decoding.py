"""A stream record decodes once into a frozen value; a bad one is kept with a reason an operator can use."""

from __future__ import annotations

import datetime as dt
import decimal
from typing import Any

import pytest

from reconciler.core.classify import Cause, classify, ttl_expiry
from reconciler.core.records import EventName, StreamRecord, StreamViewType, Undecodable, decode_record
from reconciler.errors import DecodeError
from reconciler.testing import stream_record

AT = dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC)


def _raw(**body: object) -> dict[str, Any]:
    """A REMOVE record whose ``dynamodb`` body has ``body`` merged in (None removes a field)."""
    raw = stream_record(7, old_image={"transcript_id": "tr-1"}, created_at=AT)
    merged = {**raw["dynamodb"], **body}  # type: ignore[dict-item]
    raw["dynamodb"] = {k: v for k, v in merged.items() if v is not None}
    return raw


def _decoded(raw: dict[str, Any]) -> StreamRecord:
    record = decode_record(raw)
    assert isinstance(record, StreamRecord), record
    return record


def test_a_record_keeps_its_event_id_sequence_view_type_and_images() -> None:
    record = _decoded(_raw())
    assert record.event_id == "event-7"
    assert record.event_name is EventName.REMOVE
    assert record.sequence_number == f"{7:021d}"
    assert record.view_type is StreamViewType.NEW_AND_OLD_IMAGES
    assert record.keys == {"transcript_id": "tr-1"}
    assert record.old_image == {"transcript_id": "tr-1"}
    assert record.created_at == AT


def test_a_record_without_a_view_type_still_decodes() -> None:
    """The Lambda event format may leave StreamViewType out: the view type is then unknown, not an error."""
    assert _decoded(_raw(StreamViewType=None)).view_type is None


@pytest.mark.parametrize(
    "created",
    [
        AT.replace(tzinfo=None),  # naive: botocore's datetimes are UTC
        dt.datetime(
            2026, 1, 1, 14, tzinfo=dt.timezone(dt.timedelta(hours=2))
        ),  # another offset, same instant
        decimal.Decimal(int(AT.timestamp())),  # Lambda's epoch seconds
        int(AT.timestamp()),
        AT.timestamp(),
    ],
    ids=["naive", "offset", "decimal", "int", "float"],
)
def test_creation_times_are_the_same_aware_instant_however_spelled(created: object) -> None:
    record = _decoded(_raw(ApproximateCreationDateTime=created))
    assert record.created_at == AT
    assert record.created_at.utcoffset() is not None


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"ApproximateCreationDateTime": None}, "ApproximateCreationDateTime is missing or not a time"),
        (
            {"ApproximateCreationDateTime": "2026-01-01"},
            "ApproximateCreationDateTime is missing or not a time",
        ),
        ({"ApproximateCreationDateTime": True}, "ApproximateCreationDateTime is missing or not a time"),
        ({"ApproximateCreationDateTime": 10**20}, "ApproximateCreationDateTime is out of range"),
        ({"StreamViewType": "EVERYTHING"}, "StreamViewType is not a known view type"),
    ],
    ids=["no-time", "text-time", "bool-time", "far-future", "unknown-view"],
)
def test_a_bad_field_makes_the_record_undecodable_with_a_reason_naming_it(
    change: dict[str, object], reason: str
) -> None:
    record = decode_record(_raw(**change))
    keys = {"transcript_id": "tr-1"}  # the Keys decode on their own: the operator can find the item
    assert record == Undecodable(event_id="event-7", sequence_number=f"{7:021d}", reason=reason, keys=keys)


def test_an_unknown_event_name_is_named_in_the_reason() -> None:
    raw = _raw()
    raw["eventName"] = "TRUNCATE"
    record = decode_record(raw)
    assert isinstance(record, Undecodable)
    assert record.reason == "eventName is not INSERT, MODIFY or REMOVE"


def test_a_record_without_keys_decodes_with_empty_keys() -> None:
    assert _decoded(_raw(Keys=None)).keys == {}


@pytest.mark.parametrize("event_id", [None, 42], ids=["missing", "not-text"])
def test_an_unusable_event_id_becomes_empty_text(event_id: object) -> None:
    raw = _raw()
    if event_id is None:
        del raw["eventID"]
    else:
        raw["eventID"] = event_id
    assert _decoded(raw).event_id == ""
    raw["eventName"] = "TRUNCATE"
    bad = decode_record(raw)
    assert isinstance(bad, Undecodable)
    assert bad.event_id == ""


def test_an_undecodable_record_keeps_its_event_id_for_the_dead_letter() -> None:
    record = decode_record(_raw(OldImage={"transcript_id": {"Q": "bad tag"}}))
    assert isinstance(record, Undecodable)
    assert (record.event_id, record.sequence_number) == ("event-7", f"{7:021d}")


class _Hostile:
    """A value whose text cannot be taken: any surprise inside a record."""

    def __str__(self) -> str:
        raise RuntimeError("no text")


def test_any_surprise_inside_a_record_is_kept_as_data_naming_the_error_type() -> None:
    raw = _raw()
    raw["eventName"] = _Hostile()
    assert decode_record(raw) == Undecodable(
        "event-7", f"{7:021d}", "record could not be decoded: RuntimeError", {"transcript_id": "tr-1"}
    )


@pytest.mark.parametrize(
    "raw",
    [{"eventID": "e"}, {"dynamodb": None}, {"dynamodb": {"SequenceNumber": 7}}, {"dynamodb": {}}],
    ids=["no-body", "null-body", "number", "no-sequence"],
)
def test_a_record_without_a_sequence_number_cannot_be_placed(raw: dict[str, object]) -> None:
    """Only this raises: the consumer must stop the shard there rather than skip the record."""
    with pytest.raises(DecodeError) as raised:
        decode_record(raw)
    assert str(raised.value) == "SequenceNumber is missing or not 1-40 digits"


def test_ttl_expiry_accepts_every_epoch_second_from_1970_to_9999() -> None:
    assert ttl_expiry({"ttl": decimal.Decimal(0)}, "ttl") == dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    assert ttl_expiry({"ttl": decimal.Decimal(253402300799)}, "ttl") == dt.datetime(
        9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC
    )


def test_an_expiry_exactly_five_years_before_the_removal_is_still_ttls() -> None:
    """The horizon is inclusive: DynamoDB TTL may still delete an item whose expiry is five years old."""
    horizon = int((AT - dt.timedelta(days=5 * 365)).timestamp())
    record = _decoded(stream_record(1, old_image={"id": "x", "ttl": horizon}, created_at=AT))
    assert classify(record, "ttl") is Cause.EXPIRED
