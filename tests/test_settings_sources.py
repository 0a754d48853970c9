"""The AWS Region comes from the usual places: a flag or RECONCILER_REGION, AWS_REGION, then botocore's own
chain (AWS_DEFAULT_REGION, the profile in the AWS config file); no Region anywhere is a one-line error. And a
misspelled RECONCILER_* variable is named, not silently ignored. Every setting is a flag and a variable from
one model, and a bad one is a one-line error naming both."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import structlog

from reconciler import cli
from reconciler.adapters.aws import AwsClients, AwsSettings
from reconciler.cli import main, warn_unknown_variables
from reconciler.errors import ConfigError
from reconciler.settings import Settings, unknown_variables


@pytest.fixture
def no_region(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "RECONCILER_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "config"
    config.write_text("[default]\n", encoding="utf-8")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    return config


def test_settings_leave_the_region_to_the_aws_chain_unless_told(
    no_region: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert Settings.model_validate({"config": "r.toml"}).region is None
    monkeypatch.setenv("AWS_REGION", "eu-north-1")
    assert Settings.model_validate({"config": "r.toml"}).region == "eu-north-1"
    monkeypatch.setenv("RECONCILER_REGION", "ap-south-2")
    assert Settings.model_validate({"config": "r.toml"}).region == "ap-south-2"


@pytest.fixture
def region_in_config_file(no_region: Path) -> None:
    no_region.write_text("[default]\nregion = eu-west-3\n", encoding="utf-8")


@pytest.mark.usefixtures("region_in_config_file")
async def test_the_region_in_the_aws_config_file_is_used() -> None:
    async with AwsClients(AwsSettings(region=None, credentials=("k", "s"))) as clients:
        assert clients.dynamodb.meta.region_name == "eu-west-3"
        assert clients.s3.meta.region_name == "eu-west-3"


async def test_no_region_anywhere_is_a_configuration_error_naming_where_to_set_one(no_region: Path) -> None:
    with pytest.raises(ConfigError, match="no AWS Region: set AWS_REGION"):
        async with AwsClients(AwsSettings(region=None, credentials=("k", "s"))):
            pass


def test_init_tables_without_a_region_says_so_in_one_line(
    no_region: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["init-tables"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    assert err[0].startswith("reconciler: no AWS Region")


def test_a_misspelled_reconciler_variable_is_named_with_the_setting_it_resembles() -> None:
    environ = {
        "RECONCILER_CONCURENCY": "64",
        "RECONCILER_CONCURRENCY": "32",
        "RECONCILER_REGION": "eu-west-1",
        "RECONCILER_WHATEVER_ELSE": "x",
        "AWS_REGION": "eu-west-1",
    }
    assert unknown_variables(environ) == [
        ("RECONCILER_CONCURENCY", "RECONCILER_CONCURRENCY"),
        ("RECONCILER_WHATEVER_ELSE", None),
    ]


def test_unknown_variables_are_logged_by_name_never_by_value() -> None:
    with structlog.testing.capture_logs() as events:
        warn_unknown_variables({"RECONCILER_LEASE_SECOND": "zq-planted-secret"})
    assert events == [
        {
            "event": "settings.unknown_variable",
            "log_level": "warning",
            "variable": "RECONCILER_LEASE_SECOND",
            "did_you_mean": "RECONCILER_LEASE_SECONDS",
        }
    ]


def test_every_setting_is_a_run_flag_and_a_flag_wins_over_its_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One model for both: a setting added to ``Settings`` is a flag of ``run`` without more code."""
    parser = cli._parser()
    run = next(
        action.choices["run"] for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    )
    flags = {option for action in run._actions for option in action.option_strings}
    assert {"--" + name.replace("_", "-") for name in Settings.model_fields} <= flags

    monkeypatch.setenv("RECONCILER_BATCH_SIZE", "10")
    monkeypatch.setenv("RECONCILER_LOG_JSON", "true")
    args = parser.parse_args(["run", "--config", "r.toml", "--batch-size", "20", "--no-log-json"])
    settings = cli.settings_from(args)
    assert (settings.batch_size, settings.log_json, settings.config) == (20, False, Path("r.toml"))
    assert cli.settings_from(parser.parse_args(["run", "--config", "r.toml"])).batch_size == 10


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        (
            ["--batch-size", "lots"],
            {},
            "--batch-size / RECONCILER_BATCH_SIZE: Input should be a valid integer",
        ),
        (
            [],
            {"RECONCILER_LOG_LEVEL": "LOUD"},
            "--log-level / RECONCILER_LOG_LEVEL: Value error, must be one of",
        ),
        (
            [],
            {"RECONCILER_TLS_POLICY": "none"},
            "--tls-policy / RECONCILER_TLS_POLICY: Input should be 'strict'",
        ),
    ],
)
def test_a_bad_setting_is_one_line_naming_its_flag_and_variable(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    env: dict[str, str],
    named: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["run", "--config", "r.toml", *argv]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("reconciler: invalid settings: ")
    assert named in err
