"""One error tree for the whole worker.

Every error says whether trying again can help (``retriable``), so retry policy is declared once, by class,
and the checkpoint logic can tell work to redo from work to dead-letter.
"""

from __future__ import annotations


class ReconcilerError(Exception):
    """Root of every error the worker raises on purpose."""

    retriable: bool = False


class ConfigError(ReconcilerError):
    """The rules file or the settings cannot describe a safe deployment."""


class DecodeError(ReconcilerError):
    """A stream record or attribute value is not valid DynamoDB JSON."""


class TransientError(ReconcilerError):
    """AWS throttled us, timed out or answered 5xx: the same call may succeed later."""

    retriable = True


class AccessError(ReconcilerError):
    """AWS denied a whole request or could not find its resource (expired credentials, a missing IAM grant,
    a table not deployed yet). A deployment problem, not a property of the record: the record waits and is
    delivered again instead of being dead-lettered."""

    retriable = True


class CredentialsError(AccessError):
    """No usable AWS credentials: the chain found none, or its source failed (an STS or IRSA outage, a
    failing ``credential_process``). Records wait; the worker keeps running and says so loudly."""


class MissingCredentialsError(CredentialsError):
    """The chain found no credentials at all: at start, a deployment mistake (pre-flight exits); while
    running, records wait as for any credentials failure."""


class PermanentError(ReconcilerError):
    """AWS refused for good (access denied, object lock, validation): retrying will not help."""


class ExpiredIteratorError(ReconcilerError):
    """A shard iterator is older than 15 minutes: not retried as is, the consumer gets a new one."""


class TrimmedDataError(ReconcilerError):
    """The stream no longer holds the records after the checkpoint (24-hour retention exceeded)."""


class LeaseLostError(ReconcilerError):
    """Another worker holds this shard's lease now: stop reading it before writing anything more."""
