"""Worker settings, built once in the CLI from flags and ``RECONCILER_*`` variables, then passed down.

The AWS endpoint comes from the standard ``AWS_ENDPOINT_URL`` (read by botocore itself); credentials and
region from the standard AWS chain.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

TlsPolicy = Literal["strict", "relaxed"]
LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RECONCILER_", frozen=True, extra="forbid", populate_by_name=True
    )

    config: Path = Field(description="The artifact rules file (TOML).")
    region: str | None = Field(
        default=None,
        # AWS_REGION is read here because botocore reads only AWS_DEFAULT_REGION and the config file.
        validation_alias=AliasChoices("RECONCILER_REGION", "AWS_REGION", "region"),
        description="AWS Region (default: AWS_REGION, else botocore's AWS_DEFAULT_REGION or config file).",
    )
    endpoint_url: str | None = Field(default=None, description="Overrides AWS_ENDPOINT_URL (demo and tests).")
    http_host: str = Field(default="127.0.0.1", description="Bind address of /metrics, /healthz, /readyz.")
    http_port: int = Field(default=9464, ge=0, le=65535)
    checkpoint_table: str = "reconciler-checkpoints"
    dead_letter_table: str = "reconciler-dead-letters"
    create_tables: bool = Field(default=False, description="Create the worker's own tables if missing.")
    preflight: bool = Field(
        default=True, description="Check every table, stream, bucket and grant before consuming (exit 4)."
    )
    worker_id: str = Field(default="", description="Name of this replica in leases (default: host name).")
    batch_size: int = Field(default=1000, ge=1, le=1000, description="GetRecords Limit.")
    concurrency: int = Field(
        default=32, ge=1, description="Records of one shard in flight at once (the pipeline window)."
    )
    record_fanout: int = Field(
        default=16, ge=1, description="Independent steps of one record (prefixes, linked items) at once."
    )
    max_records_in_flight: int = Field(
        default=256, ge=1, description="Records in flight across all shards of this worker (bounds memory)."
    )
    checkpoint_seconds: float = Field(
        default=2.0, ge=0, description="Longest wait before a checkpoint that moved is written."
    )
    lease_seconds: float = Field(
        default=30.0, gt=0, description="A lease not renewed for this long is expired and may be taken."
    )
    heartbeat_seconds: float = Field(
        default=10.0, gt=0, description="How often held leases are renewed and free ones looked for."
    )
    leases_to_take: int = Field(default=2, ge=1, description="Most leases taken in one heartbeat.")
    max_leases: int = Field(default=64, ge=1, description="Most shard leases one worker holds.")
    describe_stream_per_second: float = Field(
        default=2.0, gt=0, le=10, description="DescribeStream calls per second from this worker (AWS: 10/s)."
    )
    idle_poll_seconds: float = Field(default=1.0, gt=0, description="First wait after an empty GetRecords.")
    max_idle_poll_seconds: float = Field(default=10.0, gt=0, description="Longest wait between empty polls.")
    retry_backoff_seconds: float = Field(
        default=5.0, gt=0, description="First wait before a record is tried again (doubling, to 60 s)."
    )
    max_attempts: int = Field(
        default=50, ge=1, description="Attempts of one record before its remaining work is dead-lettered."
    )
    max_record_age_seconds: float = Field(
        default=43200.0,
        gt=0,
        description="Age of a record (from its stream timestamp) past which a failing one is dead-lettered.",
    )
    discovery_seconds: float = Field(default=30.0, gt=0, description="How often new shards are looked for.")
    dead_letter_count_seconds: float = Field(
        default=60.0, gt=0, description="How often pending dead letters are counted, by kind, for the gauge."
    )
    shutdown_grace_seconds: float = Field(default=25.0, gt=0, description="Drain time after SIGTERM.")
    liveness_seconds: float = Field(default=300.0, gt=0, description="Consumer silence that fails /healthz.")
    # Expiry enforcement: the sweeper deletes items whose TTL passed more than the grace ago (README).
    enforce_expiry: bool = Field(
        default=True,
        description="Delete expired items (TTL older than the grace) instead of waiting for TTL.",
    )
    expiry_grace_seconds: float = Field(
        default=900.0, ge=0, description="How long past its TTL an item is left to DynamoDB's own TTL."
    )
    sweep_interval_seconds: float = Field(
        default=300.0, gt=0, description="Wait between the end of a segment's sweep pass and its next one."
    )
    sweep_segments: int = Field(
        default=4, ge=1, le=1000, description="Parallel Scan segments per source table (one lease each)."
    )
    sweep_read_units_per_second: float = Field(
        default=50.0, gt=0, description="Read capacity units per second the sweeper's Scans may consume."
    )
    tls_policy: TlsPolicy = Field(
        default="strict",
        description="strict: TLS 1.2/1.3, the published suites only; relaxed: botocore's defaults (a proxy).",
    )
    log_json: bool | None = Field(default=None, description="JSON logs (default: when stderr is not a tty).")
    log_level: str = Field(default="INFO", description="CRITICAL, ERROR, WARNING, INFO or DEBUG.")

    @field_validator("shadow_checkpoint_table")
    @classmethod
    def _own_namespace(cls, table: str, info: ValidationInfo) -> str:
        # A dry run that shared the real lease table would take real leases and move real checkpoints
        # past records it did not delete.
        real = ("checkpoint_table", "dead_letter_table", "receipt_table")
        if table in {info.data.get(name) for name in real}:
            raise ValueError(
                "must differ from the checkpoint, dead-letter and receipt tables of a real worker"
            )
        return table

    @property
    def lease_table(self) -> str:
        """Where this worker's leases and checkpoints live: the shadow namespace in a dry run."""
        return self.shadow_checkpoint_table if self.dry_run else self.checkpoint_table

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, level: str) -> str:
        if level.strip().upper() not in LEVELS:
            raise ValueError(f"must be one of {', '.join(LEVELS)}")
        return level.strip().upper()

    # Receipts: the confirmation of every deletion (reconciler/receipts.py).
    receipt_table: str = Field(
        default="reconciler-receipts", description="Deletion receipts, keyed by source_table + key_hash."
    )
    receipt_retention_days: int = Field(
        default=400, ge=1, description="Days a receipt is kept after its deletion (DynamoDB TTL)."
    )

    # Orphan sweep: objects under a scope whose every owner item is gone (reconciler/orphans.py, README).
    orphan_min_age_seconds: float = Field(
        default=86400.0,
        ge=0,
        description="An orphan's newest version must be older than this to be deleted (an upload racing its"
        " item's creation is never touched).",
    )
    orphan_sweep: bool = Field(
        default=True,
        description="Run the orphan sweep inside the worker, leased, every orphan_sweep_seconds and after a"
        " trimmed gap (a dry run in shadow mode).",
    )
    age_sweep: bool = Field(
        default=True,
        description="Run the rules file's age rules inside the worker, one replica at a time.",
    )
    age_sweep_seconds: float = Field(
        default=3600.0, gt=0, description="Wait between two age-rule sweeps (reconciler sweep --once --age)."
    )
    orphan_sweep_seconds: float = Field(
        default=86400.0,
        gt=0,
        description="Wait between the end of one orphan sweep and the start of the next.",
    )

    # Shadow mode: reconciler run --dry-run (reconciler/shadow.py). After every table it must differ from.
    dry_run: bool = Field(
        default=False,
        description="Delete nothing: run reads and resolves as a real run (shadow mode), sweep only lists.",
    )
    shadow_checkpoint_table: str = Field(
        default="reconciler-shadow-checkpoints",
        description="The leases and checkpoints of a dry run, never those of a real worker.",
    )


PREFIX = "RECONCILER_"


def unknown_variables(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """``RECONCILER_*`` variables that no setting reads (a typo is otherwise silently ignored), each with the
    known name it is closest to, if any. Names only: a value may be a secret."""
    known = {PREFIX + name.upper() for name in Settings.model_fields}
    known |= {
        choice
        for field in Settings.model_fields.values()
        if isinstance(field.validation_alias, AliasChoices)
        for choice in field.validation_alias.choices
        if isinstance(choice, str) and choice.startswith(PREFIX)
    }
    suffixes = {name.removeprefix(PREFIX): name for name in known}  # the shared prefix would match anything

    def closest(name: str) -> str | None:
        match = difflib.get_close_matches(name.removeprefix(PREFIX), suffixes, n=1)
        return suffixes[match[0]] if match else None

    return [
        (name, closest(name)) for name in sorted(environ) if name.startswith(PREFIX) and name not in known
    ]
