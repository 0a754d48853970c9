"""``reconciler dead-letters``: list, show, redrive, resolve and purge the worker's dead letters.

Every command reads the dead-letter table through its index (never a scan), with the settings ``run`` and
``init-tables`` use (flags, then ``RECONCILER_*`` variables). Output names identifiers, S3 URIs and reasons:
a letter holds no image content, so none can be printed.

Exit codes: 0 done; 1 AWS failed, or a redrive left work (failed, or a letter it cannot redrive); 2 a usage
or configuration mistake (no such letter, a kind that is never redriven); 3 something was refused as unsafe
(a target outside its scope, an item written again).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import decimal
import json
import os
import re
import sys
import typing
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.errors import ConfigError
from reconciler.ports import DeadLetter, LetterKind

if TYPE_CHECKING:
    import argparse

    from reconciler.adapters.aws import AwsClients
    from reconciler.ports import DeadLetterStore
    from reconciler.redrive import Redriven
    from reconciler.settings import Settings

LETTER_KINDS: tuple[LetterKind, ...] = typing.get_args(LetterKind)
STATUSES = ("pending", "resolved", "all")
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNSAFE = 3
_DURATION = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}

SettingsFrom = Callable[..., "Settings"]


def dead_letters(args: argparse.Namespace, settings_from: SettingsFrom) -> int:
    """Run one ``dead-letters`` action; ``settings_from(args, **fixed)`` builds ``Settings`` as the CLI does
    (flags, then ``RECONCILER_*`` variables)."""
    from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415 - botocore stays lazy

    from reconciler.observability.logs import configure_logging  # noqa: PLC0415

    redrive = args.action == "redrive"  # only redrive needs the rules
    settings = settings_from(args) if redrive else settings_from(args, config=Path(os.devnull))
    configure_logging(json=settings.log_json, level=settings.log_level)  # events to stderr, answers to stdout
    try:
        return asyncio.run(_ACTIONS[args.action](args, settings))
    except (BotoCoreError, ClientError) as exc:  # no endpoint, no credentials: briefly
        print(f"reconciler: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def parse_duration(text: str) -> dt.timedelta:
    """``30d``, ``12h``, ``45m``, ``90s`` or ``2w``."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ConfigError(f"{text!r} is not a duration such as 30d, 12h or 45m")
    return dt.timedelta(**{_UNITS[match[2]]: int(match[1])})


def parse_since(text: str, now: dt.datetime) -> dt.datetime:
    """An ISO 8601 time (UTC unless it names an offset), or an age such as ``12h`` meaning that long ago."""
    if _DURATION.fullmatch(text.strip()):
        return now - parse_duration(text)
    try:
        at = dt.datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise ConfigError(f"--since {text!r} is neither an ISO time nor an age such as 12h") from exc
    return at if at.tzinfo is not None else at.replace(tzinfo=dt.UTC)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _store(clients: AwsClients, settings: Settings) -> DeadLetterStore:
    from reconciler.adapters.aws import Caller, RetryPolicy  # noqa: PLC0415 - botocore stays lazy
    from reconciler.adapters.letters import DynamoDBDeadLetterStore  # noqa: PLC0415

    return DynamoDBDeadLetterStore(clients.dynamodb, Caller(RetryPolicy()), settings.dead_letter_table)


def _clients(settings: Settings) -> AwsClients:
    from reconciler.adapters.aws import AwsClients, AwsSettings  # noqa: PLC0415 - botocore stays lazy

    aws = AwsSettings.of(settings)
    return AwsClients(aws)


async def _list(args: argparse.Namespace, settings: Settings) -> int:
    since = parse_since(args.since, _now()) if args.since else None
    status = None if args.status == "all" else args.status
    async with _clients(settings) as clients:
        found = _store(clients, settings).list(kind=args.kind, since=since, status=status)
        if args.json:
            print(json.dumps([letter_json(letter) async for letter in found], indent=2))
            return 0
        async for letter in found:
            print(letter_line(letter))
    return 0


async def _show(args: argparse.Namespace, settings: Settings) -> int:
    async with _clients(settings) as clients:
        letter = await _store(clients, settings).get(args.letter_id)
    if letter is None:
        print(f"reconciler: no dead letter has id {args.letter_id!r}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(letter_json(letter), indent=2) if args.json else letter_text(letter))
    return 0


async def _resolve(args: argparse.Namespace, settings: Settings) -> int:
    """Mark a letter resolved by hand, once a person dealt with it (a refusal reviewed, a gap swept)."""
    async with _clients(settings) as clients:
        store = _store(clients, settings)
        letter = await store.get(args.letter_id)
        if letter is None:
            print(f"reconciler: no dead letter has id {args.letter_id!r}", file=sys.stderr)
            return EXIT_USAGE
        if letter.status == "resolved" or not await store.resolve(args.letter_id, _now()):
            print(f"resolved already: {args.letter_id}")
            return 0
    print(f"resolved: {args.letter_id}")
    return 0


async def _purge(args: argparse.Namespace, settings: Settings) -> int:
    cut = _now() - parse_duration(args.older_than)
    async with _clients(settings) as clients:
        purged = await _store(clients, settings).purge_resolved(cut)
    print(f"purged {purged} letters resolved before {_time(cut)}")
    return 0


async def _redrive(args: argparse.Namespace, settings: Settings) -> int:
    from prometheus_client import CollectorRegistry  # noqa: PLC0415 - botocore and friends stay lazy

    from reconciler.adapters.aws import Caller, RetryPolicy  # noqa: PLC0415
    from reconciler.adapters.dynamodb import DynamoDBItemStore  # noqa: PLC0415
    from reconciler.adapters.receipts import DynamoDBReceiptStore  # noqa: PLC0415
    from reconciler.adapters.s3 import S3ArtifactStore  # noqa: PLC0415
    from reconciler.execution import Executor  # noqa: PLC0415
    from reconciler.observability.metrics import Metrics  # noqa: PLC0415
    from reconciler.receipts import ReceiptWriter  # noqa: PLC0415
    from reconciler.redrive import NOT_REDRIVABLE, Redriver  # noqa: PLC0415
    from reconciler.rules import load_rules  # noqa: PLC0415

    if args.kind in NOT_REDRIVABLE:
        raise ConfigError(f"{args.kind} letters are not redriven: {NOT_REDRIVABLE[args.kind]}")
    rules = load_rules(settings.config).compile()
    call = Caller(RetryPolicy())
    metrics = Metrics(CollectorRegistry())
    async with _clients(settings) as clients:
        items = DynamoDBItemStore(clients.dynamodb, call)
        artifacts = S3ArtifactStore(clients.s3, call)
        executor = Executor(
            rules, artifacts, items, metrics, dry_run=settings.dry_run, fanout=settings.record_fanout
        )
        # A dry run deletes nothing: it writes no receipt.
        receipts = None
        if not settings.dry_run:
            store = DynamoDBReceiptStore(
                clients.dynamodb, call, settings.receipt_table, settings.receipt_retention_days
            )
            receipts = ReceiptWriter(store, artifacts, items, rules, metrics, _now)
        redriver = Redriver(
            rules=rules,
            store=_store(clients, settings),
            executor=executor,
            items=items,
            metrics=metrics,
            clock=_now,
            dry_run=settings.dry_run,
            receipts=receipts,
        )
        ids = [args.letter_id] if args.letter_id else await redriver.pending(args.kind)
        if not ids:
            print(f"no pending {args.kind} letters")
        outcomes = [await redriver.redrive(letter_id) for letter_id in ids]
        for outcome in outcomes:
            print(redriven_text(outcome))
    return exit_code(outcomes)


def exit_code(outcomes: list[Redriven]) -> int:
    """The worst outcome decides: refused (3) before a usage mistake (2) before work left (1)."""
    from reconciler.redrive import Verdict  # noqa: PLC0415

    verdicts = {o.verdict for o in outcomes}
    if Verdict.REFUSED in verdicts:
        return EXIT_UNSAFE
    if Verdict.MISSING in verdicts:
        return EXIT_USAGE
    return EXIT_FAILURE if verdicts & {Verdict.FAILED, Verdict.NOT_REDRIVABLE} else 0


_ACTIONS: Mapping[str, Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]]] = {
    "list": _list,
    "show": _show,
    "redrive": _redrive,
    "resolve": _resolve,
    "purge-resolved": _purge,
}


# --- output: identifiers, S3 URIs and reasons only --------------------------------------------------------


def _time(at: dt.datetime | None) -> str:
    return at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if at is not None else "-"


def _key(key: Mapping[str, object]) -> str:
    return ",".join(f"{name}={_plain(value)}" for name, value in key.items()) or "-"


def letter_line(letter: DeadLetter) -> str:
    """One line: id, kind, created, status, item table, item key, how many targets."""
    fields = (letter.letter_id, letter.kind, _time(letter.created_at), letter.status)
    return "  ".join(
        (*fields, letter.item_table or "-", _key(letter.item_key), f"{len(letter.targets)} targets")
    )


def letter_text(letter: DeadLetter) -> str:
    from reconciler.redrive import NOT_REDRIVABLE  # noqa: PLC0415

    lines = [
        f"letter:    {letter.letter_id}",
        f"kind:      {letter.kind} ({letter.cause or 'no cause'})",
        f"status:    {letter.status}"
        + (f" (resolved {_time(letter.resolved_at)})" if letter.resolved_at else ""),
        f"created:   {_time(letter.created_at)}",
        f"record:    {letter.source_table} {letter.shard_id} {letter.sequence_number}",
        f"item:      {letter.item_table or '-'} {_key(letter.item_key)}",
        f"reason:    {letter.reason}",
    ]
    if letter.attempts:
        lines.append(
            f"attempts:  {letter.attempts}, {_time(letter.first_attempt)} to {_time(letter.last_attempt)}"
        )
    why = NOT_REDRIVABLE.get(letter.kind) or (None if letter.plan else "no plan stored")
    lines.append(f"redrive:   {'no, ' + why if why else 'yes'}")
    lines += [f"  target   {target}" for target in letter.targets]
    return "\n".join(lines)


def letter_json(letter: DeadLetter) -> dict[str, object]:
    return {
        "letter_id": letter.letter_id,
        "kind": letter.kind,
        "status": letter.status,
        "created_at": _time(letter.created_at),
        "resolved_at": _time(letter.resolved_at) if letter.resolved_at else None,
        "source_table": letter.source_table,
        "stream_arn": letter.stream_arn,
        "shard_id": letter.shard_id,
        "sequence_number": letter.sequence_number,
        "event_id": letter.event_id,
        "cause": letter.cause,
        "reason": letter.reason,
        "item_table": letter.item_table,
        "item_key": _plain(letter.item_key),
        "targets": list(letter.targets),
        "attempts": letter.attempts,
        "first_attempt": _time(letter.first_attempt) if letter.first_attempt else None,
        "last_attempt": _time(letter.last_attempt) if letter.last_attempt else None,
        "plan": _plain(letter.plan.to_data()) if letter.plan else None,
    }


def redriven_text(outcome: Redriven) -> str:
    tally = outcome.tally
    counts = f" [versions {tally.object_versions}, markers {tally.delete_markers}, items {tally.items}]"
    line = f"{outcome.verdict.value}: {outcome.letter_id} ({outcome.kind}): {outcome.detail}"
    planned = [f"  would delete {p.kind} {p.where} {p.what}" for p in outcome.planned]
    return "\n".join(
        [line + (counts if tally.object_versions or tally.items or tally.delete_markers else ""), *planned]
    )


def _plain(value: object) -> object:
    """JSON-safe: numbers as numbers (exact integers) or text, binary as base64."""
    match value:
        case decimal.Decimal() if value == value.to_integral_value():
            return int(value)
        case decimal.Decimal():
            return str(value)
        case bytes():
            return base64.b64encode(value).decode()
        case Mapping():
            return {str(k): _plain(v) for k, v in value.items()}
        case list() | tuple():
            return [_plain(v) for v in value]
        case _:
            return value
