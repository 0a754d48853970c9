"""Every log line, the crash path included, is one JSON event that carries no item content."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
import structlog
from conftest import World, consumer_for, fast_settings

from reconciler.core.dynamodb_json import Image
from reconciler.errors import ConfigError, TransientError
from reconciler.observability.logs import RateLimit, configure_logging, describe_exception
from reconciler.testing import FakeLeaseStore, FakeStreamSource, eventually, stream_record

PLANTED = "zq-planted-4f1e@example.invalid"


def _lines(err: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in err.splitlines() if line.strip()]


async def test_an_unexpected_error_logs_no_image_content_in_its_traceback(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash inside a record's processing holds the old image in its frames and in its message: neither
    reaches the log, while the event still names the error's type and where it happened."""
    configure_logging(json=True, level="DEBUG")
    world.add_transcript("acct-1", "tr-1")
    image = {**world.image("acct-1", "tr-1"), "contact_email": PLANTED}

    def explode(table: object, old_image: Image, via: object = None) -> None:
        raise ValueError(f"cannot resolve {dict(old_image)!r}")

    monkeypatch.setattr("reconciler.processing.resolve", explode)
    source, checkpoints = FakeStreamSource(), FakeLeaseStore()
    shard = source.add_shard("transcripts", "shardId-1")
    source.append("shardId-1", stream_record(1, old_image=image, identity="botocore"))
    consumer = consumer_for(world, source, shard, checkpoints, fast_settings())
    task = asyncio.create_task(consumer.run())
    await eventually(
        lambda: world.sample("reconciler_failures_total", stage="process", error="ValueError") >= 2
    )
    consumer.stop()
    await task

    err = capsys.readouterr().err
    assert PLANTED not in err
    assert "contact_email" not in err
    crashed = [line for line in _lines(err) if line["event"] == "record.crashed"]
    assert crashed, "the crash was logged"
    exception = crashed[0]["exception"]
    assert isinstance(exception, list)
    (cause,) = exception
    assert cause["type"] == "builtins.ValueError"
    assert any("explode" in frame for frame in cause["frames"])
    assert "withheld" in cause["message"]


def _fail_with_content() -> None:
    raise ValueError(f"Invalid header: {PLANTED}")


def _fail_twice() -> None:
    try:
        _fail_with_content()
    except ValueError as exc:
        raise TransientError("S3 throttled s3://stt-uploads/acct-1/tr-1/") from exc


def test_the_workers_own_errors_keep_their_message_and_the_chain_is_followed() -> None:
    try:
        _fail_twice()
    except TransientError as exc:
        chain = describe_exception(exc)
    assert [c["type"] for c in chain] == ["reconciler.errors.TransientError", "builtins.ValueError"]
    assert chain[0]["message"] == "S3 throttled s3://stt-uploads/acct-1/tr-1/"
    assert PLANTED not in repr(chain)


def test_other_libraries_log_one_json_event_per_record_without_traceback_text(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """aiohttp writes a multi-line traceback for a malformed request; it becomes one JSON line."""
    configure_logging(json=True, level="INFO")
    try:
        _fail_with_content()
    except ValueError:
        logging.getLogger("aiohttp.server").exception("Error handling request from 127.0.0.1")
    (line,) = _lines(capsys.readouterr().err)
    assert line["event"] == "aiohttp.server"
    assert line["message"] == "Error handling request from 127.0.0.1"
    assert line["level"] == "error"
    assert line["exception"][0]["type"] == "builtins.ValueError"  # type: ignore[index]
    assert PLANTED not in json.dumps(line)


def test_aws_client_debug_output_stays_off_even_at_debug_level(capsys: pytest.CaptureFixture[str]) -> None:
    """botocore's debug lines hold request and response bodies, item images included."""
    configure_logging(json=True, level="DEBUG")
    logging.getLogger("botocore.endpoint").debug("Response body: %s", PLANTED)
    logging.getLogger("aiobotocore.endpoint").debug("Response body: %s", PLANTED)
    logging.getLogger("reconciler.any").debug("still shown")
    lines = _lines(capsys.readouterr().err)
    assert [line["event"] for line in lines] == ["reconciler.any"]


def test_a_flood_from_one_logger_is_rate_limited_and_the_next_line_says_how_many_were_dropped() -> None:
    now = [0.0]
    limit = RateLimit(burst=3, per_minute=6.0, clock=lambda: now[0])

    def record(name: str) -> logging.LogRecord:
        return logging.LogRecord(name, logging.ERROR, __file__, 1, "bad request", None, None)

    passed = [limit.filter(record("aiohttp.server")) for _ in range(10)]
    assert passed == [True] * 3 + [False] * 7
    assert limit.filter(record("reconciler.other"))  # other loggers have their own budget
    now[0] = 10.0  # one token back after 10 s at 6 per minute
    again = record("aiohttp.server")
    assert limit.filter(again)
    assert again.dropped_before == 7  # type: ignore[attr-defined]


def test_an_unknown_log_level_is_a_config_error_naming_the_choices() -> None:
    with pytest.raises(ConfigError, match="'LOUD' is not one of CRITICAL, ERROR, WARNING, INFO, DEBUG"):
        configure_logging(json=True, level="LOUD")


@pytest.mark.parametrize("json_logs", [True, False])
def test_an_exception_logs_safely_in_both_renderers(
    json_logs: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """The readable renderer (a terminal, the demo) gets the same safe description, as text."""
    configure_logging(json=json_logs, level="INFO")
    log = structlog.get_logger("reconciler.test")
    try:
        _fail_with_content()
    except ValueError:
        log.exception("record.crashed")
    err = capsys.readouterr().err
    assert "record.crashed" in err
    assert "builtins.ValueError" in err
    assert "_fail_with_content" in err
    assert PLANTED not in err
