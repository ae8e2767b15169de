"""The CLI's pure helpers: argument values, late options, output."""

from __future__ import annotations

import argparse
import datetime as dt

import pyarrow as pa
import pytest

from heliostat.cli._util import (
    CliError,
    CommandParser,
    error_line,
    format_duration,
    format_utc,
    parse_call_args,
    parse_kwarg,
    parse_value,
    summarize_value,
    to_jsonable,
)
from heliostat.cli.run import _take_late_options


def test_values_are_json_when_they_parse_else_strings() -> None:
    assert parse_value("3") == 3
    assert parse_value("true") is True
    assert parse_value('{"a": [1, 2]}') == {"a": [1, 2]}
    assert parse_value("2026-11-21") == "2026-11-21"
    assert parse_value("hello world") == "hello world"


def test_call_args_split_keywords_from_positionals() -> None:
    args, kwargs = parse_call_args(["1", "day=2026-11-21", "n=[1]", "a-b=3", "=x"])
    assert args == [1, "a-b=3", "=x"]  # not identifier=...: positional
    assert kwargs == {"day": "2026-11-21", "n": [1]}


def test_a_keyword_given_twice_is_refused() -> None:
    with pytest.raises(CliError, match="'n' is given twice"):
        parse_call_args(["n=1", "n=2"])


def test_kwarg_options_need_an_identifier_key() -> None:
    assert parse_kwarg("region=eu") == ("region", "eu")
    with pytest.raises(CliError, match="KEY=VALUE"):
        parse_kwarg("noequals")
    with pytest.raises(CliError, match="KEY=VALUE"):
        parse_kwarg("1x=2")


def _ns(call_args: list[str]) -> argparse.Namespace:
    return argparse.Namespace(
        target="m:f", call_args=call_args, json=False, workflow_id=None, num_cpus=None
    )


def test_run_options_may_follow_the_target() -> None:
    ns = _ns(["a", "--id", "wf", "--json", "b=1", "--num-cpus=2", "--", "--id", "x"])
    assert _take_late_options(ns) == ["a", "b=1", "--id", "x"]
    assert (ns.workflow_id, ns.json, ns.num_cpus) == ("wf", True, 2.0)


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["--id"], "--id: expected one argument"),
        (["--num-cpus", "many"], "invalid float value: 'many'"),
        (["--verbose"], "unrecognized option '--verbose'"),
    ],
)
def test_bad_late_options_are_refused(items: list[str], message: str) -> None:
    with pytest.raises(CliError, match=message):
        _take_late_options(_ns(items))


def test_usage_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    parser = CommandParser(prog="heliostat thing")
    parser.add_argument("x", type=int)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["nope"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == (
        "heliostat: error: argument x: invalid int value: 'nope' (see 'heliostat thing --help')\n"
    )


def test_output_helpers() -> None:
    assert format_duration(None) == "-"
    assert format_duration(0.25) == "0.25 s"
    assert format_duration(0.0037) == "3.70 ms"  # a step's execution is often this short
    assert format_duration(0.0) == "0.00 s"
    assert format_utc(None) == "-"
    assert format_utc(dt.datetime(2026, 11, 21, 3, 0, 5)) == "2026-11-21 03:00:05 UTC"
    berlin = dt.timezone(dt.timedelta(hours=1))
    assert format_utc(dt.datetime(2026, 11, 21, 4, 0, tzinfo=berlin)) == "2026-11-21 03:00:00 UTC"
    assert format_duration(12.34) == "12.3 s"
    assert format_duration(245) == "4m 05s"
    assert format_duration(7380) == "2h 03m"
    wrapped = (
        "heliostat.exceptions.TaskError(ValueError): Task 'load' failed in worker "
        "pid=42: ValueError('boom')\n\nRemote traceback: ..."
    )
    assert error_line(wrapped) == "ValueError('boom')"
    assert error_line("KeyError: 'x'\nmore") == "KeyError: 'x'"
    assert error_line(None) == ""
    table = pa.table({"a": [1, 2, 3], "b": ["x", "y", "z"]})
    assert summarize_value(table) == "pyarrow.Table with 3 rows x 2 columns"
    assert summarize_value("x" * 500).endswith("...")
    assert to_jsonable({"a": [1]}) == {"a": [1]}
    assert to_jsonable(object()) is None
    assert to_jsonable(float("nan")) is None


def test_status_shows_byte_resources_as_sizes_and_counts_as_numbers() -> None:
    from heliostat.cli.runtime import _free, _resources

    total = {"CPU": 2.0, "db": 1.0, "memory": 16 * 2**30, "object_store_memory": 7.5 * 2**30}
    free = {"CPU": 0.5, "memory": 12 * 2**30, "object_store_memory": 7.5 * 2**30}
    assert _free(total, free) == (
        "CPU 0.5/2 free, db 0/1 free, memory 12.0/16.0 GiB free, "
        "object_store_memory 7.5/7.5 GiB free"
    )
    assert _resources(total) == "CPU 2, db 1, memory 16.0 GiB, object_store_memory 7.5 GiB"
    assert _free({}, {}) == "-" and _resources({}) == "-"
