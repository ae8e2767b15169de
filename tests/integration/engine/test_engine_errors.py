"""Errors: task exceptions, unpicklable arguments, misuse, worker crashes and retries."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

import heliostat as hs
from heliostat.exceptions import (
    SerializationError,
    TaskError,
    WorkerCrashedError,
)


class InventoryError(Exception):
    """An application error defined by the user, with a field of its own."""

    def __init__(self, message: str, sku: str = "") -> None:
        super().__init__(message)
        self.sku = sku


class PairError(Exception):
    """A user error whose constructor takes two required arguments."""

    def __init__(self, left: int, right: int) -> None:
        super().__init__(left, right)
        self.left = left
        self.right = right


@hs.remote
def fail_with_pair_error():
    raise PairError(1, 2)


@hs.remote
def fail_with_value_error(x):
    raise ValueError(f"bad input {x}")


@hs.remote
def fail_with_custom_error():
    raise InventoryError("out of stock", sku="A-17")


@hs.remote
def fail_via_nested_task():
    return hs.get(fail_with_value_error.remote("inner"))


@hs.remote
def take(value):
    return "ran"


def _count_attempt(directory: str) -> int:
    """Record one attempt as a new file in ``directory``; return how many there are now."""
    path = Path(directory)
    n = len(list(path.iterdir())) + 1
    (path / f"attempt-{n}-{os.getpid()}").touch()
    return n


@hs.remote
def crash_on_first_attempt(directory):
    if _count_attempt(directory) == 1:
        os._exit(1)
    return "survived"


@hs.remote
def always_crash(directory):
    _count_attempt(directory)
    os._exit(1)


@hs.remote
def flaky(directory, failures, exc_type):
    if _count_attempt(directory) <= failures:
        raise exc_type("flaky failure")
    return "ok"


def _attempts(directory: Path) -> int:
    return len(list(directory.iterdir()))


# --- exceptions in tasks --------------------------------------------------------------


def test_task_exception_is_task_error_and_original_class(runtime) -> None:
    with pytest.raises(TaskError) as info:
        hs.get(fail_with_value_error.remote(3))
    err = info.value
    assert isinstance(err, ValueError)
    assert isinstance(err.cause, ValueError)
    assert err.args == ("bad input 3",)
    text = str(err)
    assert "fail_with_value_error" in text
    assert "Traceback" in text
    assert "bad input 3" in text
    assert "fail_with_value_error" in err.remote_traceback


def test_task_exception_can_be_caught_as_original_class(runtime) -> None:
    with pytest.raises(ValueError, match="bad input 5"):
        hs.get(fail_with_value_error.remote(5))


def test_custom_exception_class_is_preserved_with_its_fields(runtime) -> None:
    with pytest.raises(InventoryError) as info:
        hs.get(fail_with_custom_error.remote())
    err = info.value
    assert isinstance(err, TaskError)
    assert err.sku == "A-17"
    assert "fail_with_custom_error" in str(err)
    assert "out of stock" in str(err)


def test_exception_with_required_init_args_surfaces_as_task_error(runtime) -> None:
    with pytest.raises(TaskError) as info:
        hs.get(fail_with_pair_error.remote())
    err = info.value
    assert isinstance(err, PairError)
    assert (err.left, err.right) == (1, 2)
    assert err.cause.args == (1, 2)
    assert "fail_with_pair_error" in str(err)


def test_error_from_nested_task_keeps_the_original_class(runtime) -> None:
    with pytest.raises(TaskError) as info:
        hs.get(fail_via_nested_task.remote())
    err = info.value
    assert isinstance(err, ValueError)
    assert "bad input inner" in str(err)
    assert "fail_via_nested_task" in str(err)


def test_downstream_task_of_a_failed_task_fails_with_the_same_error(runtime) -> None:
    with pytest.raises(ValueError, match="bad input up"):
        hs.get(take.remote(fail_with_value_error.remote("up")))


# --- misuse ---------------------------------------------------------------------------


def test_unpicklable_argument_raises_at_remote_naming_it(runtime) -> None:
    with pytest.raises(SerializationError) as info:
        take.remote(threading.Lock())
    assert isinstance(info.value, TypeError)
    message = str(info.value)
    assert "'value'" in message
    assert "lock" in message.lower()


def test_unpicklable_keyword_argument_is_named(runtime) -> None:
    with pytest.raises(SerializationError, match="'value'"):
        take.remote(value=threading.Lock())


def test_calling_remote_function_directly_raises_type_error() -> None:
    with pytest.raises(TypeError, match=r"\.remote\("):
        take(1)


def test_get_of_non_ref_raises_type_error(runtime) -> None:
    with pytest.raises(TypeError):
        hs.get(5)
    with pytest.raises(TypeError):
        hs.get([hs.put(1), 5])


def test_api_before_init_raises_not_initialized(monkeypatch) -> None:
    # With automatic init turned off (by default .remote() and put() start a runtime,
    # as in Ray: see test_ray_api_surface.py).
    monkeypatch.setenv("HELIOSTAT_AUTO_INIT", "0")
    hs.shutdown()
    with pytest.raises(hs.exceptions.NotInitializedError):
        hs.put(1)
    with pytest.raises(hs.exceptions.NotInitializedError):
        take.remote(1)


# --- worker crashes and retries ---------------------------------------------------------


def test_crashed_worker_task_is_retried(fresh_runtime, tmp_path) -> None:
    fresh_runtime()
    assert hs.get(crash_on_first_attempt.remote(str(tmp_path)), timeout=60) == "survived"
    assert _attempts(tmp_path) == 2


def test_crashed_worker_without_retries_raises_worker_crashed(fresh_runtime, tmp_path) -> None:
    fresh_runtime()
    ref = crash_on_first_attempt.options(max_retries=0).remote(str(tmp_path))
    with pytest.raises(WorkerCrashedError) as info:
        hs.get(ref, timeout=60)
    assert "crash_on_first_attempt" in str(info.value)
    assert _attempts(tmp_path) == 1
    # The node replaces the dead worker.
    assert hs.get(take.remote(1), timeout=60) == "ran"


def test_crashes_beyond_max_retries_raise_worker_crashed(fresh_runtime, tmp_path) -> None:
    fresh_runtime()
    with pytest.raises(WorkerCrashedError):
        hs.get(always_crash.options(max_retries=2).remote(str(tmp_path)), timeout=60)
    assert _attempts(tmp_path) == 3


def test_application_error_is_not_retried_by_default(runtime, tmp_path) -> None:
    with pytest.raises(KeyError):
        hs.get(flaky.remote(str(tmp_path), 1, KeyError), timeout=60)
    assert _attempts(tmp_path) == 1


def test_retry_exceptions_true_retries_application_errors(runtime, tmp_path) -> None:
    ref = flaky.options(retry_exceptions=True, max_retries=3).remote(str(tmp_path), 2, ValueError)
    assert hs.get(ref, timeout=60) == "ok"
    assert _attempts(tmp_path) == 3


def test_retry_exceptions_true_gives_up_after_max_retries(runtime, tmp_path) -> None:
    ref = flaky.options(retry_exceptions=True, max_retries=1).remote(str(tmp_path), 5, ValueError)
    with pytest.raises(ValueError, match="flaky failure"):
        hs.get(ref, timeout=60)
    assert _attempts(tmp_path) == 2


def test_retry_exceptions_list_retries_listed_class(runtime, tmp_path) -> None:
    ref = flaky.options(retry_exceptions=[ValueError]).remote(str(tmp_path), 1, ValueError)
    assert hs.get(ref, timeout=60) == "ok"
    assert _attempts(tmp_path) == 2


def test_retry_exceptions_list_does_not_retry_other_classes(runtime, tmp_path) -> None:
    ref = flaky.options(retry_exceptions=[ValueError]).remote(str(tmp_path), 1, KeyError)
    with pytest.raises(KeyError):
        hs.get(ref, timeout=60)
    assert _attempts(tmp_path) == 1
