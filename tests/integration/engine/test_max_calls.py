"""``max_calls``: a worker runs a function at most N times, then exits and is replaced.

Ray's documented behaviour (``ray.remote``): "the maximum number of times that a given
worker can execute the given remote function before it must exit"; by default there is
no limit for CPU tasks and the limit is 1 for GPU tasks, so GPU memory a library keeps
goes back when the worker exits. The pure decisions are tested in
``tests/unit/engine/test_dispatch_max_calls.py``; here real workers run.
"""

from __future__ import annotations

import os
from collections import Counter

import pytest

import heliostat as hs


@hs.remote(max_calls=2)
def pid_twice() -> int:
    return os.getpid()


@hs.remote
def pid_any() -> int:
    return os.getpid()


@hs.remote(num_gpus=1)
def pid_on_gpu() -> int:
    return os.getpid()


@hs.remote(num_cpus=0)
def nothing() -> int:
    return 0


@hs.remote(num_cpus=1, num_gpus=1, max_calls=1, max_retries=0)
def holds_the_gpu() -> list[object]:
    return [nothing.remote()]


def test_worker_is_replaced_after_max_calls(fresh_runtime) -> None:
    fresh_runtime(num_cpus=1)
    pids = [hs.get(pid_twice.remote()) for _ in range(6)]
    counts = Counter(pids)
    assert len(counts) == 3, pids
    assert set(counts.values()) == {2}  # each worker ran exactly two calls
    assert os.getpid() not in counts


def test_functions_without_max_calls_keep_their_worker(fresh_runtime) -> None:
    fresh_runtime(num_cpus=1)
    assert len({hs.get(pid_any.remote()) for _ in range(5)}) == 1


def test_gpu_tasks_get_a_fresh_worker_each_call_by_default(fresh_runtime) -> None:
    fresh_runtime(num_cpus=2, num_gpus=1)
    assert pid_on_gpu.task_options.max_calls == 1
    pids = [hs.get(pid_on_gpu.remote()) for _ in range(3)]
    assert len(set(pids)) == 3


def test_max_calls_gives_the_resources_back(fresh_runtime) -> None:
    # Ray's test_max_calls_releases_resources: every call needs the one GPU again.
    fresh_runtime(num_cpus=2, num_gpus=1)
    for _ in range(5):
        (inner,) = hs.get(holds_the_gpu.remote(), timeout=60)
        assert hs.get(inner, timeout=60) == 0


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"max_calls": 1.5}, TypeError),
        ({"max_calls": "1"}, TypeError),
        ({"max_calls": True}, TypeError),
        ({"max_calls": -1}, ValueError),
    ],
    ids=repr,
)
def test_max_calls_is_validated(options, error) -> None:
    with pytest.raises(error, match="max_calls"):
        hs.remote(**options)(lambda: None)


def test_max_calls_zero_or_none_means_no_limit() -> None:
    assert hs.remote(max_calls=0)(lambda: None).task_options.max_calls == 0
    assert hs.remote(max_calls=None)(lambda: None).task_options.max_calls == 0


def test_max_calls_cannot_change_in_options() -> None:
    with pytest.raises(ValueError, match="max_calls"):
        pid_any.options(max_calls=3)
    # A GPU function keeps its per-call worker through .options() (fixed at decoration).
    assert pid_on_gpu.options(num_cpus=2).task_options.max_calls == 1


def test_max_calls_on_an_actor_class_is_refused() -> None:
    class Plain:
        pass

    with pytest.raises(ValueError, match="max_calls is an option of remote functions"):
        hs.remote(max_calls=1)(Plain)
