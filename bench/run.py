"""The benchmark: the reconciler against the usual Lambda pattern and the backend's own ceiling, on moto's
server on loopback, raw and with AWS-like round trips; plus CPU and memory on in-memory fakes.

    .venv/bin/python -m bench.run                # the full run BENCHMARKS.md records (a few minutes)
    .venv/bin/python -m bench.run --smoke        # a few hundred records: checks the script works

Every figure is measured in this run, side by side on the same data; ratios are what to compare across
machines. It prints a table and writes the figures as JSON (``--json``, default bench/results.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.backend import LATENCY, RAW, Backend, Dataset
from bench.contenders import Run, cpu_of, run_ceiling, run_peer, run_reconciler
from bench.inprocess import cpu, memory

MB = 1024 * 1024


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _summary(run: Run, data: Dataset, left: int, damaged: int) -> dict[str, Any]:
    artifacts = data.artifacts
    requests = sum(run.requests.values())
    return {
        "seconds": round(run.seconds, 3),
        "artifacts": artifacts,
        "artifacts_per_second": round(artifacts / run.seconds, 1),
        "item_p50_seconds": round(_percentile(run.item_seconds, 0.5), 3),
        "item_p99_seconds": round(_percentile(run.item_seconds, 0.99), 3),
        "requests": requests,
        "requests_per_artifact": round(requests / artifacts, 3),
        "requests_by_operation": dict(sorted(run.requests.items())),
        "cpu_seconds": round(run.cpu_seconds, 3),
        "cpu_ms_per_artifact": round(1000 * run.cpu_seconds / artifacts, 3),
        "cpu_ms_per_record": round(1000 * run.cpu_seconds / max(run.records, 1), 3),
        "leftover_artifacts": left,
        "live_items_damaged": damaged,
    }


def regime(
    backend: Backend, data: Dataset, delays: dict[str, float], args: argparse.Namespace, label: str
) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for name in ("reconciler", "peer", "ceiling"):
        arn, shard = asyncio.run(backend.prepare(data))
        backend_cpu = cpu_of(backend.pid)
        match name:
            case "reconciler":
                profile = args.profile.with_suffix(f".{label}.txt") if args.profile else None
                run = run_reconciler(backend, data, delays, args.concurrency, profile)
            case "peer":
                run = run_peer(backend, data, delays, arn, shard)
            case _:
                run = run_ceiling(backend, data, delays, arn, shard)
        backend_cpu = cpu_of(backend.pid) - backend_cpu  # before the leftovers check's own requests
        left, damaged = asyncio.run(backend.leftovers(data))
        figures[name] = _summary(run, data, left, damaged)
        # What moto itself spent per request: in one process, this bounds any client's request rate.
        figures[name]["backend_cpu_ms_per_request"] = round(
            1000 * backend_cpu / max(sum(run.requests.values()), 1), 2
        )
        print(f"  {name:<10} {figures[name]['artifacts_per_second']:>9} artifacts/s", file=sys.stderr)  # noqa: T201
    rec, peer, ceiling = figures["reconciler"], figures["peer"], figures["ceiling"]
    figures["ratios"] = {
        "reconciler_over_peer": round(rec["artifacts_per_second"] / peer["artifacts_per_second"], 2),
        "reconciler_over_ceiling": round(rec["artifacts_per_second"] / ceiling["artifacts_per_second"], 3),
        "requests_per_artifact_over_peer": round(
            rec["requests_per_artifact"] / peer["requests_per_artifact"], 3
        ),
    }
    return figures


def measure(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "command": " ".join(["python -m bench.run", *sys.argv[1:]]),
        "listing": "S3-like (narrowed to the prefix)" if not args.moto_listing else "moto's own (O(bucket))",
        "latency_seconds": LATENCY,
    }
    backend = Backend(s3_like_listing=not args.moto_listing)
    try:
        print("raw loopback", file=sys.stderr)  # noqa: T201
        results["raw"] = regime(backend, Dataset.of(args.n, args.live), RAW, args, "raw")
        print("latency regime", file=sys.stderr)  # noqa: T201
        results["latency"] = regime(backend, Dataset.of(args.latency_n, args.live), LATENCY, args, "latency")
    finally:
        backend.close()
    cpu_figures = cpu(records=1000, rounds=args.cpu_rounds)
    results["cpu"] = asdict(cpu_figures) | {
        "parse_us_per_record": round(1e6 * cpu_figures.parse_seconds / cpu_figures.records, 1),
        "pipeline_us_per_record": round(1e6 * cpu_figures.pipeline_seconds / cpu_figures.records, 1),
        "pipeline_over_parse": round(cpu_figures.ratio, 3),
    }
    drained = memory(total=args.backlog, warm=args.warm)
    results["memory"] = asdict(drained) | {
        "rss_growth_mb": round(drained.growth / MB, 1),
        "records_per_second": round(drained.records / drained.seconds),
    }
    return results


def table(results: dict[str, Any]) -> str:
    lines = [f"listing: {results['listing']}; latency: {results['latency_seconds']}", ""]
    header = f"{'regime':<8} {'contender':<11} {'artifacts/s':>11} {'p50 s':>7} {'p99 s':>7} {'req/art':>8}"
    lines.append(header + f" {'cpu ms/art':>10} {'left':>5}")
    for name in ("raw", "latency"):
        for who in ("reconciler", "peer", "ceiling"):
            f = results[name][who]
            lines.append(
                f"{name:<8} {who:<11} {f['artifacts_per_second']:>11} {f['item_p50_seconds']:>7}"
                f" {f['item_p99_seconds']:>7} {f['requests_per_artifact']:>8} {f['cpu_ms_per_artifact']:>10}"
                f" {f['leftover_artifacts']:>5}"
            )
        r = results[name]["ratios"]
        lines.append(
            f"{name:<8} ratios: reconciler/peer {r['reconciler_over_peer']}x, reconciler/ceiling"
            f" {r['reconciler_over_ceiling']}, requests per artifact vs peer"
            f" {r['requests_per_artifact_over_peer']}"
        )
    c, m = results["cpu"], results["memory"]
    lines.append(
        f"cpu: pipeline {c['pipeline_us_per_record']} us/record, botocore parse"
        f" {c['parse_us_per_record']} us/record, ratio {c['pipeline_over_parse']}"
    )
    lines.append(
        f"memory: {m['records']} records drained on fakes ({m['records_per_second']}/s); RSS growth after"
        f" {m['warm']}: {m['rss_growth_mb']} MB"
    )
    for name in ("raw", "latency"):
        for who in ("reconciler", "peer", "ceiling"):
            ops = ", ".join(f"{k} {v}" for k, v in results[name][who]["requests_by_operation"].items())
            lines.append(f"requests {name} {who}: {ops}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=400, help="transcripts deleted in the raw regime")
    parser.add_argument("--latency-n", type=int, default=100, help="transcripts deleted with latency")
    parser.add_argument("--live", type=int, default=20, help="transcripts that must survive")
    parser.add_argument("--concurrency", type=int, default=32, help="RECONCILER_CONCURRENCY")
    parser.add_argument("--backlog", type=int, default=200_000, help="records drained for the memory figure")
    parser.add_argument("--warm", type=int, default=10_000, help="records before the first RSS reading")
    parser.add_argument("--cpu-rounds", type=int, default=20, help="rounds of 1,000 records for CPU")
    parser.add_argument("--moto-listing", action="store_true", help="time moto's own O(bucket) listing")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script works")
    parser.add_argument(
        "--profile", type=Path, help="run the worker under pyinstrument; hot spots to PROFILE.<regime>.txt"
    )
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results.json")
    args = parser.parse_args(argv)
    if args.smoke:
        args.n, args.latency_n, args.live, args.backlog, args.warm, args.cpu_rounds = 12, 6, 3, 600, 200, 1
    results = measure(args)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))  # noqa: T201
    failed = [
        f"{name} {who}"
        for name in ("raw", "latency")
        for who in ("reconciler", "peer", "ceiling")
        if results[name][who]["leftover_artifacts"] or results[name][who]["live_items_damaged"]
    ]
    if failed:
        print(f"bench: incomplete or harmful deletions: {', '.join(failed)}", file=sys.stderr)  # noqa: T201
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
