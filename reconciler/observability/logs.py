"""structlog set-up: JSON lines in production, readable lines on a terminal.

Events are dotted names (``deletion.completed``) with keyword context; shard and sequence number are bound
with ``structlog.contextvars``. Item images are never logged, on any path:

* exceptions are rendered as their type and frames (file, line, function), never with the frames' locals
  (structlog's ``dict_tracebacks`` shows locals by default, and a frame holding an old image would print it);
  only this worker's own errors (``ReconcilerError``) keep their message, which is written to carry
  identifiers and S3 locations only; any other exception's message may quote a value and is withheld;
* other libraries' loggers (aiohttp, botocore) go through the same renderer as one event per record, never as
  a multi-line traceback, rate-limited per logger, and AWS clients' loggers stay at WARNING even when the
  worker logs at DEBUG (botocore's debug output holds request and response bodies, item images included).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable, MutableMapping
from types import TracebackType
from typing import Any

import structlog

from reconciler.errors import ConfigError, ReconcilerError
from reconciler.settings import LEVELS

_QUIET_LOGGERS = ("botocore", "aiobotocore", "urllib3", "s3transfer")
_MAX_MESSAGE = 500
_MAX_FRAMES = 30
_MAX_CHAIN = 5

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


def level_number(level: str) -> int:
    """The ``logging`` level of a name such as ``info``; ConfigError naming the choices otherwise."""
    name = level.strip().upper()
    if name not in LEVELS:
        raise ConfigError(f"log level {level!r} is not one of {', '.join(LEVELS)}")
    return logging.getLevelNamesMapping()[name]


def describe_exception(exc: BaseException) -> list[dict[str, object]]:
    """An exception chain as data: type, frames and, for our own errors only, the message."""
    chain: list[dict[str, object]] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(chain) < _MAX_CHAIN:
        seen.add(id(current))
        frames = traceback.extract_tb(current.__traceback__)[-_MAX_FRAMES:]
        entry: dict[str, object] = {
            "type": f"{type(current).__module__}.{type(current).__qualname__}",
            "frames": [f"{f.filename}:{f.lineno} in {f.name}" for f in frames],
        }
        if isinstance(current, ReconcilerError):
            entry["message"] = str(current)[:_MAX_MESSAGE]
        else:
            entry["message"] = "(withheld: a message from outside the worker may quote item content)"
        chain.append(entry)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return chain


def _exc_info(value: object) -> ExcInfo | None:
    if value is True:
        value = sys.exc_info()
    if isinstance(value, BaseException):
        return (type(value), value, value.__traceback__)
    if isinstance(value, tuple) and len(value) == 3 and isinstance(value[1], BaseException):  # noqa: PLR2004
        return (type(value[1]), value[1], value[1].__traceback__)
    return None


def safe_exception(_: object, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Replace ``exc_info`` with ``exception``: types and frames, no locals, no foreign messages."""
    info = _exc_info(event_dict.pop("exc_info", None))
    if info is not None:
        event_dict["exception"] = describe_exception(info[1])
    return event_dict


def _exception_text(_: object, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """For the console renderer, which expects ``exception`` as text: the same safe description, as lines."""
    chain = event_dict.get("exception")
    if isinstance(chain, list):
        lines = []
        for entry in chain:
            lines.append(f"{entry['type']}: {entry['message']}")
            lines += [f"  {frame}" for frame in entry["frames"]]
        event_dict["exception"] = "\n".join(lines)
    return event_dict


def _foreign_event(_: object, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A stdlib record becomes a dotted event named for its logger; its text goes to ``message``."""
    record = event_dict.get("_record")
    if isinstance(record, logging.LogRecord):
        event_dict["message"] = str(event_dict.get("event", ""))[:_MAX_MESSAGE]
        event_dict["event"] = record.name
    return event_dict


class RateLimit(logging.Filter):
    """At most ``burst`` records per logger, refilled at ``per_minute``; the next one says how many were
    dropped. A flood of malformed requests must not turn into a flood of log lines."""

    def __init__(
        self, burst: int = 10, per_minute: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self._burst = burst
        self._rate = per_minute / 60.0
        self._clock = clock
        self._tokens: dict[str, tuple[float, float]] = {}
        self._dropped: dict[str, int] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        now = self._clock()
        with self._lock:
            tokens, last = self._tokens.get(record.name, (float(self._burst), now))
            tokens = min(float(self._burst), tokens + (now - last) * self._rate)
            if tokens < 1.0:
                self._tokens[record.name] = (tokens, now)
                self._dropped[record.name] = self._dropped.get(record.name, 0) + 1
                return False
            self._tokens[record.name] = (tokens - 1.0, now)
            dropped = self._dropped.pop(record.name, 0)
        if dropped:
            record.dropped_before = dropped
        return True


def _dropped(_: object, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    record = event_dict.get("_record")
    dropped = getattr(record, "dropped_before", 0)
    if dropped:
        event_dict["dropped_before"] = dropped
    return event_dict


def configure_logging(*, json: bool | None = None, level: str = "INFO") -> None:
    """Configure structlog and route the standard library's loggers through the same renderer."""
    number = level_number(level)
    use_json = (not sys.stderr.isatty()) if json is None else json
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[structlog.typing.Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        safe_exception,
    ]
    if not use_json:
        shared.append(_exception_text)
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, *shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(number),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[_foreign_event, _dropped, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    handler.addFilter(RateLimit())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(number)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(number, logging.WARNING))
