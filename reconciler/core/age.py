"""Age rules, decided: which prefixes to list for a rule, and whether one listed object is deleted.

An age rule deletes objects by their age alone, for the accounts it lists (``AgeRuleSpec``). Its scope is a
template with at most one placeholder, the account: each listed account renders one prefix, and only
objects under that prefix, whose key names that very account in the placeholder's segment (``/907/`` is
never ``/9070/``), are that account's. Without a list, the scope's static prefix (its text before the
placeholder) is what is listed, and an object there is in scope if it lies under some rendering of the scope
(any account). An object is past its age when its newest version (or delete marker) was
written more than ``max_age`` before ``now``; a version whose time is unknown is never old.

Pure: no I/O, no clock (``now`` is passed in).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from reconciler.core.reverse import static_prefix
from reconciler.core.scope import Placeholder, S3Location, ScopeViolation, check_in_scope
from reconciler.core.spec import AgeRuleSpec


class Verdict(StrEnum):
    """What becomes of one listed object; also a low-cardinality label."""

    EXPIRED = "expired"
    """Past its age, under its prefix, of its account: every version is deleted."""
    YOUNG = "young"
    """Its newest version is not older than the rule's age (or has no known time)."""
    OTHER_ACCOUNT = "other_account"
    """Its key names another account than the prefix it was listed under (never deleted)."""
    UNSAFE = "unsafe"
    """Outside the prefix, or a key with empty, '.' or '..' segments or control characters."""
    OUT_OF_SCOPE = "out_of_scope"
    """Under the static prefix of a rule without a list, but under no rendering of its scope
    (``requests/loose.txt`` for ``requests/{account_id}/``)."""


@dataclass(frozen=True, slots=True)
class Prefix:
    """One location to list for a rule, and the account it renders (None for the static prefix)."""

    location: S3Location
    account: str | None


def placeholder(rule: AgeRuleSpec) -> Placeholder | None:
    """The account placeholder of the rule's scope, if it has one (the rules file allows one at most)."""
    found = rule.scope.placeholders
    return found[0] if found else None


def account_prefixes(rule: AgeRuleSpec, accounts: Iterable[object] | None) -> tuple[list[Prefix], int]:
    """The prefixes to list for ``rule`` and how many accounts were refused. ``accounts`` are the list's
    values (strings, or integral numbers, as decoded from DynamoDB); None when the rule has no list. A value
    that cannot be one whole path segment (empty, '.', '..', holding '/'...) renders no prefix."""
    if accounts is None or rule.accounts is None:
        return [Prefix(S3Location(rule.scope.bucket, static_prefix(rule.scope)), None)], 0
    target = placeholder(rule)
    if target is None:  # refused when the rules are loaded: a list needs a placeholder to filter on
        return [], 0
    found: dict[str, Prefix] = {}
    refused = 0
    for value in accounts:
        try:
            location = rule.scope.render({target.attribute: value})
            account = target.render({target.attribute: value}, None)
        except ScopeViolation:
            refused += 1
            continue
        found.setdefault(account, Prefix(location, account))
    return [found[account] for account in sorted(found)], refused


def account_of(rule: AgeRuleSpec, key: str) -> str | None:
    """The account segment ``key`` takes in the rule's scope (whole: up to the next '/'), or None if the key
    does not lie under the scope's shape."""
    parts = rule.scope.parts
    pattern = "".join(re.escape(literal) + ("([^/]+)" if p else "") for literal, p in parts)
    match = re.match(pattern, key)
    if match is None or not match.groups():
        return None
    return match.group(1)


def past_age(versions: Sequence[dt.datetime | None], now: dt.datetime, max_age: dt.timedelta) -> bool:
    """True if every version (so the newest) was written more than ``max_age`` before ``now``; a version
    whose time is unknown is never old."""
    cutoff = now - max_age
    return bool(versions) and all(when is not None and when < cutoff for when in versions)


def decide(
    rule: AgeRuleSpec,
    prefix: Prefix,
    key: str,
    written: Sequence[dt.datetime | None],
    now: dt.datetime,
) -> Verdict:
    """The verdict on one object listed under ``prefix``: its key, and when each of its versions was written.
    The scope check comes first: nothing outside the listed prefix is ever deleted."""
    try:
        check_in_scope(S3Location(prefix.location.bucket, key), [prefix.location])
    except ScopeViolation:
        return Verdict.UNSAFE
    if not past_age(written, now, dt.timedelta(seconds=rule.max_age_seconds)):
        return Verdict.YOUNG
    account = account_of(rule, key)
    if placeholder(rule) is not None and account is None:
        return Verdict.OUT_OF_SCOPE
    if prefix.account is not None and account != prefix.account:
        return Verdict.OTHER_ACCOUNT
    return Verdict.EXPIRED


def parse_accounts_file(text: str) -> list[str]:
    """The accounts of an accounts file: one a line, surrounding blanks ignored; empty lines and lines
    starting with '#' are skipped."""
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]
