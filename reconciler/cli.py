"""``reconciler``: run the worker, dry-run a plan, print the rules schema or the IAM policy, create the
worker's tables, or run the embedded demo."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from reconciler import __version__
from reconciler.core.dynamodb_json import decode_image
from reconciler.core.plan import DeletionPlan, resolve
from reconciler.errors import ConfigError, DecodeError, ReconcilerError
from reconciler.rules import Rules, load_rules
from reconciler.settings import Settings

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNSAFE = 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reconciler",
        description="Delete everything linked to a DynamoDB item when its TTL expires or its owner asks.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="consume the configured streams and delete what is linked")
    run.add_argument("--config", type=Path, help="rules file (or RECONCILER_CONFIG)")
    run.add_argument(
        "--http-host", help="bind address for /metrics, /healthz, /readyz (RECONCILER_HTTP_HOST)"
    )
    run.add_argument("--http-port", type=int, help="port for the same (RECONCILER_HTTP_PORT)")
    run.add_argument(
        "--create-tables", action="store_true", default=None, help="create the worker's own tables"
    )

    plan = commands.add_parser("plan", help="print the deletion plan for one old image (dry run)")
    plan.add_argument("--config", type=Path, required=True, help="rules file")
    plan.add_argument("--image", type=Path, required=True, help="old image as DynamoDB JSON")
    plan.add_argument("--table", help="the image's table (default: the first source)")

    commands.add_parser("schema", help="print the JSON Schema of the rules file")
    _add_iam_policy(commands)
    _add_init_tables(commands)

    demo = commands.add_parser(
        "demo", help="run the worker against an embedded speech-to-text layout on moto"
    )
    demo.add_argument("--transcripts", type=int, default=40, help="how many transcripts to create")
    return parser


def _table_default(field: str) -> str:
    return str(Settings.model_fields[field].default)


def _add_table_flags(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    for flag, field in (
        ("--checkpoint-table", "checkpoint_table"),
        ("--dead-letter-table", "dead_letter_table"),
    ):
        default = _table_default(field)
        parser.add_argument(
            flag,
            default=default if defaults else None,
            help=f"default: {default}" + ("" if defaults else f" (or RECONCILER_{field.upper()})"),
        )


def _add_iam_policy(commands: Any) -> None:
    iam = commands.add_parser("iam-policy", help="print the worker's least-privilege IAM policy (JSON)")
    iam.add_argument("--config", type=Path, required=True, help="rules file")
    iam.add_argument("--account-id", required=True, help="AWS account of the tables")
    iam.add_argument("--region", required=True, help="AWS Region of the tables")
    iam.add_argument("--partition", default="aws", help="ARN partition (default: aws)")
    # Flags only, not RECONCILER_* variables: the same command prints the same policy anywhere.
    _add_table_flags(iam, defaults=True)


def _add_init_tables(commands: Any) -> None:
    init = commands.add_parser("init-tables", help="create the worker's own tables if missing (local, tests)")
    init.add_argument(
        "--endpoint-url", help="AWS endpoint, e.g. moto or DynamoDB Local (RECONCILER_ENDPOINT_URL)"
    )
    init.add_argument("--region", help="AWS Region (RECONCILER_REGION or AWS_REGION)")
    # Unset flags fall back to the RECONCILER_* variables, so the tables are the ones `run` will use.
    _add_table_flags(init, defaults=False)


def main(argv: Sequence[str] | None = None) -> int:  # noqa: PLR0911 - one return per command
    args = _parser().parse_args(argv)
    try:
        match args.command:
            case "run":
                return _run(args)
            case "plan":
                return _plan(load_rules(args.config), args.image, args.table)
            case "schema":
                print(json.dumps(Rules.model_json_schema(), indent=2))
                return 0
            case "iam-policy":
                return _iam_policy(args)
            case "init-tables":
                return _init_tables(args)
            case "demo":
                return _demo(args.transcripts)
    except (ConfigError, DecodeError) as exc:
        print(f"reconciler: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ReconcilerError as exc:  # AWS refused or failed at start: one line, never a traceback
        print(f"reconciler: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_USAGE  # pragma: no cover - argparse requires a command


def _exit_before_start(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _run(args: argparse.Namespace) -> int:
    # As PID 1 in a container, a signal without a handler is ignored: until the worker installs its
    # two-phase handlers, SIGTERM ends the process at once (nothing has been claimed yet).
    signal.signal(signal.SIGTERM, _exit_before_start)
    from reconciler.app import build_worker  # noqa: PLC0415 - keeps `plan` and `schema` free of aiobotocore
    from reconciler.observability.logs import configure_logging  # noqa: PLC0415

    flags = {"config": args.config, "http_host": args.http_host, "http_port": args.http_port}
    flags["create_tables"] = args.create_tables
    settings = _settings({k: v for k, v in flags.items() if v is not None})
    configure_logging(json=settings.log_json, level=settings.log_level)
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


def _iam_policy(args: argparse.Namespace) -> int:
    from reconciler.iam import policy  # noqa: PLC0415 - only this command needs it

    document = policy(
        load_rules(args.config),
        account_id=args.account_id,
        region=args.region,
        partition=args.partition,
        checkpoint_table=args.checkpoint_table,
        dead_letter_table=args.dead_letter_table,
    )
    print(json.dumps(document, indent=2))
    return 0


def _init_tables(args: argparse.Namespace) -> int:
    from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415 - botocore stays lazy

    from reconciler.adapters.aws import AwsClients, AwsSettings  # noqa: PLC0415
    from reconciler.adapters.tables import create_worker_tables  # noqa: PLC0415

    flags = {
        "endpoint_url": args.endpoint_url,
        "region": args.region,
        "checkpoint_table": args.checkpoint_table,
        "dead_letter_table": args.dead_letter_table,
    }
    # The same settings as `run` (flags, then RECONCILER_* and AWS_REGION); the rules file plays no part here.
    settings = _settings({"config": Path(os.devnull)} | {k: v for k, v in flags.items() if v is not None})
    aws = AwsSettings(region=settings.region, endpoint_url=settings.endpoint_url)

    async def create() -> dict[str, bool]:
        async with AwsClients(aws) as clients:
            return await create_worker_tables(
                clients.dynamodb, settings.checkpoint_table, settings.dead_letter_table
            )

    try:
        tables = asyncio.run(create())
    except (BotoCoreError, ClientError) as exc:  # no credentials, no endpoint, access denied: say so, briefly
        print(f"reconciler: cannot create the tables: {exc}", file=sys.stderr)
        return 1
    for name, created in tables.items():
        print(f"{'created' if created else 'exists'}: {name}")
    return 0


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


def plan_to_json(plan: DeletionPlan) -> dict[str, Any]:
    return {
        "table": plan.table,
        "key": {k: str(v) for k, v in plan.key.items()},
        "scopes": [str(s) for s in plan.scopes],
        "objects": [str(o) for o in plan.objects],
        "prefixes": [str(p) for p in plan.prefixes],
        "links": [
            {"table": q.table, "attribute": q.attribute, "value": str(q.value), "index": q.index}
            for q in plan.links
        ],
        "unsafe": [{"target": u.target, "reason": u.reason.value, "detail": u.detail} for u in plan.unsafe],
    }


def _plan(rules: Rules, image_path: Path, table: str | None) -> int:
    table = table or rules.sources[0]
    if table not in rules.tables:
        raise ConfigError(f"table {table!r} has no rules")
    try:
        raw = json.loads(image_path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DecodeError(f"cannot read image {image_path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise DecodeError(f"image {image_path} is not UTF-8 text (byte {exc.start})") from exc
    except (json.JSONDecodeError, RecursionError) as exc:  # RecursionError: nested beyond any real item
        raise DecodeError(f"image {image_path} is not JSON that DynamoDB could hold: {exc}") from exc
    plan = resolve(rules.compile().tables[table], decode_image(raw))
    print(json.dumps(plan_to_json(plan), indent=2))
    return 0 if plan.is_safe else EXIT_UNSAFE


def _demo(transcripts: int) -> int:
    try:
        from reconciler.demo.run import run_demo  # noqa: PLC0415 - moto is only in the `demo` extra
    except ImportError as exc:
        raise ConfigError("the demo needs moto: pip install 'deletion-reconciler[demo]'") from exc
    return asyncio.run(run_demo(transcripts))
