"""Stream records are classified by cause; golden records cover both spellings of the TTL identity."""

from __future__ import annotations

import datetime as dt
import decimal
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.core.classify import Cause, classify, ttl_expiry
from reconciler.core.records import EventName, StreamRecord, Undecodable, decode_record
from reconciler.errors import DecodeError
from reconciler.testing import stream_record

GOLDEN = sorted((Path(__file__).parent / "golden").glob("*.json"))


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


@pytest.mark.parametrize("path", GOLDEN, ids=[p.stem for p in GOLDEN])
def test_golden_records_classify_as_documented(path: Path) -> None:
    golden = _load(path)
    record = decode_record(golden["record"])
    assert isinstance(record, StreamRecord)
    cause = classify(record, "expires_at")
    assert (cause.value if cause else None) == golden["expected_cause"]


def test_ttl_identity_is_recognised_in_both_spellings() -> None:
    for identity in ("botocore", "lambda"):
        record = decode_record(stream_record(1, old_image={"transcript_id": "t"}, identity=identity))
        assert isinstance(record, StreamRecord)
        assert record.by_ttl_service
        assert classify(record, None) is Cause.TTL


def test_expired_means_ttl_at_or_before_the_event_time() -> None:
    at = dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC)
    exactly = stream_record(1, old_image={"id": "x", "ttl": int(at.timestamp())}, created_at=at)
    later = stream_record(2, old_image={"id": "x", "ttl": int(at.timestamp()) + 1}, created_at=at)
    decoded = [decode_record(exactly), decode_record(later)]
    assert [classify(r, "ttl") for r in decoded if isinstance(r, StreamRecord)] == [
        Cause.EXPIRED,
        Cause.REQUESTED,
    ]


def test_an_expiry_older_than_five_years_is_not_ttl_so_the_removal_is_a_request() -> None:
    at = dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC)
    ancient = int((at - dt.timedelta(days=6 * 365)).timestamp())
    record = decode_record(stream_record(1, old_image={"id": "x", "ttl": ancient}, created_at=at))
    assert isinstance(record, StreamRecord)
    assert classify(record, "ttl") is Cause.REQUESTED


def test_botocore_datetimes_and_lambda_epochs_decode_to_the_same_instant() -> None:
    at = dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC)
    from_botocore = decode_record(stream_record(1, old_image={"id": "x"}, created_at=at))
    raw = stream_record(1, old_image={"id": "x"})
    raw["dynamodb"]["ApproximateCreationDateTime"] = at.timestamp()  # type: ignore[index]
    from_lambda = decode_record(raw)
    assert isinstance(from_botocore, StreamRecord)
    assert isinstance(from_lambda, StreamRecord)
    assert from_botocore.created_at == from_lambda.created_at == at


@pytest.mark.parametrize("value", ["1764000000", decimal.Decimal(-5), decimal.Decimal(10**13), None])
def test_ttl_values_that_ttl_ignores_give_no_expiry(value: object) -> None:
    image = {} if value is None else {"ttl": value}
    assert ttl_expiry(image, "ttl") is None


def test_insert_and_modify_are_not_deletions() -> None:
    for event in ("INSERT", "MODIFY"):
        record = decode_record(stream_record(1, event=event, old_image={"id": "x"}, identity="botocore"))
        assert isinstance(record, StreamRecord)
        assert record.event_name is EventName(event)
        assert classify(record, "ttl") is None


def test_an_undecodable_image_is_kept_as_data_with_its_sequence_number() -> None:
    raw = stream_record(7, old_image={"id": "x"})
    raw["dynamodb"]["OldImage"] = {"id": {"Q": "bad tag"}}  # type: ignore[index]
    record = decode_record(raw)
    assert isinstance(record, Undecodable)
    assert record.sequence == 7
    assert "unknown attribute type tag" in record.reason


def test_an_unknown_event_name_is_undecodable() -> None:
    raw = stream_record(8, old_image={"id": "x"})
    raw["eventName"] = "TRUNCATE"
    assert isinstance(decode_record(raw), Undecodable)


def test_a_record_without_a_usable_sequence_number_raises() -> None:
    raw = stream_record(9, old_image={"id": "x"})
    raw["dynamodb"]["SequenceNumber"] = "12ab"  # type: ignore[index]
    with pytest.raises(DecodeError):
        decode_record(raw)


def test_sequence_numbers_compare_as_integers() -> None:
    short = decode_record(stream_record(9 * 10**20, old_image={"id": "x"}))  # 21 digits, starts with 9
    raw = stream_record(10, old_image={"id": "x"})
    raw["dynamodb"]["SequenceNumber"] = "1" + "0" * 21  # type: ignore[index]
    long = decode_record(raw)
    assert short.sequence < long.sequence
    assert short.sequence_number > long.sequence_number  # as text the order would be wrong


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=10,
)
attribute_values = st.one_of(
    st.builds(
        lambda tag, v: {tag: v},
        st.sampled_from(["S", "N", "B", "BOOL", "NULL", "M", "L", "SS", "NS", "BS"]),
        json_values,
    ),
    st.just({"N": "0E+200"}),
    st.just({"N": "1e999"}),
    json_values,
)
raw_records = st.fixed_dictionaries(
    {
        "eventName": st.sampled_from(["INSERT", "MODIFY", "REMOVE", "OTHER", 5]),
        "dynamodb": st.fixed_dictionaries(
            {
                "SequenceNumber": st.just("100000000000000000001"),
                "ApproximateCreationDateTime": st.one_of(
                    st.floats(), st.integers(), st.text(max_size=3), st.none()
                ),
                "Keys": st.dictionaries(st.text(max_size=4), attribute_values, max_size=2),
                "OldImage": st.one_of(
                    st.dictionaries(st.text(max_size=4), attribute_values, max_size=3), json_values
                ),
                "StreamViewType": st.sampled_from(["NEW_AND_OLD_IMAGES", "KEYS_ONLY", "bogus"]),
            }
        ),
    },
    optional={"userIdentity": json_values, "eventID": json_values},
)


@given(raw_records)
def test_any_record_with_a_sequence_number_decodes_to_data_never_an_exception(raw: dict[str, Any]) -> None:
    record = decode_record(raw)
    assert isinstance(record, StreamRecord | Undecodable)
    assert record.sequence_number == "100000000000000000001"
