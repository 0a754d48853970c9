"""``reconciler``: run the worker, dry-run a plan, print the rules schema or the IAM policy, create the
worker's tables, work with its dead letters, or run the embedded demo."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from reconciler import __version__
from reconciler.confirm import show_receipt, verify_deletion
from reconciler.errors import ConfigError, DecodeError, ReconcilerError
from reconciler.letters import LETTER_KINDS, STATUSES, dead_letters
from reconciler.preflight import PreflightError
from reconciler.rules import Rules, load_rules

if TYPE_CHECKING:
    from reconciler.core.spec import RuleSet
    from reconciler.dry_run import Entry
from reconciler.settings import Settings, unknown_variables

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNSAFE = 3
EXIT_PREFLIGHT = 4


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reconciler",
        description="Delete everything linked to a DynamoDB item when its TTL expires or its owner asks.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run",
        help="consume the configured streams and delete what is linked",
        description="Every setting is a flag and a RECONCILER_* variable; a flag wins over its variable.",
    )
    add_settings_flags(run, Settings.model_fields)

    _add_plan(commands)
    _add_sweep(commands)

    commands.add_parser("schema", help="print the JSON Schema of the rules file")
    _add_iam_policy(commands)
    _add_init_tables(commands)
    _add_dead_letters(commands)
    _add_receipt(commands)
    _add_verify(commands)

    demo = commands.add_parser(
        "demo", help="run the worker against an embedded speech-to-text layout on moto"
    )
    demo.add_argument("--transcripts", type=int, default=40, help="how many transcripts to create")
    return parser


AWS_FLAGS = ("endpoint_url", "region", "tls_policy")
"""The settings of a command that calls AWS without running the worker."""


def add_settings_flags(parser: argparse.ArgumentParser, fields: Iterable[str]) -> None:
    """One flag per setting, generated from the ``Settings`` model, so flags and variables cannot drift
    apart. Values stay text here: the model parses and checks them, and its errors name flag and variable."""
    for name in fields:
        field = Settings.model_fields[name]
        flag = "--" + name.replace("_", "-")
        default = "" if field.is_required() or field.default is None else f"; default: {field.default}"
        help_text = f"{field.description or name.replace('_', ' ')} (RECONCILER_{name.upper()}{default})"
        if field.annotation in {bool, bool | None}:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            parser.add_argument(flag, dest=name, metavar=name.upper(), help=help_text)


def settings_from(args: argparse.Namespace, **fixed: Any) -> Settings:
    """The settings of a command: its flags, then ``RECONCILER_*`` variables (and ``AWS_REGION``), then
    defaults; ``fixed`` values are the command's own."""
    given = {n: v for n in Settings.model_fields if (v := getattr(args, n, None)) is not None}
    return _settings(fixed | given)


def _add_table_flags(parser: argparse.ArgumentParser) -> None:
    for flag, field in (
        ("--checkpoint-table", "checkpoint_table"),
        ("--dead-letter-table", "dead_letter_table"),
        ("--receipt-table", "receipt_table"),
    ):
        default = str(Settings.model_fields[field].default)
        parser.add_argument(flag, default=default, help=f"default: {default}")


PLAN_HELP = """Print what a deletion would do, without deleting anything.

INPUT (a file, or - for stdin) is DynamoDB JSON: a bare old image, `aws dynamodb get-item` output, one
stream record (GetRecords or Lambda spelling), or a whole Lambda event or GetRecords response. Records are
classified as the worker would (ignored, filtered by the cascade rules, deleted for a cause).

With --resolve it makes the same read-only calls a real run makes (ListObjectVersions for objects and
prefixes, Query and GetItem for links) and prints every version, delete marker and linked item a real run
would delete, and what it would refuse and why, linked items' included.

exit codes: 0 nothing refused; 3 something refused (a target outside its scope, an unusable identifier,
a record a real run would dead-letter); 2 bad input or rules; 1 AWS refused (--resolve)."""


def _add_plan(commands: Any) -> None:
    plan = commands.add_parser(
        "plan",
        help="dry run: what a deletion would touch (exit 3 if something is refused)",
        description=PLAN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    plan.add_argument("input", nargs="?", help="DynamoDB JSON file, or - for stdin")
    plan.add_argument("--config", type=Path, required=True, help="rules file")
    plan.add_argument("--image", type=Path, help="same as INPUT (earlier spelling)")
    plan.add_argument("--table", help="the input's table when no record names it (default: the first source)")
    plan.add_argument(
        "--resolve", action="store_true", help="list what would be deleted (read-only AWS calls)"
    )
    plan.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_settings_flags(plan, AWS_FLAGS)  # for --resolve


def _add_sweep(commands: Any) -> None:
    sweep = commands.add_parser(
        "sweep",
        help="one expiry-enforcement pass: delete items past their TTL plus the grace, and what is linked",
        description="Segments another replica is sweeping are skipped. Every setting is a flag, as for run.",
    )
    sweep.add_argument("--once", action="store_true", required=True, help="one pass, then exit")
    which = sweep.add_mutually_exclusive_group()
    which.add_argument("--expired", action="store_true", help="no grace: every item whose TTL has passed")
    which.add_argument(
        "--orphans",
        action="store_true",
        help="the orphan sweep instead: delete old objects whose every owner item is gone",
    )
    which.add_argument(
        "--age",
        action="store_true",
        help="the age rules instead: delete objects past their rule's age, for the accounts it lists",
    )
    add_settings_flags(sweep, Settings.model_fields)


def _add_iam_policy(commands: Any) -> None:
    iam = commands.add_parser("iam-policy", help="print the worker's least-privilege IAM policy (JSON)")
    iam.add_argument("--config", type=Path, required=True, help="rules file")
    iam.add_argument("--account-id", required=True, help="AWS account of the tables")
    iam.add_argument("--region", required=True, help="AWS Region of the tables")
    iam.add_argument("--partition", default="aws", help="ARN partition (default: aws)")
    # Flags only, not RECONCILER_* variables: the same command prints the same policy anywhere.
    _add_table_flags(iam)


def _add_init_tables(commands: Any) -> None:
    init = commands.add_parser("init-tables", help="create the worker's own tables if missing (local, tests)")
    # Unset flags fall back to the RECONCILER_* variables, so the tables are the ones `run` will use.
    add_settings_flags(init, (*AWS_FLAGS, "checkpoint_table", "dead_letter_table", "receipt_table"))


def _add_dead_letters(commands: Any) -> None:
    letters = commands.add_parser(
        "dead-letters",
        help="list, show, redrive, resolve or purge the worker's dead letters",
        description="Exit codes: 0 done; 1 AWS failed or a redrive left work; 2 usage (no such letter, a kind"
        " that is never redriven); 3 something refused as unsafe (out of scope, the item written again).",
    )
    actions = letters.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="one line per letter (by kind, then oldest first)")
    listing.add_argument("--kind", choices=LETTER_KINDS)
    listing.add_argument("--since", help="ISO time (UTC unless it names an offset), or an age: 12h, 30d")
    listing.add_argument("--status", choices=STATUSES, default="pending", help="default: pending")
    show = actions.add_parser("show", help="one letter, its reason, targets and whether it can be redriven")
    show.add_argument("letter_id", metavar="ID")
    for parser in (listing, show):
        parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    redrive = actions.add_parser("redrive", help="carry out a letter's stored plan again, then resolve it")
    which = redrive.add_mutually_exclusive_group(required=True)
    which.add_argument("letter_id", metavar="ID", nargs="?")
    which.add_argument("--kind", choices=LETTER_KINDS, help="every pending letter of this kind")
    # The worker's own dry_run setting: RECONCILER_DRY_RUN=true (a shadow pod) makes a redrive a dry run too.
    add_settings_flags(redrive, ("config", "dry_run", "receipt_table"))
    resolve = actions.add_parser("resolve", help="mark a letter resolved after a person dealt with it")
    resolve.add_argument("letter_id", metavar="ID")
    purge = actions.add_parser("purge-resolved", help="delete letters resolved longer ago than DURATION")
    purge.add_argument("--older-than", required=True, metavar="DURATION", help="e.g. 30d, 12h")
    for parser in (listing, show, redrive, resolve, purge):
        add_settings_flags(parser, (*AWS_FLAGS, "dead_letter_table"))


KEY_HELP = 'the item\'s key: its key hash, or JSON of its key attributes ({"transcript_id": "tr-1"})'


def _add_receipt(commands: Any) -> None:
    receipt = commands.add_parser(
        "receipt",
        help="print the receipt of a deleted item as JSON (exit 1 if there is none)",
        description="Print the receipt the worker wrote when it deleted everything linked to an item.",
    )
    receipt.add_argument("--table", required=True, help="the item's source table")
    receipt.add_argument("--key", required=True, help=KEY_HELP)
    add_settings_flags(receipt, (*AWS_FLAGS, "receipt_table"))


def _add_verify(commands: Any) -> None:
    verify = commands.add_parser(
        "verify",
        help="re-check a deleted item's targets live, read-only (exit 5 on a leftover)",
        description="List the receipt's S3 keys and prefixes again and read its linked items' keys again;"
        " print each one found. Exit 0 when all are absent, 5 on a leftover, 1 when there is no receipt.",
    )
    verify.add_argument("--table", required=True, help="the item's source table")
    verify.add_argument("--key", required=True, help=KEY_HELP)
    add_settings_flags(verify, (*AWS_FLAGS, "receipt_table"))


def _schema(_: argparse.Namespace) -> int:
    print(json.dumps(Rules.model_json_schema(), indent=2))
    return 0


def _receipt(args: argparse.Namespace) -> int:
    return show_receipt(settings_from(args, config=Path(os.devnull)), args.table, args.key)


def _verify(args: argparse.Namespace) -> int:
    return verify_deletion(settings_from(args, config=Path(os.devnull)), args.table, args.key)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, DecodeError) as exc:
        print(f"reconciler: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PreflightError as exc:  # a resource missing, unusable or not permitted: named, one per line
        print(f"reconciler: {exc}", file=sys.stderr)
        return EXIT_PREFLIGHT
    except ReconcilerError as exc:  # AWS refused or failed at start: one line, never a traceback
        print(f"reconciler: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def _exit_before_start(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _run(args: argparse.Namespace) -> int:
    # As PID 1 in a container, a signal without a handler is ignored: until the worker installs its
    # two-phase handlers, SIGTERM ends the process at once (nothing has been claimed yet).
    signal.signal(signal.SIGTERM, _exit_before_start)
    from reconciler.app import build_worker  # noqa: PLC0415 - keeps `plan` and `schema` free of aiobotocore
    from reconciler.observability.logs import configure_logging  # noqa: PLC0415

    settings = settings_from(args)
    configure_logging(json=settings.log_json, level=settings.log_level)
    warn_unknown_variables(os.environ)
    rules = load_rules(settings.config)

    async def serve() -> None:
        async with build_worker(settings, rules) as worker:
            worker.install_signal_handlers()
            await worker.run()

    try:
        asyncio.run(serve())
    except ReconcilerError:
        raise
    except Exception as exc:  # noqa: BLE001 - a bug: one event with types and frames (no values), exit 1
        import structlog  # noqa: PLC0415

        structlog.get_logger("reconciler.cli").exception("worker.crashed", error_type=type(exc).__name__)
        return EXIT_FAILURE
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from reconciler.observability.logs import configure_logging  # noqa: PLC0415 - aiobotocore stays lazy
    from reconciler.sweep_once import (  # noqa: PLC0415 - aiobotocore stays lazy
        age_text,
        orphans_text,
        sweep_age,
        sweep_once,
        sweep_orphans,
        to_text,
    )

    settings = settings_from(args)  # --dry-run is the setting's flag: RECONCILER_DRY_RUN holds here too
    configure_logging(json=settings.log_json, level=settings.log_level)
    if args.orphans:
        found = asyncio.run(sweep_orphans(settings, load_rules(settings.config), dry_run=settings.dry_run))
        print(orphans_text(found, dry_run=settings.dry_run))
        return 0
    if args.age:
        aged = asyncio.run(sweep_age(settings, load_rules(settings.config), dry_run=settings.dry_run))
        print(age_text(aged, dry_run=settings.dry_run))
        return 0
    report = asyncio.run(
        sweep_once(settings, load_rules(settings.config), dry_run=settings.dry_run, expired=args.expired)
    )
    print(to_text(report, dry_run=settings.dry_run))
    return 0


def _iam_policy(args: argparse.Namespace) -> int:
    from reconciler.iam import policy  # noqa: PLC0415 - only this command needs it

    document = policy(
        load_rules(args.config),
        account_id=args.account_id,
        region=args.region,
        partition=args.partition,
        checkpoint_table=args.checkpoint_table,
        dead_letter_table=args.dead_letter_table,
        receipt_table=args.receipt_table,
    )
    print(json.dumps(document, indent=2))
    return 0


def _init_tables(args: argparse.Namespace) -> int:
    from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415 - botocore stays lazy

    from reconciler.adapters.aws import AwsClients, AwsSettings  # noqa: PLC0415
    from reconciler.adapters.tables import create_worker_tables  # noqa: PLC0415

    # The same settings as `run` (flags, then RECONCILER_* and AWS_REGION); the rules file plays no part here.
    settings = settings_from(args, config=Path(os.devnull))
    aws = AwsSettings.of(settings)

    async def create() -> dict[str, bool]:
        async with AwsClients(aws) as clients:
            return await create_worker_tables(
                clients.dynamodb,
                settings.checkpoint_table,
                settings.dead_letter_table,
                receipts=settings.receipt_table,
            )

    try:
        tables = asyncio.run(create())
    except ConfigError:
        raise  # no Region, say: a configuration mistake (exit 2)
    except (BotoCoreError, ClientError, ReconcilerError) as exc:  # no endpoint, access denied: briefly
        print(f"reconciler: cannot create the tables: {exc}", file=sys.stderr)
        return 1
    for name, created in tables.items():
        print(f"{'created' if created else 'exists'}: {name}")
    return 0


def warn_unknown_variables(environ: Mapping[str, str]) -> None:
    """Say which ``RECONCILER_*`` variables no setting reads, by name (never the value)."""
    import structlog  # noqa: PLC0415 - configured by then

    for name, closest in unknown_variables(environ):
        structlog.get_logger("reconciler.cli").warning(
            "settings.unknown_variable", variable=name, did_you_mean=closest
        )


def _settings(values: dict[str, Any]) -> Settings:
    try:
        return Settings(**values)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            field = str(error["loc"][0]) if error["loc"] else "settings"
            name = f"--{field.replace('_', '-')} / RECONCILER_{field.upper()}"
            problems.append(f"{name}: {error['msg']}")
        raise ConfigError("invalid settings: " + "; ".join(problems)) from exc


def _read_input(source: str) -> object:
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
        return json.loads(text)
    except OSError as exc:
        raise DecodeError(f"cannot read {source}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise DecodeError(f"{source} is not UTF-8 text (byte {exc.start})") from exc
    except (json.JSONDecodeError, RecursionError) as exc:  # RecursionError: nested beyond any real item
        raise DecodeError(f"{source} is not JSON that DynamoDB could hold: {exc}") from exc


def _plan(args: argparse.Namespace) -> int:
    from reconciler.core.inputs import read_inputs  # noqa: PLC0415 - only this command needs them
    from reconciler.dry_run import plan_inputs, to_json, to_text  # noqa: PLC0415

    source = args.input or (str(args.image) if args.image else None)
    if source is None:
        raise ConfigError("plan needs an INPUT file (or - for stdin)")
    rules = load_rules(args.config)
    spec = rules.compile()
    entries = plan_inputs(spec, read_inputs(_read_input(source)), args.table or rules.sources[0])
    if args.resolve:
        asyncio.run(_resolve(args, spec, entries))
    print(json.dumps(to_json(entries), indent=2) if args.json else to_text(entries))
    if any(entry.errors for entry in entries):
        return EXIT_FAILURE
    return EXIT_UNSAFE if any(entry.refuses for entry in entries) else 0


async def _resolve(args: argparse.Namespace, spec: RuleSet, entries: list[Entry]) -> None:
    from prometheus_client import CollectorRegistry  # noqa: PLC0415 - botocore and friends stay lazy

    from reconciler.adapters.aws import AwsClients, AwsSettings, Caller, RetryPolicy  # noqa: PLC0415
    from reconciler.adapters.dynamodb import DynamoDBItemStore  # noqa: PLC0415
    from reconciler.adapters.s3 import S3ArtifactStore  # noqa: PLC0415
    from reconciler.dry_run import resolve_entries  # noqa: PLC0415
    from reconciler.execution import Executor  # noqa: PLC0415
    from reconciler.observability.metrics import Metrics  # noqa: PLC0415

    settings = settings_from(args)
    call = Caller(RetryPolicy())
    aws = AwsSettings.of(settings)
    async with AwsClients(aws) as clients:
        executor = Executor(
            spec,
            S3ArtifactStore(clients.s3, call),
            DynamoDBItemStore(clients.dynamodb, call),
            Metrics(CollectorRegistry()),
            dry_run=True,
        )
        await resolve_entries(entries, executor)


def _demo(transcripts: int) -> int:
    try:
        from reconciler.demo.run import run_demo  # noqa: PLC0415 - moto is only in the `demo` extra
    except ImportError as exc:
        raise ConfigError("the demo needs moto: pip install 'deletion-reconciler[demo]'") from exc
    return asyncio.run(run_demo(transcripts))


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _run,
    "plan": _plan,
    "sweep": _sweep,
    "schema": _schema,
    "iam-policy": _iam_policy,
    "init-tables": _init_tables,
    "dead-letters": lambda args: dead_letters(args, settings_from),
    "demo": lambda args: _demo(args.transcripts),
    "receipt": _receipt,
    "verify": _verify,
}
"""Each command's handler, by its name on the command line."""
