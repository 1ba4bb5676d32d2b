"""One option table drives parsing, --help and the configuration reference."""

from __future__ import annotations

import re
from pathlib import Path

import attrs
import pytest

from karma import config as cfg
from karma import config_cli, config_values

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "reference" / "configuration.md"


def test_every_option_has_a_config_field_and_back() -> None:
    assert {option.attr for option in cfg.OPTIONS} == {f.name for f in attrs.fields(cfg.Config)}


def test_option_defaults_are_the_config_defaults() -> None:
    defaults = cfg.Config()
    for option in cfg.OPTIONS:
        assert getattr(defaults, option.attr) == option.default, option.flag


def test_the_reference_page_lists_every_option_as_generated() -> None:
    text = REFERENCE.read_text()
    documented = set(re.findall(r"^\| `(--[a-z-]+)`", text, re.M))
    assert documented == {option.flag for option in cfg.OPTIONS}
    assert config_cli.reference_markdown() in text


def test_the_command_line_wins_over_the_environment() -> None:
    config = config_cli.load(["--port=9000"], {"KARMA_PORT": "7000", "KARMA_WAL": "false"})
    assert config.port == 9000
    assert config.wal is False


def test_space_separated_values_are_accepted() -> None:
    assert config_cli.load(["--role", "slave"], {}).role is config_values.Role.SLAVE


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--port=abc"], "--port"),
        (["--port=70000"], "--port"),
        (["--wal=maybe"], "--wal"),
        (["--role=leader"], "--role"),
        (["--read-timeout=-1"], "--read-timeout"),
        (["--wal-batch-size=0"], "--wal-batch-size"),
        (["--max-request-bytes=1e3"], "--max-request-bytes"),
        (["--bogus=1"], "--bogus"),
        (["--port"], "--port"),
    ],
)
def test_a_bad_value_names_its_option(argv: list[str], named: str) -> None:
    with pytest.raises(config_cli.ConfigError, match=re.escape(named)):
        config_cli.load(argv, {})


def test_a_bad_environment_value_names_its_variable() -> None:
    with pytest.raises(config_cli.ConfigError, match="KARMA_WAL_FSYNC"):
        config_cli.load([], {"KARMA_WAL_FSYNC": "yes"})


def test_help_mentions_every_flag() -> None:
    text = config_cli.help_text()
    for option in cfg.OPTIONS:
        assert option.flag in text
        assert option.env in text
