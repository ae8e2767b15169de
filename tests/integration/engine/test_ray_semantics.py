"""Core semantics a ported Ray program relies on (issue 9, "semantics that are wrong").

Each test states Ray's documented behaviour and checks heliostat against it with real
worker processes.
"""

from __future__ import annotations

import gc
import logging
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import heliostat as hs
from heliostat.engine import current_client
from heliostat.exceptions import (
    ActorDiedError,
    GetTimeoutError,
    TaskCancelledError,
    TaskError,
    WorkerCrashedError,
)

# --- helpers at module level (importable by reference in workers) -----------------------


@hs.remote
def fail(message: str) -> None:
    raise ValueError(message)


@hs.remote
def identity(value: object) -> object:
    return value


@hs.remote
class Registry:
    """Holds values that tasks hand over to the test (refs nested in lists stay refs)."""

    def __init__(self) -> None:
        self.items: list[object] = []

    def put(self, item: object) -> None:
        self.items.append(item)

    def all(self) -> list[object]:
        return list(self.items)


@hs.remote
class Recorder:
    def __init__(self) -> None:
        self.seen: list[object] = []

    def record(self, item: object) -> list[object]:
        self.seen.append(item)
        return list(self.seen)


# --- 1. exceptions keep their class -------------------------------------------------------


def test_exception_class_defined_in_a_function_keeps_its_type(runtime) -> None:
    class LocalError(Exception):
        pass

    @hs.remote(max_retries=0)
    def raise_local() -> None:
        raise LocalError("local", 7)

    with pytest.raises(LocalError) as info:
        hs.get(raise_local.remote(), timeout=30)
    err = info.value
    assert isinstance(err, TaskError)
    assert type(err.cause) is LocalError
    assert err.cause.args == ("local", 7)


def test_exception_class_from_the_driver_main_keeps_its_type(tmp_path: Path) -> None:
    script = tmp_path / "main_error.py"
    script.write_text(
        textwrap.dedent(
            """
            import heliostat as hs

            class MainError(Exception):
                pass

            @hs.remote(max_retries=0)
            def boom():
                raise MainError("from main")

            hs.init(num_cpus=1)
            try:
                hs.get(boom.remote(), timeout=30)
            except MainError as err:
                assert type(err.cause) is MainError, type(err.cause)
                print("caught", err.cause.args[0])
            finally:
                hs.shutdown()
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "caught from main" in done.stdout


class TwoArgError(Exception):
    """Pickles, but does not unpickle: its __init__ wants two arguments, args has one."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"two args {a}/{b}")


@hs.remote(max_retries=0)
def raise_two_arg() -> None:
    raise TwoArgError(1, 2)


def test_exception_that_cannot_travel_becomes_a_clear_wrapper(runtime) -> None:
    with pytest.raises(TaskError) as info:
        hs.get(raise_two_arg.remote(), timeout=30)
    err = info.value
    assert err.cause is None
    text = str(err)
    assert "TwoArgError: two args 1/2" in text  # names the type and the message
    assert "raise TwoArgError(1, 2)" in text  # with the remote traceback


# --- 2. get fails fast ----------------------------------------------------------------


def test_get_raises_a_ready_error_even_if_another_ref_never_finishes(runtime) -> None:
    never = current_client().promise()  # never fulfilled
    bad = fail.remote("first")
    with pytest.raises(ValueError, match="first"):
        hs.get([never, bad], timeout=30)


def test_get_raises_an_error_that_arrives_while_it_waits(runtime) -> None:
    client = current_client()
    never = client.promise()
    message = client.promise()
    failing = fail.remote(message)  # fails once its argument arrives
    # The argument arrives from another thread while get waits (or just before).
    feeder = threading.Thread(target=client.fulfill, args=(message, "later"))
    feeder.start()
    try:
        with pytest.raises(ValueError, match="later"):
            hs.get([never, failing], timeout=30)
    finally:
        feeder.join()


# --- 3. actor calls: per-caller ordering -------------------------------------------------


@hs.remote
def call_from_task(actor: object, item: object) -> list[object]:
    return hs.get(actor.record.remote(item), timeout=30)  # type: ignore[attr-defined]


def test_actor_call_of_another_caller_is_not_blocked_by_an_unready_argument(runtime) -> None:
    recorder = Recorder.remote()
    gate = current_client().promise()
    blocked = recorder.record.remote(gate)  # the driver's call waits for its argument
    behind = recorder.record.remote("driver-second")  # same caller: must stay behind
    # Another caller's call runs now (Ray orders calls per caller only).
    assert hs.get(call_from_task.remote(recorder, "other"), timeout=30) == ["other"]
    ready, _ = hs.wait([behind], timeout=0.5)
    assert ready == []  # submission order within one caller is kept
    current_client().fulfill(gate, "gate")
    assert hs.get(blocked, timeout=30) == ["other", "gate"]
    assert hs.get(behind, timeout=30) == ["other", "gate", "driver-second"]


# --- 4. recursive cancel -------------------------------------------------------------------


@hs.remote
def parent_task(registry: object, gate_box: list[object]) -> object:
    child = identity.remote(gate_box[0])  # waits for the gate
    hs.get(registry.put.remote([child]), timeout=30)  # type: ignore[attr-defined]
    return hs.get(child)


def _start_parent(wait_for) -> tuple[object, object, object]:
    registry = Registry.remote()
    gate = current_client().promise()
    parent = parent_task.remote(registry, [gate])
    items = wait_for(
        lambda: hs.get(registry.all.remote(), timeout=30),
        timeout=30,
        what="the parent task to submit its child",
    )
    return parent, items[0][0], gate


def test_recursive_cancel_cancels_the_children_of_the_task(runtime, wait_for) -> None:
    parent, child, _gate = _start_parent(wait_for)
    hs.cancel(parent)  # recursive=True is the default, as in Ray
    with pytest.raises(TaskCancelledError):
        hs.get(parent, timeout=30)
    with pytest.raises(TaskCancelledError):
        hs.get(child, timeout=30)


def test_non_recursive_cancel_leaves_the_children_running(runtime, wait_for) -> None:
    parent, child, gate = _start_parent(wait_for)
    hs.cancel(parent, recursive=False)
    with pytest.raises(TaskCancelledError):
        hs.get(parent, timeout=30)
    current_client().fulfill(gate, "still here")
    assert hs.get(child, timeout=30) == "still here"


def test_cancel_refuses_a_non_bool_recursive(runtime) -> None:
    ref = identity.remote(1)
    with pytest.raises(TypeError, match="recursive"):
        hs.cancel(ref, recursive="no")  # type: ignore[arg-type]


# --- 5. sys.exit and exit_actor ----------------------------------------------------------


@hs.remote(max_retries=0)
def exit_task(code: int) -> None:
    sys.exit(code)


def test_sys_exit_in_a_task_ends_its_worker(runtime) -> None:
    with pytest.raises(WorkerCrashedError, match=r"sys\.exit\(3\)"):
        hs.get(exit_task.remote(3), timeout=30)
    assert hs.get(identity.remote("after"), timeout=30) == "after"


@hs.remote(max_restarts=1)
class Exiter:
    def __init__(self) -> None:
        self.calls = 0

    def count(self) -> int:
        self.calls += 1
        return self.calls

    def pid(self) -> int:
        return os.getpid()

    def quit(self) -> None:
        sys.exit(0)

    def leave(self) -> None:
        hs.actor.exit_actor()


def test_sys_exit_in_an_actor_method_kills_the_actor_which_restarts(runtime) -> None:
    actor = Exiter.remote()
    assert hs.get(actor.count.remote(), timeout=30) == 1
    first_pid = hs.get(actor.pid.remote(), timeout=30)
    with pytest.raises(ActorDiedError):
        hs.get(actor.quit.remote(), timeout=30)
    assert hs.get(actor.count.remote(), timeout=30) == 1  # a fresh instance
    assert hs.get(actor.pid.remote(), timeout=30) != first_pid
    with pytest.raises(ActorDiedError):  # its one restart is spent
        hs.get(actor.quit.remote(), timeout=30)
    with pytest.raises(ActorDiedError):
        hs.get(actor.count.remote(), timeout=30)


def test_exit_actor_ends_the_actor_without_restart(runtime) -> None:
    actor = Exiter.remote()
    assert hs.get(actor.count.remote(), timeout=30) == 1
    with pytest.raises(ActorDiedError):
        hs.get(actor.leave.remote(), timeout=30)
    with pytest.raises(ActorDiedError, match="exit_actor"):
        hs.get(actor.count.remote(), timeout=30)


def test_exit_actor_outside_an_actor_is_a_type_error(runtime) -> None:
    with pytest.raises(TypeError, match="inside an actor"):
        hs.actor.exit_actor()


# --- 6. class attributes of a @remote class ---------------------------------------------


@hs.remote
class WithConstant:
    LIMIT = 7

    def limit(self) -> int:
        return WithConstant.LIMIT * 2


def test_class_attribute_of_an_actor_class_reads_everywhere(runtime) -> None:
    assert WithConstant.LIMIT == 7
    actor = WithConstant.remote()
    assert hs.get(actor.limit.remote(), timeout=30) == 14
    with pytest.raises(AttributeError, match="no attribute 'MISSING'"):
        _ = WithConstant.MISSING


def test_subclassing_a_remote_class_is_refused_clearly() -> None:
    with pytest.raises(TypeError, match="inheriting from a @remote class is not allowed"):

        class Sub(WithConstant):  # type: ignore[misc,valid-type]
            pass


# --- 7. max_task_retries -------------------------------------------------------------------


@hs.remote
class CrashOnce:
    def crash_once(self, marker: str) -> int:
        if not os.path.exists(marker):
            Path(marker).write_text("crashed")
            os._exit(1)
        return os.getpid()


def test_call_in_flight_is_retried_on_the_restarted_actor(runtime, tmp_path: Path) -> None:
    actor = CrashOnce.options(max_restarts=1, max_task_retries=1).remote()
    pid = hs.get(actor.crash_once.remote(str(tmp_path / "crashed")), timeout=30)
    assert pid != os.getpid()
    assert (tmp_path / "crashed").exists()


def test_call_in_flight_fails_without_max_task_retries(runtime, tmp_path: Path) -> None:
    actor = CrashOnce.options(max_restarts=1).remote()
    with pytest.raises(ActorDiedError):
        hs.get(actor.crash_once.remote(str(tmp_path / "crashed")), timeout=30)
    # The actor itself was restarted; a new call runs.
    assert hs.get(actor.crash_once.remote(str(tmp_path / "crashed")), timeout=30) > 0


# --- 8. arguments checked at .remote() --------------------------------------------------


@hs.remote
def two(a: int, b: int = 2) -> int:
    return a + b


@hs.remote
class Adder:
    def __init__(self, base: int) -> None:
        self.base = base

    def add(self, x: int, *, times: int = 1) -> int:
        return self.base + x * times

    @staticmethod
    def static(x: int) -> int:
        return x


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((1, 2, 3), {}), ((1,), {"c": 3}), ((), {}), ((1,), {"a": 1})],
    ids=["too-many", "unknown-keyword", "missing", "twice"],
)
def test_task_arguments_that_do_not_fit_raise_type_error_at_remote(runtime, args, kwargs) -> None:
    with pytest.raises(TypeError, match=r"two\.remote\(\)"):
        two.remote(*args, **kwargs)


def test_fitting_task_arguments_still_run(runtime) -> None:
    assert hs.get([two.remote(1), two.remote(1, 5), two.remote(b=1, a=4)], timeout=30) == [
        3,
        6,
        5,
    ]


def test_actor_arguments_that_do_not_fit_raise_type_error_at_remote(runtime) -> None:
    with pytest.raises(TypeError, match=r"Adder\.remote\(\)"):
        Adder.remote()
    adder = Adder.remote(10)
    with pytest.raises(TypeError, match=r"Adder\.add\.remote\(\)"):
        adder.add.remote(1, 2)
    with pytest.raises(TypeError, match=r"Adder\.add\.remote\(\)"):
        adder.add.remote(1, nope=2)
    with pytest.raises(TypeError, match=r"Adder\.static\.remote\(\)"):
        adder.static.remote()
    assert hs.get(adder.add.remote(1, times=3), timeout=30) == 13
    assert hs.get(adder.static.remote(4), timeout=30) == 4


# --- 9. wait([]) ---------------------------------------------------------------------------


def test_wait_on_an_empty_list_returns_two_empty_lists(runtime) -> None:
    assert hs.wait([]) == ([], [])
    assert hs.wait([], timeout=0) == ([], [])


def test_init_token_without_a_cluster_is_refused() -> None:
    with pytest.raises(ValueError, match="token= is the cluster token for joining a cluster"):
        hs.init(num_cpus=1, token="s3cret")
    with pytest.raises(TypeError, match="token must be str, not bytes") as info:
        hs.init(num_cpus=1, token=b"s3cret")
    assert "s3cret" not in str(info.value)


def test_wait_fetch_local_is_a_bool(runtime) -> None:
    ref = hs.put(1)
    assert hs.wait([ref], fetch_local=False) == ([ref], [])
    with pytest.raises(TypeError, match="fetch_local must be a bool, not str"):
        hs.wait([ref], fetch_local="no")


# --- 10. unhandled errors are logged -----------------------------------------------------


@hs.remote(max_retries=0)
def fail_never_fetched() -> None:
    raise KeyError("nobody looked")


@hs.remote(max_retries=0)
def fail_fetched() -> None:
    raise KeyError("seen by get")


def test_dropped_failed_result_is_logged_unless_get_saw_it(runtime, wait_for, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="heliostat")
    seen = fail_fetched.remote()
    with pytest.raises(KeyError):
        hs.get(seen, timeout=30)
    del seen
    unseen = fail_never_fetched.remote()
    hs.wait([unseen], timeout=30)
    del unseen
    gc.collect()
    hs.get(identity.remote(None), timeout=30)  # an API call reports the releases

    def logged() -> list[str]:
        return [r.getMessage() for r in caplog.records if "Unhandled error" in r.getMessage()]

    messages = wait_for(logged, timeout=10, what="the unhandled error to be logged")
    assert any(
        "fail_never_fetched" in m and "KeyError" in m and "nobody looked" in m for m in messages
    )
    assert not any("fail_fetched" in m for m in messages)  # released first, never logged
    assert all(r.levelno == logging.ERROR for r in caplog.records if "Unhandled" in r.message)


# --- 11. option values of the wrong type ------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"num_cpus": "2"},
        {"num_cpus": True},
        {"num_returns": 1.5},
        {"num_returns": True},
        {"max_retries": "3"},
        {"name": 3},
        {"resources": ["db"]},
        {"resources": {"db": "1"}},
        {"scheduling_strategy": 5},
    ],
    ids=repr,
)
def test_task_option_of_the_wrong_type_is_a_type_error(options) -> None:
    with pytest.raises(TypeError, match=next(iter(options))):
        identity.options(**options)
    with pytest.raises(TypeError):
        hs.remote(**options)(lambda: None)


@pytest.mark.parametrize(
    "options",
    [
        {"max_restarts": "1"},
        {"max_task_retries": 1.5},
        {"max_concurrency": "2"},
        {"name": 1},
        {"namespace": 2},
        {"get_if_exists": "yes"},
        {"num_cpus": True},
        {"resources": "db"},
    ],
    ids=repr,
)
def test_actor_option_of_the_wrong_type_is_a_type_error(options) -> None:
    with pytest.raises(TypeError, match=next(iter(options))):
        Recorder.options(**options)


@pytest.mark.parametrize(
    ("target", "options"),
    [
        ("task", {"max_retries": -2}),
        ("task", {"num_cpus": -1}),
        ("actor", {"max_concurrency": 0}),
        ("actor", {"max_task_retries": -2}),
    ],
    ids=repr,
)
def test_option_of_the_right_type_but_bad_value_is_a_value_error(target, options) -> None:
    with pytest.raises(ValueError):
        if target == "task":
            identity.options(**options)
        else:
            Recorder.options(**options)


def test_get_timeout_still_applies_without_errors(runtime) -> None:
    never = current_client().promise()
    with pytest.raises(GetTimeoutError):
        hs.get([never, identity.remote(1)], timeout=0.3)
