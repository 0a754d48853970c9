"""``reconciler dead-letters`` on moto's server: list, show, redrive, resolve and purge, with the worker's own
letters (written by the real processor when a record's retry budget ran out) and its own tables."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from conftest import DEMO_RULES
from prometheus_client import CollectorRegistry

from reconciler.adapters.aws import AwsClients, AwsSettings, Caller, RetryPolicy
from reconciler.adapters.dynamodb import DynamoDBItemStore
from reconciler.adapters.letters import DynamoDBDeadLetterStore
from reconciler.adapters.s3 import S3ArtifactStore
from reconciler.adapters.tables import create_worker_tables
from reconciler.cli import EXIT_UNSAFE, EXIT_USAGE, main
from reconciler.core.dynamodb_json import decode_image
from reconciler.core.outcomes import Pending
from reconciler.core.records import StreamRecord, decode_record
from reconciler.core.scope import S3Location
from reconciler.demo.layout import UPLOADS, Layout, Transcript, changes, items_of
from reconciler.demo.moto_server import CREDENTIALS, REGION, BackendSeeder, reset
from reconciler.execution import Executor
from reconciler.observability.metrics import Metrics
from reconciler.ports import DeadLetter
from reconciler.processing import Attempts, Origin, RecordProcessor
from reconciler.rules import Rules
from reconciler.settings import Settings
from reconciler.testing import stream_record

pytestmark = pytest.mark.integration

PLANTED = "PLANTED-91d2-never-printed"
ORIGIN = Origin(
    "transcripts", "arn:aws:dynamodb:us-east-1:123456789012:table/transcripts/stream/x", "shardId-1"
)
TARGET = Transcript("acct-1", "tr-1", 1_764_000_000)
SIBLING = Transcript("acct-1", "tr-10", 1_764_000_000)  # its prefixes start with tr-1's, without the slash
OTHER = Transcript("acct-2", "tr-9", 1_764_000_000)


@dataclass
class Setup:
    endpoint: str
    layout: Layout
    letters: DynamoDBDeadLetterStore
    processor: RecordProcessor

    async def cli(self, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
        """``reconciler dead-letters ARGV`` in a thread (it runs its own event loop): exit code, stdout."""
        capsys.readouterr()  # what the test printed before
        aws = ["--endpoint-url", self.endpoint, "--region", REGION, "--dead-letter-table", "letters"]
        code = await asyncio.to_thread(main, ["dead-letters", *argv, *aws])
        return code, capsys.readouterr().out

    async def give_up(self, transcript: Transcript, sequence: int) -> DeadLetter:
        """The transcript expired, its record kept failing and was given up: a ``failed`` letter."""
        image = decode_image(items_of(transcript)[0][1]) | {"customer_note": PLANTED}
        await self.layout.dynamodb.delete_item(
            TableName="transcripts", Key={"transcript_id": {"S": transcript.transcript_id}}
        )
        record = decode_record(stream_record(sequence, old_image=image, identity="botocore"))
        assert isinstance(record, StreamRecord)
        now = dt.datetime.now(dt.UTC)
        error = Pending(record.sequence_number, "AWS call failed after retries: SlowDown")
        await self.processor.give_up(ORIGIN, record, error, Attempts(3, now, now))
        (letter,) = [
            x async for x in self.letters.list(kind="failed") if x.sequence_number == record.sequence_number
        ]
        return letter


@pytest.fixture
async def setup(endpoint: str, rules: Rules, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Setup]:
    reset(endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", CREDENTIALS[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CREDENTIALS[1])
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    for field in Settings.model_fields:
        monkeypatch.delenv(f"RECONCILER_{field.upper()}", raising=False)
    aws = AwsSettings(region=REGION, endpoint_url=endpoint, credentials=CREDENTIALS)
    async with AwsClients(aws) as clients:
        layout = Layout(clients.s3, clients.dynamodb)
        await layout.create()
        # A redrive writes the item's receipt (to the default table) before it resolves a letter.
        await create_worker_tables(clients.dynamodb, "checkpoints", "letters", receipts="reconciler-receipts")
        await layout.add([TARGET, SIBLING, OTHER], seed=BackendSeeder())
        call = Caller(RetryPolicy(attempts=3))
        spec, metrics = rules.compile(), Metrics(CollectorRegistry())
        items = DynamoDBItemStore(clients.dynamodb, call)
        letters = DynamoDBDeadLetterStore(clients.dynamodb, call, "letters")
        processor = RecordProcessor(
            rules=spec,
            executor=Executor(spec, S3ArtifactStore(clients.s3, call), items, metrics),
            dead_letters=letters,
            metrics=metrics,
            clock=lambda: dt.datetime.now(dt.UTC),
            items=items,
        )
        yield Setup(endpoint, layout, letters, processor)


async def test_a_failed_letter_is_listed_shown_dry_run_redriven_and_resolved_once(
    setup: Setup, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    letter = await setup.give_up(TARGET, 1)
    before = await setup.layout.remaining(TARGET)
    siblings = await setup.layout.snapshot([SIBLING, OTHER])
    assert before > 0

    code, out = await setup.cli(capsys, "list", "--kind", "failed", "--since", "1h")
    assert code == 0
    (line,) = out.splitlines()
    assert line.startswith(f"{letter.letter_id}  failed  ")
    assert line.endswith(f"  pending  transcripts  transcript_id=tr-1  {len(letter.targets)} targets")
    assert (await setup.cli(capsys, "list", "--since", "2099-01-01T00:00:00"))[1] == ""

    code, out = await setup.cli(capsys, "show", letter.letter_id, "--json")
    shown = json.loads(out)
    assert (code, shown["kind"], shown["status"], shown["plan"]["key"]) == (
        0,
        "failed",
        "pending",
        {"transcript_id": "tr-1"},
    )
    code, out = await setup.cli(capsys, "show", letter.letter_id)
    assert "redrive:   yes" in out
    assert PLANTED not in out + json.dumps(shown)  # a letter holds no image content to print

    code, out = await setup.cli(capsys, "redrive", letter.letter_id, "--dry-run", "--config", str(DEMO_RULES))
    assert code == 0
    assert out.startswith(f"planned: {letter.letter_id} (failed): dry run")
    assert f"  would delete object_version s3://{UPLOADS}/acct-1/tr-1/audio.wav " in out
    assert await setup.layout.remaining(TARGET) == before

    # A shadow pod's RECONCILER_DRY_RUN holds for a redrive too, without the flag.
    monkeypatch.setenv("RECONCILER_DRY_RUN", "true")
    code, out = await setup.cli(capsys, "redrive", letter.letter_id, "--config", str(DEMO_RULES))
    assert (code, out.startswith(f"planned: {letter.letter_id} (failed): dry run")) == (0, True)
    assert await setup.layout.remaining(TARGET) == before
    monkeypatch.delenv("RECONCILER_DRY_RUN")

    code, out = await setup.cli(capsys, "redrive", "--kind", "failed", "--config", str(DEMO_RULES))
    assert code == 0
    assert out.startswith(f"resolved: {letter.letter_id} (failed): every target is gone [versions ")
    assert await setup.layout.remaining(TARGET) == 0  # every version, the linked items and their files
    assert changes(siblings, await setup.layout.snapshot([SIBLING, OTHER])) == 0
    held = await setup.letters.get(letter.letter_id)
    assert held is not None
    assert held.status == "resolved"
    assert held.resolved_at is not None

    code, out = await setup.cli(capsys, "redrive", letter.letter_id, "--config", str(DEMO_RULES))
    assert (code, out.split(":")[0]) == (0, "skipped")
    assert (await setup.cli(capsys, "list"))[1] == ""  # nothing pending
    code, out = await setup.cli(capsys, "list", "--status", "resolved")
    assert [row.split("  ")[3] for row in out.splitlines()] == ["resolved"]


async def test_an_unsafe_tampered_letter_is_refused_by_the_cli_and_stays_pending(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    """Someone changed a stored target to another account's upload: the plan is refused, nothing runs."""
    letter = await setup.give_up(TARGET, 1)
    assert letter.plan is not None
    outside = S3Location(UPLOADS, "acct-2/tr-9/audio.wav")
    await setup.letters.put(
        dataclasses.replace(letter, plan=dataclasses.replace(letter.plan, objects=(outside,)))
    )
    before = await setup.layout.snapshot([TARGET, OTHER])

    code, out = await setup.cli(capsys, "redrive", letter.letter_id, "--config", str(DEMO_RULES))

    assert code == EXIT_UNSAFE
    assert out.startswith(
        f"refused: {letter.letter_id} (failed): plan refused by the scope check, nothing ran: "
    )
    assert f"{outside}: target is outside the item's scope" in out
    assert changes(before, await setup.layout.snapshot([TARGET, OTHER])) == 0
    code, out = await setup.cli(capsys, "list", "--kind", "failed")
    assert "  pending  " in out


async def test_purge_deletes_only_letters_resolved_before_the_cut_off_and_resolve_marks_one(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    now = dt.datetime.now(dt.UTC)
    old, recent, pending = [
        await setup.give_up(t, n) for n, t in enumerate((TARGET, SIBLING, OTHER), start=1)
    ]
    await setup.letters.resolve(old.letter_id, now - dt.timedelta(days=40))
    await setup.letters.resolve(recent.letter_id, now - dt.timedelta(days=2))

    code, out = await setup.cli(capsys, "purge-resolved", "--older-than", "30d")
    assert (code, out.split(" letters")[0]) == (0, "purged 1")
    code, out = await setup.cli(capsys, "list", "--status", "all", "--json")
    assert {row["letter_id"]: row["status"] for row in json.loads(out)} == {
        pending.letter_id: "pending",
        recent.letter_id: "resolved",
    }

    assert (await setup.cli(capsys, "resolve", pending.letter_id)) == (0, f"resolved: {pending.letter_id}\n")
    assert (await setup.cli(capsys, "resolve", pending.letter_id))[1].startswith("resolved already")
    assert (await setup.cli(capsys, "redrive", "--kind", "failed", "--config", str(DEMO_RULES)))[
        1
    ] == "no pending failed letters\n"


@pytest.mark.parametrize(
    "argv",
    [
        ["purge-resolved", "--older-than", "30x"],
        ["list", "--since", "last tuesday"],
        ["redrive", "--kind", "trimmed", "--config", str(DEMO_RULES)],
        ["redrive", "--kind", "failed", "--config", "/nonexistent/rules.toml"],
    ],
)
def test_usage_mistakes_exit_2_before_any_aws_call(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """The endpoint is a closed port: had the command called AWS, it would have failed with exit 1."""
    aws = ["--endpoint-url", "http://127.0.0.1:9", "--region", REGION]
    assert main(["dead-letters", *argv, *aws]) == EXIT_USAGE
    assert capsys.readouterr().err.startswith("reconciler: ")


async def test_a_letter_id_that_names_no_letter_exits_2(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (await setup.cli(capsys, "show", "no-such-letter"))[0] == EXIT_USAGE
    assert (await setup.cli(capsys, "resolve", "no-such-letter"))[0] == EXIT_USAGE
    code, out = await setup.cli(capsys, "redrive", "no-such-letter", "--config", str(DEMO_RULES))
    assert (code, out) == (EXIT_USAGE, "missing: no-such-letter (?): no dead letter has this id\n")
