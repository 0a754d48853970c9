"""The worker's least-privilege IAM policy, derived from the rules file so that the two cannot drift apart.

A pure function of the rules and the deployment's names; ``reconciler iam-policy`` prints it. It grants
only the calls the adapters make (``reconciler/adapters/``), on only the resources the rules name and the
worker can reach (the sources and the tables linked from them; a table that nothing links to is never read):

- source tables: ``DescribeTable`` (the worker finds each stream's ARN there, ``streams.py``) and
  ``BatchGetItem`` (has the expired item been re-created? ``processing.py``; the checks of the records in
  flight share requests, ``batching.py``), with ``GetItem``, which a worker wired without that batching (or
  the previous release, during a rolling deploy) makes instead; their streams, ``table/NAME/stream/*``
  (the label changes when a stream is switched off and on): ``DescribeStream``, ``GetShardIterator``,
  ``GetRecords``. The worker never calls ``ListStreams``, which would need ``Resource: "*"``, so it is not
  granted.
- source tables the expiry sweeper enforces (a TTL attribute, and ``expired`` removals cascade):
  ``Scan`` (keys and TTL of due items, ``adapters/sweep.py``) and ``DeleteItem`` (conditional on the TTL
  still being due, so an extended TTL wins). Switching enforcement off (``--no-enforce-expiry``) leaves them
  unused.
- linked tables: ``Query`` on the table, or on ``table/NAME/index/INDEX`` when a link names an index;
  ``BatchGetItem`` and ``GetItem`` (a page of items found through an index is read again, consistently, in
  one ``BatchGetItem``, and a receipt's re-check reads deleted linked items again by key, ``receipts.py``;
  ``GetItem`` as for the sources); ``DeleteItem`` (conditional, ``dynamodb.py``);
  ``DescribeTable`` (the pre-flight checks that the table and its indexes exist, ``preflight.py``);
  ``Scan`` (the orphan sweep reads keys and link attributes to find items whose parents are gone,
  ``orphan_items.py``; unused unless it runs). Nothing
  else is deleted from DynamoDB: the sweeper or TTL itself removes the source items, and ``BatchWriteItem`` is
  never called.
- the checkpoint table, which is also the lease table (one item per stream ARN and shard id): ``Query`` (a
  stream's leases, by partition key), ``GetItem``, ``UpdateItem`` (checkpoints, and taking, renewing and
  releasing a lease, each conditional on its counter) and ``PutItem`` (a new shard's lease, created only if
  absent); the dead-letter table: ``UpdateItem`` (a letter written again adds its targets to those it holds)
  and ``Query`` on its index ``by-kind-status`` only (the pending letters counted for the gauge); the receipts
  table: ``PutItem`` (a deletion's receipt, conditional) and ``GetItem`` (``/deletions``); all three:
  ``DescribeTable``, for the pre-flight.
- S3: ``ListObjectVersions`` (IAM action ``s3:ListBucketVersions``) on each bucket, only for prefixes under a
  scope or an age rule's scope (condition key ``s3:prefix``); ``DeleteObjects`` by ``VersionId``, which S3
  authorizes per key as ``s3:DeleteObject`` and ``s3:DeleteObjectVersion``, only under each scope's (and age
  rule's) static prefix. ``ListObjectsV2`` is never called, so ``s3:ListBucket`` is not granted.
- age rules (``reconciler sweep --once --age``): ``Scan`` and ``DescribeTable`` on each accounts table.

Not granted on purpose: ``CreateTable`` on the worker's own tables. Production creates them from
``deploy/aws/tables.cfn.yaml``; ``run --create-tables`` and ``init-tables`` are for local and test use with
other credentials. Under this policy ``--create-tables``
fails with AccessDenied even when the tables exist: IAM is checked before the table is looked up. Nor what
``reconciler dead-letters`` adds to the worker's calls (``GetItem`` and ``DeleteItem`` on the dead-letter
table): the worker never reads a whole letter back or deletes one.
KMS: with a customer managed key on the worker's tables, the key policy must allow the worker's role to use it
through DynamoDB (``kms:ViaService``); that is not part of this policy.

The static prefix of a scope is its text before the first ``{placeholder}``: a placeholder can render to
anything, so IAM can only be told what comes before it. A scope that starts with a placeholder
(``s3://bucket/{account_id}/...``) has an empty static prefix, and the only grant covering it is the whole
bucket. This module refuses to write that (``ConfigError``) instead of granting it silently: give such scopes
a fixed first segment (``s3://bucket/audio/{account_id}/...``), which also keeps the worker away from whatever
else the bucket holds.

Actions, resources and condition keys:
https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazondynamodb.html
https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazons3.html
https://docs.aws.amazon.com/AmazonS3/latest/API/API_DeleteObjects.html (permissions)
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from reconciler.core import reverse
from reconciler.core.reverse import static_prefix as static_prefix  # noqa: PLC0414 - re-exported: imported from here too
from reconciler.core.scope import Template
from reconciler.errors import ConfigError
from reconciler.rules import Rules

Statement = dict[str, Any]

_ACCOUNT = re.compile(r"\d{12}")
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d{1,2}")
_PARTITION = re.compile(r"aws(-[a-z]+)*")
_TABLE = re.compile(r"[A-Za-z0-9_.-]{3,255}")
# IAM reads these as wildcards or policy variables in resources and StringLike values.
_IAM_SPECIAL = frozenset("*?$")

DELETE_ACTIONS = frozenset({"s3:DeleteObject", "s3:DeleteObjectVersion", "dynamodb:DeleteItem"})
"""Every deletion action this policy can grant (the tests check where)."""

# Checkpoints and shard leases share the checkpoint table: Query lists a stream's leases, PutItem creates a
# new shard's lease (attribute_not_exists), GetItem and UpdateItem read, renew, take and release them.
# DescribeTable on every table: the pre-flight checks that each exists (and a linked table's indexes).
CHECKPOINT_ACTIONS = (
    "dynamodb:DescribeTable",
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:Query",
    "dynamodb:UpdateItem",
)
DEAD_LETTER_ACTIONS = ("dynamodb:DescribeTable", "dynamodb:UpdateItem")
# The dead-letter table's index, as ``reconciler/adapters/tables.py`` names it (a test keeps the two equal;
# this module stays free of botocore).
DEAD_LETTER_INDEX = "by-kind-status"
# A receipt is written once per deletion (PutItem, conditional) and read back for /deletions (GetItem).
RECEIPT_ACTIONS = ("dynamodb:DescribeTable", "dynamodb:GetItem", "dynamodb:PutItem")


@dataclass(frozen=True, slots=True)
class _Arns:
    partition: str
    region: str
    account_id: str

    def table(self, name: str) -> str:
        return f"arn:{self.partition}:dynamodb:{self.region}:{self.account_id}:table/{name}"

    def stream(self, table: str) -> str:
        return f"{self.table(table)}/stream/*"

    def index(self, table: str, index: str) -> str:
        return f"{self.table(table)}/index/{index}"

    def bucket(self, name: str) -> str:
        return f"arn:{self.partition}:s3:::{name}"


def policy(
    rules: Rules,
    *,
    account_id: str,
    region: str,
    partition: str,
    checkpoint_table: str,
    dead_letter_table: str,
    receipt_table: str = "reconciler-receipts",
) -> dict[str, Any]:
    """The IAM policy document for the worker; ConfigError if a name is malformed or a scope too wide."""
    _check(_ACCOUNT, account_id, "account id")
    _check(_REGION, region, "region")
    _check(_PARTITION, partition, "partition")
    for table in (checkpoint_table, dead_letter_table, receipt_table):
        _check(_TABLE, table, "table name")
    arns = _Arns(partition, region, account_id)
    statements = [
        *_source_statements(rules, arns),
        *_linked_statements(rules, arns),
        _statement("WorkerCheckpoints", CHECKPOINT_ACTIONS, [arns.table(checkpoint_table)]),
        _statement("WorkerDeadLetters", DEAD_LETTER_ACTIONS, [arns.table(dead_letter_table)]),
        _statement(
            "WorkerDeadLettersCount", ["dynamodb:Query"], [arns.index(dead_letter_table, DEAD_LETTER_INDEX)]
        ),
        _statement("WorkerReceipts", RECEIPT_ACTIONS, [arns.table(receipt_table)]),
        *_age_statements(rules, arns),
        *_s3_statements(rules, arns),
    ]
    return {"Version": "2012-10-17", "Statement": sorted(statements, key=lambda s: str(s["Sid"]))}


def _check(pattern: re.Pattern[str], value: str, what: str) -> None:
    if not pattern.fullmatch(value):
        raise ConfigError(f"{value!r} is not a valid {what}")


def _statement(
    sid: str, actions: Iterable[str], resources: Iterable[str], condition: dict[str, Any] | None = None
) -> Statement:
    statement: Statement = {
        "Sid": sid,
        "Effect": "Allow",
        "Action": sorted(set(actions)),
        "Resource": sorted(set(resources)),
    }
    if condition:
        statement["Condition"] = condition
    return statement


def _source_statements(rules: Rules, arns: _Arns) -> list[Statement]:
    statements = [
        _statement(
            "SourceStreamsRead",
            ["dynamodb:DescribeStream", "dynamodb:GetShardIterator", "dynamodb:GetRecords"],
            [arns.stream(t) for t in rules.sources],
        ),
        # DescribeTable finds the stream ARN; BatchGetItem (GetItem unbatched) checks whether an expired item
        # was re-created.
        _statement(
            "SourceTablesRead",
            ["dynamodb:DescribeTable", "dynamodb:BatchGetItem", "dynamodb:GetItem"],
            map(arns.table, rules.sources),
        ),
    ]
    swept = [t for t in rules.sources if _swept(rules, t)]
    if swept:  # the expiry sweeper: a Scan of keys and TTL, and a delete that holds only while the TTL is due
        statements.append(
            _statement("SourceExpirySweep", ["dynamodb:Scan", "dynamodb:DeleteItem"], map(arns.table, swept))
        )
    indexed = [(t, index.name) for t in swept if (index := rules.tables[t].expiry_index) is not None]
    if indexed:  # a big table's sweep Queries its sparse expiry index instead of Scanning
        statements.append(
            _statement("SourceExpiryIndex", ["dynamodb:Query"], [arns.index(t, name) for t, name in indexed])
        )
    return statements


def _swept(rules: Rules, table: str) -> bool:
    """Whether the sweeper enforces this source's expiry (as ``sweeper.sweepable``)."""
    rule = rules.tables[table]
    return rule.ttl_attribute is not None and "expired" in rule.cascade.causes


def reachable_tables(rules: Rules) -> list[str]:
    """The sources and every table linked from them, directly or not: the only tables the worker reads."""
    return reverse.reachable_tables(rules.compile())


def _linked_statements(rules: Rules, arns: _Arns) -> list[Statement]:
    links = [link for name in reachable_tables(rules) for link in rules.tables[name].all_links()]
    if not links:
        return []
    statements = [
        _statement(
            "LinkedItemsQuery",
            ["dynamodb:Query"],
            [arns.index(link.table, link.index) if link.index else arns.table(link.table) for link in links],
        ),
        _statement("LinkedItemsDelete", ["dynamodb:DeleteItem"], [arns.table(link.table) for link in links]),
        _statement(
            "LinkedTablesDescribe", ["dynamodb:DescribeTable"], [arns.table(link.table) for link in links]
        ),
    ]
    # The orphan sweep reads every linked table whole (keys and link attributes only) to find items whose
    # parents are all gone (reconciler/orphan_items.py); a worker that never runs it leaves this unused.
    statements.append(
        _statement("LinkedItemsScan", ["dynamodb:Scan"], [arns.table(link.table) for link in links])
    )
    # Indexes are eventually consistent and may project only keys: what they find is read again. And a
    # receipt's re-check reads every deleted linked item again by key.
    statements.append(
        _statement(
            "LinkedItemsRead",
            ["dynamodb:BatchGetItem", "dynamodb:GetItem"],
            [arns.table(link.table) for link in links],
        )
    )
    return statements


def scope_prefixes(rules: Rules) -> dict[str, list[str]]:
    """Per bucket, the static prefixes of the scopes the worker can reach, leaving out those under another
    (the roots an orphan sweep lists, too)."""
    compiled = rules.compile()
    for template in reverse.scope_templates(compiled):
        _checked_prefix(template)
    return {bucket: list(prefixes) for bucket, prefixes in reverse.walk_roots(compiled).items()}


def _checked_prefix(template: Template) -> str:
    prefix = static_prefix(template)
    if not prefix:
        raise ConfigError(
            f"scope {template.source!r} starts with a {{placeholder}}: IAM could only allow deleting anywhere"
            f" in bucket {template.bucket!r}. Give it a fixed first segment, like"
            f" s3://{template.bucket}/some-prefix/{{...}}/, to derive a policy"
        )
    if _IAM_SPECIAL & set(prefix):
        raise ConfigError(f"scope {template.source!r}: '*', '?' and '$' would be IAM wildcards or variables")
    return prefix


def _age_statements(rules: Rules, arns: _Arns) -> list[Statement]:
    """An age rule's accounts table is read with a Scan (``adapters/accounts.py``) and described by the
    pre-flight."""
    tables = [r.accounts_table.table for r in rules.age_rules if r.accounts_table is not None]
    if not tables:
        return []
    return [
        _statement("AgeRuleAccounts", ["dynamodb:DescribeTable", "dynamodb:Scan"], map(arns.table, tables))
    ]


def granted_prefixes(rules: Rules) -> dict[str, list[str]]:
    """Per bucket, the prefixes the worker may list and delete under: the scopes' static prefixes and the age
    rules' (every account an age rule may list renders under its static prefix), leaving out those under
    another."""
    found = {bucket: list(prefixes) for bucket, prefixes in scope_prefixes(rules).items()}
    for rule in rules.compile().age_rules:
        found.setdefault(rule.scope.bucket, []).append(_checked_prefix(rule.scope))
    return {bucket: list(reverse.outermost(prefixes)) for bucket, prefixes in sorted(found.items())}


def _s3_statements(rules: Rules, arns: _Arns) -> list[Statement]:
    prefixes = granted_prefixes(rules)
    sids = _bucket_sids(prefixes)
    statements = [
        # ListObjectVersions is authorized as s3:ListBucketVersions; s3:prefix is the request's Prefix.
        _statement(
            f"S3ListVersions{sids[bucket]}",
            ["s3:ListBucketVersions"],
            [arns.bucket(bucket)],
            {"StringLike": {"s3:prefix": [f"{p}*" for p in bucket_prefixes]}},
        )
        for bucket, bucket_prefixes in prefixes.items()
    ]
    objects = [f"{arns.bucket(bucket)}/{p}*" for bucket, ps in prefixes.items() for p in ps]
    statements.append(
        _statement("S3DeleteScopedVersions", ["s3:DeleteObject", "s3:DeleteObjectVersion"], objects)
    )
    return statements


def _bucket_sids(buckets: Iterable[str]) -> dict[str, str]:
    """A Sid suffix per bucket (Sids are alphanumeric): CamelCase, with a digest if two would be alike."""
    camel = {b: "".join(part.capitalize() for part in re.split(r"[.-]", b)) for b in buckets}
    counts: dict[str, int] = {}
    for sid in camel.values():
        counts[sid] = counts.get(sid, 0) + 1
    return {
        b: sid if counts[sid] == 1 else sid + hashlib.sha256(b.encode()).hexdigest()[:8]
        for b, sid in camel.items()
    }
