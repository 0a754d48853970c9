"""``reconciler``: run the worker, dry-run a plan, print the rules schema, or run the embedded demo."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from reconciler import __version__
from reconciler.core.dynamodb_json import decode_image
from reconciler.core.plan import DeletionPlan, resolve
from reconciler.errors import ConfigError, DecodeError
from reconciler.rules import Rules, load_rules

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

    demo = commands.add_parser(
        "demo", help="run the worker against an embedded speech-to-text layout on moto"
    )
    demo.add_argument("--transcripts", type=int, default=40, help="how many transcripts to create")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
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
            case "demo":
                return _demo(args.transcripts)
    except (ConfigError, DecodeError) as exc:
        print(f"reconciler: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_USAGE  # pragma: no cover - argparse requires a command


def _run(args: argparse.Namespace) -> int:
    from reconciler.app import build_worker  # noqa: PLC0415 - keeps `plan` and `schema` free of aiobotocore
    from reconciler.observability.logs import configure_logging  # noqa: PLC0415
    from reconciler.settings import Settings  # noqa: PLC0415

    flags = {"config": args.config, "http_host": args.http_host, "http_port": args.http_port}
    flags["create_tables"] = args.create_tables
    try:
        settings = Settings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(f"invalid settings:\n{exc}") from exc
    configure_logging(json=settings.log_json, level=settings.log_level)
    rules = load_rules(settings.config)

    async def serve() -> None:
        async with build_worker(settings, rules) as worker:
            worker.install_signal_handlers()
            await worker.run()

    asyncio.run(serve())
    return 0


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
    except (OSError, json.JSONDecodeError) as exc:
        raise DecodeError(f"cannot read image {image_path}: {exc}") from exc
    plan = resolve(table, rules.tables[table], decode_image(raw))
    print(json.dumps(plan_to_json(plan), indent=2))
    return 0 if plan.is_safe else EXIT_UNSAFE


def _demo(transcripts: int) -> int:
    try:
        from reconciler.demo.run import run_demo  # noqa: PLC0415 - moto is only in the `demo` extra
    except ImportError as exc:
        raise ConfigError("the demo needs moto: pip install 'deletion-reconciler[demo]'") from exc
    return asyncio.run(run_demo(transcripts))
