"""Receipts end to end on moto's HTTP server: the real worker deletes a demo transcript and writes its
receipt, ``GET /deletions`` and ``reconciler receipt`` serve it, and ``reconciler verify`` re-checks it."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import urllib.parse
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from reconciler.adapters.aws import AwsSettings, RetryPolicy
from reconciler.app import build_worker
from reconciler.cli import main
from reconciler.confirm import EXIT_LEFTOVER, EXIT_NONE
from reconciler.core.plan import key_hash
from reconciler.demo.layout import TRANSCRIPTS, UPLOADS, Layout, Transcript, expiry
from reconciler.demo.moto_server import CREDENTIALS, REGION, BackendSeeder, ttl_delete
from reconciler.demo.run import local_settings, rules_path
from reconciler.rules import Rules
from reconciler.settings import Settings
from reconciler.testing import eventually
from reconciler.worker import Worker

pytestmark = pytest.mark.integration

SECRET = "SECRET-TITLE-5b81e2"  # image content that must never reach a receipt
KEY = {"transcript_id": "tr-receipt"}
KEY_JSON = json.dumps(KEY)


@contextlib.asynccontextmanager
async def _running(
    endpoint: str, rules: Rules, registry: CollectorRegistry, **overrides: object
) -> AsyncIterator[Worker]:
    settings = local_settings(endpoint, idle_poll_seconds=0.05, max_idle_poll_seconds=0.2, **overrides)
    aws = AwsSettings(region=REGION, endpoint_url=endpoint, credentials=CREDENTIALS)
    async with build_worker(settings, rules, registry, RetryPolicy(attempts=3), aws) as worker:
        task = asyncio.create_task(worker.run())
        try:
            yield worker
        finally:
            worker.handle_exit()
            await asyncio.wait_for(task, timeout=30)


async def _get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials from the environment, as the CLI reads them; no worker settings set."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", CREDENTIALS[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CREDENTIALS[1])
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    for field in Settings.model_fields:
        monkeypatch.delenv(f"RECONCILER_{field.upper()}", raising=False)


async def _cli(endpoint: str, *argv: str) -> int:
    """A command of the CLI, in a thread (it runs its own event loop), on the moto server."""
    return await asyncio.to_thread(main, [*argv, "--endpoint-url", endpoint, "--region", REGION])


async def test_a_deleted_transcript_gets_a_verified_receipt_served_over_http_and_by_the_cli(
    endpoint: str,
    layout: Layout,
    rules: Rules,
    cli_env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    transcript = Transcript("acct-1", KEY["transcript_id"], expiry(dt.datetime.now(dt.UTC), -600))
    await layout.add([transcript], seed=BackendSeeder())
    await layout.dynamodb.update_item(
        TableName="transcripts",
        Key={"transcript_id": {"S": transcript.transcript_id}},
        UpdateExpression="SET title = :t",
        ExpressionAttributeValues={":t": {"S": SECRET}},
    )
    registry = CollectorRegistry()
    hashed = key_hash("transcripts", KEY)
    receipts = "reconciler_receipts_total"

    async with _running(endpoint, rules, registry) as worker:
        ttl_delete("transcripts", {"transcript_id": {"S": transcript.transcript_id}})
        await eventually(
            lambda: (
                (registry.get_sample_value(receipts, {"table": "transcripts", "verification": "verified"}))
                == 1
            ),
            seconds=60,
        )
        base = f"http://127.0.0.1:{worker.http.port if worker.http else 0}/deletions/transcripts/"
        by_hash = await _get(base + hashed)
        by_json = await _get(base + urllib.parse.quote(KEY_JSON, safe=""))
        unknown = await _get(base + urllib.parse.quote('{"transcript_id": "tr-never"}', safe=""))

    assert await layout.remaining(transcript) == 0
    assert by_hash[0] == 200
    assert by_json == by_hash
    assert unknown[0] == 404
    served = json.loads(by_hash[1])
    assert served["key"] == KEY
    assert served["cause"] == "ttl"
    assert served["verification"] == "verified"
    assert served["dead_letter"] is None
    # 2 versions of the audio and of 4 transcript files, 3 outputs, 2x2 LLM objects under their requests'
    # prefixes; 3 outputs and 2 LLM requests.
    assert served["counts"] == {
        "object_versions": 17,
        "delete_markers": 0,
        "under_prefixes": 12,
        "linked_items": 5,
        "absent": 0,
    }
    assert len(served["targets"]["items"]) == 5
    stored = await layout.dynamodb.scan(TableName="reconciler-receipts")
    assert stored["Count"] == 1
    for shown in (by_hash[1], json.dumps(stored["Items"])):
        assert SECRET not in shown
        assert "en-US" not in shown  # the demo items' language attribute: content too

    capsys.readouterr()
    assert await _cli(endpoint, "receipt", "--table", "transcripts", "--key", KEY_JSON) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed) == served
    assert SECRET not in printed
    assert (
        await _cli(endpoint, "receipt", "--table", "transcripts", "--key", '{"transcript_id": "x"}')
        == EXIT_NONE
    )


async def test_verify_fails_on_a_planted_leftover_and_passes_once_it_is_removed(
    endpoint: str,
    layout: Layout,
    rules: Rules,
    cli_env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    transcript = Transcript("acct-2", "tr-verify", expiry(dt.datetime.now(dt.UTC), -600))
    await layout.add([transcript], seed=BackendSeeder())
    registry = CollectorRegistry()
    async with _running(endpoint, rules, registry):
        ttl_delete("transcripts", {"transcript_id": {"S": transcript.transcript_id}})
        await eventually(
            lambda: (
                (
                    registry.get_sample_value(
                        "reconciler_receipts_total", {"table": "transcripts", "verification": "verified"}
                    )
                )
                == 1
            ),
            seconds=60,
        )
    hashed = key_hash("transcripts", {"transcript_id": "tr-verify"})
    verify = ("verify", "--table", "transcripts", "--key", hashed)
    capsys.readouterr()
    assert await _cli(endpoint, *verify) == 0
    assert capsys.readouterr().out.startswith("verified: the ")

    planted = await layout.s3.put_object(Bucket=TRANSCRIPTS, Key="acct-2/tr-verify/late.json", Body=b"{}")
    output = {"transcript_id": {"S": "tr-verify"}, "output_type": {"S": "translation"}}
    await layout.dynamodb.put_item(TableName="speech_outputs", Item=output)
    assert await _cli(endpoint, *verify) == EXIT_LEFTOVER
    lines = capsys.readouterr().out.splitlines()
    assert f"leftover: s3://{TRANSCRIPTS}/acct-2/tr-verify/late.json {planted['VersionId']}" in lines
    assert "leftover: speech_outputs transcript_id=tr-verify, output_type=translation" in lines

    await layout.s3.delete_object(
        Bucket=TRANSCRIPTS, Key="acct-2/tr-verify/late.json", VersionId=planted["VersionId"]
    )
    await layout.dynamodb.delete_item(TableName="speech_outputs", Key=output)
    assert await _cli(endpoint, *verify) == 0
    assert (
        await _cli(endpoint, "verify", "--table", "transcripts", "--key", '{"transcript_id": "x"}')
        == EXIT_NONE
    )


async def test_verify_names_the_leftover_of_a_failed_deletion_and_passes_once_its_letter_is_redriven(
    endpoint: str,
    layout: Layout,
    rules: Rules,
    cli_env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """tr-redo is deleted (a verified receipt), written again, and deleted again while its upload is under
    legal hold: that deletion is dead-lettered as ``failed`` and the first receipt's upload is there again.
    Once the hold is lifted, the redrive finishes the work and the receipt says so."""
    await layout.s3.put_object_lock_configuration(
        Bucket=UPLOADS, ObjectLockConfiguration={"ObjectLockEnabled": "Enabled"}
    )
    transcript = Transcript("acct-3", "tr-redo", expiry(dt.datetime.now(dt.UTC), -600))
    key = {"transcript_id": {"S": transcript.transcript_id}}
    audio = f"{transcript.account_id}/{transcript.transcript_id}/audio.wav"
    registry = CollectorRegistry()
    verify = (
        "verify",
        "--table",
        "transcripts",
        "--key",
        key_hash("transcripts", {"transcript_id": "tr-redo"}),
    )

    seen: list[str] = []  # everything printed and logged

    def sample(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    def said() -> str:
        out, err = capsys.readouterr()
        seen.extend((out, err))
        return out

    await layout.add([transcript], seed=BackendSeeder())
    # moto answers an Object Lock refusal as a key to retry: the second attempt gives up.
    async with _running(endpoint, rules, registry, max_attempts=2, retry_backoff_seconds=0.1) as worker:
        ttl_delete("transcripts", key)
        await eventually(
            lambda: sample("reconciler_receipts_total", table="transcripts", verification="verified") == 1,
            seconds=60,
        )
        await layout.add([transcript], seed=BackendSeeder())  # the same key, written again
        await layout.dynamodb.update_item(
            TableName="transcripts",
            Key=key,
            UpdateExpression="SET title = :t",
            ExpressionAttributeValues={":t": {"S": SECRET}},
        )
        await layout.s3.put_object_legal_hold(Bucket=UPLOADS, Key=audio, LegalHold={"Status": "ON"})
        ttl_delete("transcripts", key)
        await eventually(lambda: sample("reconciler_dead_letters_total", kind="failed") == 1, seconds=60)

        said()
        assert await _cli(endpoint, *verify) == EXIT_LEFTOVER
        lines = said().splitlines()
        assert (
            [line for line in lines if line.startswith("leftover: ")]
            == [line for line in lines if line.startswith(f"leftover: s3://{UPLOADS}/{audio} ")]
            != []
        )

        await layout.s3.put_object_legal_hold(Bucket=UPLOADS, Key=audio, LegalHold={"Status": "OFF"})
        redrive = ("dead-letters", "redrive", "--kind", "failed", "--config", str(rules_path()))
        assert await _cli(endpoint, *redrive) == 0
        redriven = said()
        assert redriven.startswith("resolved: ")
        assert await _cli(endpoint, *verify) == 0
        assert (
            await _cli(endpoint, "receipt", "--table", "transcripts", "--key", '{"transcript_id": "tr-redo"}')
            == 0
        )
        printed = said()
        base = f"http://127.0.0.1:{worker.http.port if worker.http else 0}/deletions/transcripts/"
        status, served = await _get(base + urllib.parse.quote('{"transcript_id": "tr-redo"}', safe=""))

    assert await layout.remaining(transcript) == 0
    receipt = json.loads(printed[printed.index("{") :])
    assert (status, json.loads(served)) == (200, receipt)
    assert receipt["dead_letter"]["kind"] == "failed"
    assert receipt["dead_letter"]["status"] == "redriven"
    assert receipt["verification"] == "verified"
    assert receipt["event"].endswith(receipt["dead_letter"]["id"].split("#")[-2])
    assert f"s3://{UPLOADS}/{audio}" in receipt["targets"]["objects"]
    stored = await layout.dynamodb.scan(TableName="reconciler-receipts")
    said()
    for shown in (served, json.dumps(stored["Items"]), *seen):
        assert SECRET not in shown
