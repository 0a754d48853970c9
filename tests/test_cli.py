"""The command line: plan (dry run), schema, and clear errors for bad input."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
from conftest import DEMO_RULES

from reconciler.cli import EXIT_UNSAFE, EXIT_USAGE, main


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
    assert main(["plan", "--config", str(DEMO_RULES), "--image", str(_image(tmp_path))]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["objects"] == ["s3://stt-uploads/acct-1/tr-1/audio.wav"]
    assert plan["prefixes"] == ["s3://stt-transcripts/acct-1/tr-1/"]
    assert [link["table"] for link in plan["links"]] == ["speech_outputs", "llm_requests"]
    assert plan["unsafe"] == []


def test_plan_exits_non_zero_when_a_target_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = _image(tmp_path, transcript_id={"S": "../other"})
    assert main(["plan", "--config", str(DEMO_RULES), "--image", str(image)]) == EXIT_UNSAFE
    assert json.loads(capsys.readouterr().out)["unsafe"][0]["reason"] == "unsafe_identifier"


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
