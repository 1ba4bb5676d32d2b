"""`karma-trio cli` turns words into requests: shorthands, `call`, bare ops, raw JSON."""

from __future__ import annotations

import pytest

from karma.protocol.optable import CLASS_BY_TAG
from karma.tools import completion
from karma.tools.cli_client import SHORTHANDS, UsageError, parse_command, split_line


def test_sum_shorthand_is_counter_sum_with_the_series_as_text() -> None:
    assert parse_command(["sum", "api_requests", "42"]) == {
        "op": "counter.sum",
        "series": "api_requests",
        "key": 42,
    }
    # a series named like a number stays a string
    assert parse_command(["sum", "2026", "1"])["series"] == "2026"


def test_field_values_are_json_when_they_parse_and_strings_otherwise() -> None:
    request = parse_command(
        ["call", "counter.series", "series=api", "key=7", 'range={"from":20260501,"to":20260531}']
    )
    assert request == {
        "op": "counter.series",
        "series": "api",
        "key": 7,
        "range": {"from": 20260501, "to": 20260531},
    }
    assert parse_command(["tree.info", 'series="123"'])["series"] == "123"
    assert parse_command(["tree.info", "series=NaN"])["series"] == "NaN"  # not JSON's NaN


def test_a_raw_json_request_is_sent_as_given() -> None:
    assert parse_command(['{"op":"tree.list"}']) == {"op": "tree.list"}


@pytest.mark.parametrize(
    "words",
    [[], ["sum"], ["sum", "a", "1", "2"], ["call"], ["tree.info", "series"], ["{nope"], ["[1]"]],
    ids=["empty", "sum-no-args", "sum-extra", "call-no-op", "no-equals", "bad-json", "json-array"],
)
def test_malformed_commands_are_usage_errors(words: list[str]) -> None:
    with pytest.raises(UsageError):
        parse_command(words)


def test_interactive_lines_split_outside_json() -> None:
    line = 'call counter.sum series="my series" range={"from": 1, "to": 2}  key=3'
    assert split_line(line) == [
        "call",
        "counter.sum",
        'series="my series"',
        'range={"from": 1, "to": 2}',
        "key=3",
    ]
    assert split_line(r'x s="a \" b" y') == ["x", r's="a \" b"', "y"]


def test_completion_offers_every_op_of_the_table_and_the_shorthands() -> None:
    completer = completion.Completer(SHORTHANDS)
    assert set(completer.candidates([], "")) >= set(CLASS_BY_TAG) | set(SHORTHANDS)
    assert "counter.sum" in completer.candidates([], "coun")
    assert completer.candidates(["call"], "tree.l") == ["tree.list"]
    assert completer.candidates(["counter.sum"], "s") == []


def test_help_names_an_ops_own_fields() -> None:
    assert completion.op_help("counter.sum") == "counter.sum: tree, series, key, range"
