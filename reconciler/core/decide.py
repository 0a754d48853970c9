"""What a stream record asks for under its table's rules: nothing, a filtered removal, a removal that cannot
be planned (no old image), or a deletion for a cause. One function, used by the worker and the dry run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from reconciler.core.classify import Cause, classify
from reconciler.core.records import StreamRecord
from reconciler.core.spec import TableSpec

Verdict = Literal["ignored", "filtered", "no_image", "delete"]


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    cause: Cause | None = None
    detail: str = ""


def decide(record: StreamRecord, table: TableSpec) -> Decision:
    cause = classify(record, table.ttl_attribute)
    if cause is None:
        return Decision("ignored", detail=f"{record.event_name.value} deletes nothing")
    skip = table.cascade.filtered(cause, record)
    # Without an old image only the cause can be judged: image conditions cannot clear a removal for sure.
    if skip is not None and (record.old_image is not None or cause not in table.cascade.causes):
        return Decision("filtered", cause, skip)
    if record.old_image is None:
        # KEYS_ONLY or NEW_IMAGE streams cannot tell us what was linked: an operator must look.
        return Decision("no_image", cause, "REMOVE record carries no OldImage")
    return Decision("delete", cause)
