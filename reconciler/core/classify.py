"""Why an item was removed, from its stream record alone."""

from __future__ import annotations

import datetime as dt
import decimal
from enum import StrEnum

from reconciler.core.dynamodb_json import Image
from reconciler.core.records import EventName, StreamRecord

# TTL does not delete items whose expiry is more than five years in the past, so such a REMOVE is a request.
# https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/time-to-live-ttl-before-you-start.html
_TTL_HORIZON = dt.timedelta(days=5 * 365)
_MAX_EPOCH_SECONDS = decimal.Decimal(253402300799)  # 9999-12-31T23:59:59Z: a larger number is not seconds


class Cause(StrEnum):
    """Why linked artifacts must go. All three cascade."""

    TTL = "ttl"
    """DynamoDB's TTL service deleted the item (userIdentity says so)."""
    EXPIRED = "expired"
    """A plain REMOVE of an item whose TTL had passed: a global-table replica, or our own sweeper."""
    REQUESTED = "requested"
    """Any other REMOVE: a customer deletion, due at the time of the request."""


def ttl_expiry(image: Image | None, ttl_attribute: str | None) -> dt.datetime | None:
    """The item's TTL expiry, or None when the attribute is absent or not epoch seconds (TTL ignores it)."""
    if image is None or ttl_attribute is None:
        return None
    value = image.get(ttl_attribute)
    if not isinstance(value, decimal.Decimal) or not value.is_finite():
        return None
    if value < 0 or value > _MAX_EPOCH_SECONDS:
        return None
    return dt.datetime.fromtimestamp(float(value), tz=dt.UTC)


def classify(record: StreamRecord, ttl_attribute: str | None) -> Cause | None:
    """The deletion cause, or None for INSERT and MODIFY, which delete nothing."""
    if record.event_name is not EventName.REMOVE:
        return None
    if record.by_ttl_service:
        return Cause.TTL
    expiry = ttl_expiry(record.old_image, ttl_attribute)
    if expiry is not None and record.created_at - _TTL_HORIZON <= expiry <= record.created_at:
        return Cause.EXPIRED
    return Cause.REQUESTED
