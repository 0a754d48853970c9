"""The independent checker (tests/invariants.py) sees every way the promise can break: a version, a delete
marker or a linked item left behind, a live object or item changed, a checkpoint moved past an item whose
artifacts remain, a removal neither done nor dead-lettered. Read item by item and in bulk.

No worker runs here: the test plays it with its own boto3 calls, writing rows in the lease table's and the
dead-letter table's schemas."""

from __future__ import annotations

import datetime as dt
from typing import Any

import boto3  # type: ignore[import-untyped]
import pytest
from invariants import Checker, Removal, Report, Tracked, tracked_transcript

from reconciler.demo.layout import TRANSCRIPTS, Layout, Transcript, expiry
from reconciler.demo.moto_server import CREDENTIALS, REGION, BackendSeeder, ttl_delete

pytestmark = pytest.mark.integration


@pytest.fixture
async def world(layout: Layout, endpoint: str) -> tuple[list[Transcript], list[Transcript], Any]:
    """Four transcripts removed through the stream (d0..d3) and two live ones (l0, l1); the worker's
    tables exist and are empty. Returns them with a boto3 session on the server."""
    now = dt.datetime.now(dt.UTC)
    deleted = [Transcript("acct-1", f"d{n}", expiry(now, -60)) for n in range(4)]
    live = [Transcript("acct-1", f"l{n}", expiry(now, 86400)) for n in range(2)]
    await layout.add([*deleted, *live], seed=BackendSeeder())
    for t in deleted:
        ttl_delete("transcripts", {"transcript_id": {"S": t.transcript_id}})
    session = boto3.session.Session(
        aws_access_key_id=CREDENTIALS[0], aws_secret_access_key=CREDENTIALS[1], region_name=REGION
    )
    dynamodb = session.client("dynamodb", endpoint_url=endpoint)
    for name, keys in (
        ("reconciler-checkpoints", ("stream_arn", "shard_id")),
        ("reconciler-dead-letters", ("letter_id",)),
    ):
        dynamodb.create_table(
            TableName=name,
            BillingMode="PAY_PER_REQUEST",
            KeySchema=[
                {"AttributeName": k, "KeyType": kind}
                for k, kind in zip(keys, ("HASH", "RANGE"), strict=False)
            ],
            AttributeDefinitions=[{"AttributeName": k, "AttributeType": "S"} for k in keys],
        )
    return deleted, live, session


class Player:
    """Plays the worker (and a careless hand) on the server."""

    def __init__(self, session: Any, endpoint: str) -> None:
        self.s3 = session.client("s3", endpoint_url=endpoint)
        self.dynamodb = session.client("dynamodb", endpoint_url=endpoint)

    def erase(self, item: Tracked, *, keep: tuple[str, ...] = ()) -> None:
        """Delete every version, delete marker and linked item of ``item``, except those of the file names
        and linked tables in ``keep``."""
        for bucket, prefix in item.prefixes:
            listed = self.s3.list_object_versions(Bucket=bucket, Prefix=prefix)
            for entry in [*listed.get("Versions", []), *listed.get("DeleteMarkers", [])]:
                if entry["Key"].rsplit("/", 1)[-1] not in keep:
                    self.s3.delete_object(Bucket=bucket, Key=entry["Key"], VersionId=entry["VersionId"])
        for table, key in item.linked:
            if table not in keep:
                self.dynamodb.delete_item(TableName=table, Key=_key(key))

    def checkpoint(self, removal: Removal) -> None:
        self.dynamodb.put_item(
            TableName="reconciler-checkpoints",
            Item={
                "stream_arn": {"S": removal.stream_arn},
                "shard_id": {"S": removal.shard_id},
                "source_table": {"S": removal.table},
                "checkpoint": {"S": removal.sequence_number},
            },
        )

    def dead_letter(self, removal: Removal) -> None:
        self.dynamodb.put_item(
            TableName="reconciler-dead-letters",
            Item={
                "letter_id": {
                    "S": f"{removal.stream_arn}#{removal.shard_id}#{removal.sequence_number}#failed"
                },
                "stream_arn": {"S": removal.stream_arn},
                "shard_id": {"S": removal.shard_id},
                "sequence_number": {"S": removal.sequence_number},
                "kind": {"S": "failed"},
            },
        )


def _key(canonical: str) -> dict[str, Any]:
    import json  # noqa: PLC0415 - one use

    parsed: dict[str, Any] = json.loads(canonical)
    return parsed


def _found(report: Report) -> set[tuple[str, str]]:
    return {(v.rule, v.item) for v in report.violations}


@pytest.mark.parametrize("bulk_at", [1, 1000], ids=["bulk", "item-by-item"])
async def test_the_checker_passes_a_kept_promise_and_reports_each_way_of_breaking_it(
    world: tuple[list[Transcript], list[Transcript], Any], endpoint: str, bulk_at: int
) -> None:
    deleted, live, session = world
    gone, kept = [tracked_transcript(t) for t in deleted], [tracked_transcript(t) for t in live]
    checker = Checker(endpoint, [*gone, *kept], bulk_at=bulk_at)
    player = Player(session, endpoint)
    before = checker.snapshot(kept)
    removals = checker.removals()
    assert [r.key for r in removals] == [g.key for g in gone]

    # A worker cut short: d0 done, d1 half done, checkpoint after d0.
    player.erase(gone[0])
    player.erase(gone[1], keep=("captions.vtt", "transcript.json", "audio.wav"))
    player.checkpoint(removals[0])
    report = checker.checkpoints()
    report.assert_ok()
    assert (report.covered, report.removals) == (1, 4)
    assert report.in_flight == ["transcripts/d1", "transcripts/d2", "transcripts/d3"]
    assert report.partial == ["transcripts/d1"]

    # The promise kept: everything removed is gone, the checkpoint at the end, the live ones untouched.
    for item in gone[1:]:
        player.erase(item)
    player.checkpoint(removals[-1])
    checker.full(gone, kept, before).assert_ok()

    # Now break it every way at once.
    s3, dynamodb = player.s3, player.dynamodb
    BackendSeeder().put_object(TRANSCRIPTS, "acct-1/d0/captions.vtt", b"resurrected")  # a leftover version
    BackendSeeder().put_object(TRANSCRIPTS, "acct-1/d1/transcript.txt", b"again")
    s3.delete_object(Bucket=TRANSCRIPTS, Key="acct-1/d1/transcript.txt")  # a delete marker over it
    [version] = s3.list_object_versions(Bucket=TRANSCRIPTS, Prefix="acct-1/d1/transcript.txt")["Versions"]
    s3.delete_object(Bucket=TRANSCRIPTS, Key=version["Key"], VersionId=version["VersionId"])  # marker stays
    BackendSeeder().put_item(
        "speech_outputs", {"transcript_id": {"S": "d2"}, "output_type": {"S": "translation"}}
    )
    BackendSeeder().put_object(
        TRANSCRIPTS, "acct-1/l0/captions.srt", b"altered"
    )  # a new version of a live object
    dynamodb.update_item(
        TableName="llm_requests",
        Key={"request_id": {"S": "l1#llm0"}},
        UpdateExpression="SET output_url = :u",
        ExpressionAttributeValues={":u": {"S": "s3://elsewhere/x"}},
    )
    report = checker.full(gone, kept, before)
    assert _found(report) == {
        ("left_behind", "transcripts/d0"),
        ("left_behind", "transcripts/d1"),
        ("left_behind", "transcripts/d2"),
        ("touched", "transcripts/l0"),
        ("touched", "transcripts/l1"),
        ("checkpoint_ahead", "transcripts/d0"),
        ("checkpoint_ahead", "transcripts/d1"),
        ("checkpoint_ahead", "transcripts/d2"),
        ("unresolved", "transcripts/d0"),
        ("unresolved", "transcripts/d1"),
        ("unresolved", "transcripts/d2"),
    }, str(report)
    details = "\n".join(v.detail for v in report.violations)
    assert "s3://stt-transcripts/acct-1/d0/captions.vtt version" in details
    assert "s3://stt-transcripts/acct-1/d1/transcript.txt version" in details
    assert "(delete marker)" in details
    assert 'speech_outputs {"output_type": {"S": "translation"}, "transcript_id": {"S": "d2"}}' in details
    assert "new or changed s3://stt-transcripts/acct-1/l0/captions.srt version" in details
    assert 'llm_requests {"request_id": {"S": "l1#llm0"}} changed' in details


async def test_a_checkpoint_moved_past_an_undeleted_item_is_reported_unless_a_dead_letter_names_it(
    world: tuple[list[Transcript], list[Transcript], Any], endpoint: str
) -> None:
    deleted, live, session = world
    gone, kept = [tracked_transcript(t) for t in deleted], [tracked_transcript(t) for t in live]
    checker = Checker(endpoint, [*gone, *kept], bulk_at=1)
    player = Player(session, endpoint)
    before = checker.snapshot(kept)
    removals = checker.removals()
    for item in (gone[0], gone[1], gone[3]):
        player.erase(item)
    player.checkpoint(removals[1])
    checker.checkpoints().assert_ok()  # d2 is after the checkpoint: still to do

    player.checkpoint(removals[2])  # past d2, whose artifacts are all there
    report = checker.checkpoints()
    assert _found(report) == {("checkpoint_ahead", "transcripts/d2")}, str(report)
    [violation] = report.violations
    assert f"REMOVE record {removals[2].sequence_number}" in violation.detail
    assert "s3://stt-llm-gateway/acct-1/d2#llm0/input.json" in violation.detail

    player.dead_letter(removals[2])  # its work durably handed to an operator instead
    checker.checkpoints().assert_ok()
    player.checkpoint(removals[3])
    assert _found(checker.full(gone, kept, before)) == {("left_behind", "transcripts/d2")}
    checker.full(gone, kept, before, expect_gone=False).assert_ok()
