"""``init()``'s Ray keywords, checked as a pure function (no runtime)."""

from __future__ import annotations

import json
import logging

import pytest

from heliostat.engine.init_options import (
    INIT_KEYWORDS_WITHOUT_EFFECT,
    check_init_options,
    parse_logging_level,
)
from heliostat.storage.packages import CodeSources


def test_defaults_change_nothing() -> None:
    opts = check_init_options()
    assert opts.gpus == 0.0
    assert opts.logging_level is None
    assert opts.log_to_driver is True
    assert opts.env_vars == {}
    assert opts.code == CodeSources() and opts.code.empty
    assert opts.temp_dir is None
    assert opts.without_effect == ()


def test_keywords_without_effect_are_named_sorted() -> None:
    opts = check_init_options(
        extra={"include_dashboard": False, "_system_config": {}, "job_config": object()}
    )
    assert opts.without_effect == ("_system_config", "include_dashboard", "job_config")
    assert "dashboard_host" in INIT_KEYWORDS_WITHOUT_EFFECT
    assert "_temp_dir" not in INIT_KEYWORDS_WITHOUT_EFFECT


def test_temp_dir_is_used_not_listed(tmp_path) -> None:
    opts = check_init_options(extra={"_temp_dir": tmp_path})
    assert opts.temp_dir == str(tmp_path)
    assert opts.without_effect == ()


def test_unknown_keyword_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="_not_a_ray_option"):
        check_init_options(extra={"_not_a_ray_option": 1})


@pytest.mark.parametrize(
    ("value", "level"),
    [("debug", logging.DEBUG), ("INFO", logging.INFO), (logging.ERROR, logging.ERROR)],
)
def test_logging_level_names_and_numbers(value, level) -> None:
    assert parse_logging_level(value) == level
    assert check_init_options(logging_level=value).logging_level == level


def test_logging_level_refusals() -> None:
    with pytest.raises(ValueError, match="loud"):
        parse_logging_level("loud")
    with pytest.raises(TypeError):
        parse_logging_level(True)
    with pytest.raises(TypeError):
        parse_logging_level(1.5)


def test_configure_logging_false_leaves_logging_alone() -> None:
    assert check_init_options(logging_level="debug", configure_logging=False).logging_level is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_gpus": "1"},
        {"num_gpus": True},
        {"log_to_driver": "false"},
        {"configure_logging": 0},
        {"local_mode": "no"},
        {"logging_format": 3},
        {"runtime_env": "env"},
        {"runtime_env": {"env_vars": {"A": 1}}},
        {"runtime_env": {"py_modules": "mod"}},
        {"runtime_env": {"py_modules": [3]}},
        {"runtime_env": {"working_dir": 3}},
        {"runtime_env": {"excludes": "*.csv"}},
        {"runtime_env": {"excludes": [1]}},
        {"runtime_env": {"config": []}},
        {"runtime_env": {"config": {"setup_timeout_seconds": "10"}}},
        {"runtime_env": {"config": {"eager_install": "no"}}},
        {"extra": {"dashboard_port": "8265"}},
        {"extra": {"include_dashboard": "yes"}},
        {"extra": {"_system_config": []}},
        {"extra": {"_temp_dir": 5}},
    ],
)
def test_wrong_types_are_type_errors(kwargs) -> None:
    with pytest.raises(TypeError):
        check_init_options(**kwargs)


def test_values_heliostat_cannot_honour_are_value_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="local_mode"):
        check_init_options(local_mode=True)
    with pytest.raises(ValueError, match="conda"):
        check_init_options(runtime_env={"conda": "env"})
    with pytest.raises(ValueError, match="remote URIs"):
        check_init_options(runtime_env={"working_dir": "s3://bucket/code.zip"})
    with pytest.raises(ValueError, match="does not exist"):
        check_init_options(runtime_env={"working_dir": str(tmp_path / "missing")})
    (tmp_path / "code.zip").write_bytes(b"PK")
    with pytest.raises(ValueError, match="not a directory"):
        check_init_options(runtime_env={"working_dir": str(tmp_path / "code.zip")})
    with pytest.raises(ValueError, match="neither a package"):
        check_init_options(runtime_env={"py_modules": [str(tmp_path / "code.zip")]})
    with pytest.raises(ValueError, match="built-in or compiled"):
        check_init_options(runtime_env={"py_modules": [__import__("_json")]})
    with pytest.raises(ValueError, match="unknown"):
        check_init_options(runtime_env={"config": {"timeout": 1}})
    with pytest.raises(ValueError, match="num_gpus"):
        check_init_options(num_gpus=-1)


def test_runtime_env_paths_and_env_vars(tmp_path) -> None:
    pkg = tmp_path / "pkgs" / "mypkg"
    pkg.mkdir(parents=True)
    opts = check_init_options(
        runtime_env={
            "env_vars": {"A": "1"},
            "working_dir": str(tmp_path),
            "py_modules": [str(pkg)],
        }
    )
    assert opts.env_vars == {"A": "1"}
    # Checked, not packed yet: absolute paths, in order, packed at init().
    assert opts.code == CodeSources(working_dir=str(tmp_path), py_modules=(str(pkg),))


def test_py_modules_take_module_objects_and_relative_paths(tmp_path, monkeypatch) -> None:
    (tmp_path / "single.py").write_text("")
    monkeypatch.chdir(tmp_path)
    opts = check_init_options(
        runtime_env={
            "py_modules": [json, "single.py"],
            "excludes": ["*.csv"],
            "config": {"setup_timeout_seconds": 30, "eager_install": False},
        }
    )
    assert opts.code.py_modules == (json.__path__[0], str(tmp_path / "single.py"))
    assert opts.code.excludes == ("*.csv",)
