"""The command line: plan (dry run), schema, and clear errors for bad input."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import socket
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
from conftest import DEMO_RULES
from prometheus_client import CollectorRegistry

from reconciler.cli import EXIT_PREFLIGHT, EXIT_UNSAFE, EXIT_USAGE, main


def _image(tmp_path: Path, **overrides: dict[str, str]) -> Path:
    image = {
        "transcript_id": {"S": "tr-1"},
        "account_id": {"S": "acct-1"},
        "expires_at": {"N": "1764000000"},
        "audio_url": {"S": "s3://stt-uploads/acct-1/tr-1/audio.wav"},
        **overrides,
    }
    path = tmp_path / "image.json"
    path.write_text(json.dumps(image))
    return path


def test_plan_prints_the_targets_of_an_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--config", str(DEMO_RULES), "--json", "--image", str(_image(tmp_path))]) == 0
    (plan,) = json.loads(capsys.readouterr().out)
    assert plan["verdict"] == "plan"
    assert plan["objects"] == ["s3://stt-uploads/acct-1/tr-1/audio.wav"]
    assert plan["prefixes"] == ["s3://stt-transcripts/acct-1/tr-1/"]
    assert [link["table"] for link in plan["links"]] == ["speech_outputs", "llm_requests"]
    assert plan["refused"] == []
    assert main(["plan", "--config", str(DEMO_RULES), str(_image(tmp_path))]) == 0
    text = capsys.readouterr().out
    assert "image: transcripts transcript_id=tr-1: plan" in text
    assert "  object    s3://stt-uploads/acct-1/tr-1/audio.wav" in text


def test_plan_exits_non_zero_when_a_target_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = _image(tmp_path, transcript_id={"S": "../other"})
    assert main(["plan", "--config", str(DEMO_RULES), "--json", str(image)]) == EXIT_UNSAFE
    assert json.loads(capsys.readouterr().out)[0]["refused"][0]["reason"] == "unsafe_identifier"


STREAM_LABEL = "2026-01-01T00:00:00.000"


def _old_image() -> dict[str, object]:
    return {
        "transcript_id": {"S": "tr-1"},
        "account_id": {"S": "acct-1"},
        "expires_at": {"N": "1764000000"},
        "audio_url": {"S": "s3://stt-uploads/acct-1/tr-1/audio.wav"},
    }


def _lambda_record(number: int, event: str, **identity: str) -> dict[str, object]:
    record: dict[str, object] = {
        "eventID": f"e{number}",
        "eventName": event,
        "eventSource": "aws:dynamodb",
        "eventSourceARN": f"arn:aws:dynamodb:eu-west-1:123456789012:table/transcripts/stream/{STREAM_LABEL}",
        "dynamodb": {
            "ApproximateCreationDateTime": 1767225600,
            "Keys": {"transcript_id": {"S": "tr-1"}},
            "SequenceNumber": f"{number:021d}",
            "StreamViewType": "NEW_AND_OLD_IMAGES",
            **({"OldImage": _old_image()} if event != "INSERT" else {"NewImage": _old_image()}),
        },
    }
    if identity:
        record["userIdentity"] = identity
    return record


def test_plan_reads_every_accepted_shape_from_a_file_or_stdin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    event = {"Records": [
        _lambda_record(1, "INSERT"),
        _lambda_record(2, "REMOVE", type="Service", principalId="dynamodb.amazonaws.com"),
    ]}  # fmt: skip
    shapes: dict[str, object] = {
        "image": _old_image(),
        "get-item": {"Item": _old_image()},
        "record": _lambda_record(2, "REMOVE"),
        "event": event,
        "get-records": {"Records": [_lambda_record(2, "REMOVE")], "NextShardIterator": "x"},
    }
    verdicts = {}
    for name, document in shapes.items():
        monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(document)))
        assert main(["plan", "--config", str(DEMO_RULES), "--json", "-"]) == 0, name
        verdicts[name] = [(e["verdict"], e.get("cause")) for e in json.loads(capsys.readouterr().out)]
    assert verdicts == {
        "image": [("plan", None)],
        "get-item": [("plan", None)],
        "record": [("plan", "expired")],
        "event": [("ignored", None), ("plan", "ttl")],
        "get-records": [("plan", "expired")],
    }


def test_plan_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["plan", "--help"])
    out = capsys.readouterr().out
    assert "0 nothing refused; 3 something refused" in out


def test_bad_input_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "image.json"
    image.write_text('{"transcript_id": {"Q": "x"}}')
    assert main(["plan", "--config", str(DEMO_RULES), "--image", str(image)]) == EXIT_USAGE
    assert "unknown attribute type tag" in capsys.readouterr().err
    assert main(["plan", "--config", str(tmp_path / "none.toml"), "--image", str(image)]) == EXIT_USAGE


def test_schema_is_json_schema_of_the_rules(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "Rules"
    assert set(schema["required"]) == {"buckets", "sources", "tables"}


def test_run_without_a_config_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RECONCILER_CONFIG", raising=False)
    assert main(["run"]) == EXIT_USAGE
    assert "config" in capsys.readouterr().err


def test_sigterm_ends_run_even_before_the_worker_installs_its_handlers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As PID 1 a signal without a handler is ignored; run handles SIGTERM from its first line."""
    seen: list[object] = []

    def fake_asyncio_run(coroutine: Coroutine[Any, Any, None]) -> None:
        coroutine.close()  # the worker never starts: only the handler in place at that moment matters
        seen.append(signal.getsignal(signal.SIGTERM))

    monkeypatch.setattr(asyncio, "run", fake_asyncio_run)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        assert main(["run", "--config", str(DEMO_RULES)]) == 0
        (handler,) = seen
        assert callable(handler)
        with pytest.raises(SystemExit) as exited:
            handler(signal.SIGTERM, None)
        assert exited.value.code == 128 + signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.fixture(autouse=True)
def _own_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """`run` registers its metrics on the process-wide registry: one of its own for each test."""
    monkeypatch.setattr("reconciler.app.REGISTRY", CollectorRegistry())


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("reconciler: ")
    return lines[0]


def test_files_that_are_not_utf8_or_nest_too_deep_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    latin = tmp_path / "rules.toml"
    latin.write_bytes(b'buckets = ["caf\xe9"]\n')
    assert main(["plan", "--config", str(latin), "--image", str(_image(tmp_path))]) == EXIT_USAGE
    assert "is not UTF-8 text" in _one_line(capsys.readouterr().err)

    image = tmp_path / "latin.json"
    image.write_bytes(b'{"transcript_id": {"S": "caf\xe9"}}')
    assert main(["plan", "--config", str(DEMO_RULES), "--image", str(image)]) == EXIT_USAGE
    assert "is not UTF-8 text" in _one_line(capsys.readouterr().err)

    deep = tmp_path / "deep.json"
    deep.write_text('{"transcript_id": ' + '{"M": {"a": ' * 5000 + '{"S": "x"}' + "}}" * 5000 + "}")
    assert main(["plan", "--config", str(DEMO_RULES), "--image", str(deep)]) == EXIT_USAGE
    _one_line(capsys.readouterr().err)


def test_a_bad_log_level_names_its_variable_in_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECONCILER_LOG_LEVEL", "LOUD")
    assert main(["run", "--config", str(DEMO_RULES)]) == EXIT_USAGE
    line = _one_line(capsys.readouterr().err)
    assert "RECONCILER_LOG_LEVEL" in line
    assert "CRITICAL, ERROR, WARNING, INFO, DEBUG" in line


@pytest.mark.parametrize("host", ["127.0.0.1", "192.0.2.1"])  # a busy port; an address not on this host
def test_a_port_that_cannot_be_served_is_a_one_line_error(
    host: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Binding fails before any AWS call is made; nothing is sent anywhere."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        args = ["run", "--config", str(DEMO_RULES), "--http-host", host, "--http-port", str(port)]
        assert main(args) == EXIT_USAGE
    line = _one_line(capsys.readouterr().err)
    assert f"cannot serve HTTP on {host}:{port}" in line


def test_missing_credentials_at_start_are_a_preflight_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask the instance metadata service
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # never reached: signing fails first
    assert main(["run", "--config", str(DEMO_RULES), "--http-port", "0", "--create-tables"]) == EXIT_PREFLIGHT
    err = capsys.readouterr().err  # the JSON log lines first, then the summary
    assert err.splitlines()[-2:] == [
        "reconciler: pre-flight found 1 problem:",
        "  AWS credentials: no usable AWS credentials: NoCredentialsError (none in the default chain)",
    ]
