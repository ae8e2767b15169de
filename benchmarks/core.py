"""Core micro-benchmarks for heliostat, optionally side by side with Ray.

Every workload is written once against a module object ``rt`` that is either
``heliostat`` or ``ray`` (both offer ``init``, ``shutdown``, ``remote``, ``get``,
``put`` and ``wait``). Each library runs in its own subprocess, so the two
runtimes never share an interpreter; the parent collects one JSON document
from each child and prints a single JSON object on stdout::

    {"machine": {...}, "heliostat": {...}, "ray": {...}, "ratios": {...}}

Progress lines go to stderr.

Usage::

    .venv/bin/python benchmarks/core.py                      # heliostat only
    .venv/bin/python benchmarks/core.py --peer ray           # heliostat and Ray
    .venv/bin/python benchmarks/core.py --only tasks_sync,get_large
    .venv-ray/bin/python benchmarks/core.py --lib ray        # one library, directly

Ray runs under ``--ray-python`` (default ``.venv-ray/bin/python``), heliostat
under ``--heliostat-python`` (default: the interpreter running this script).

Figures (medians of repetitions wherever a workload is repeated)
-----------------------------------------------------------------
Startup, measured in fresh subprocesses (median of ``STARTUP_REPS`` runs):

``import_s``
    Time of ``import <lib>`` inside a fresh interpreter (only the standard
    library has been imported before it).
``init_only_s``
    Time of ``<lib>.init(num_cpus=2)`` right after the import.
``init_s``
    ``import_s + init_only_s``.
``first_task_s``
    From the start of ``init(num_cpus=2)`` until the result of the first no-op
    task has come back to the driver. Includes ``init_only_s``; it is the honest
    "ready to work" figure for a runtime that starts its workers lazily.
``peak_rss_mb`` / ``num_processes``
    After init and 20 no-op tasks (so that workers exist) and a 1 s pause: the
    sum of the RSS of the driver and every process of the runtime, and how many
    processes that is. Counted: the driver and all its descendants (psutil,
    recursive), plus, for Ray, any other process whose command line mentions
    the Ray session directory (in practice Ray's processes are all descendants
    of the driver, and the extra set is empty; ``extra_processes`` says how
    many were added, null if the session directory could not be found).
    ``process_names`` lists what was counted. RSS counts shared pages (code, shared memory) once per
    process, so the sum overstates real use; ``pss_mb`` (proportional set size,
    Linux) is reported next to it as the fairer figure.

Throughput and latency, measured in one process after ``init(num_cpus=2)``.
Rates are the median of ``THROUGHPUT_REPS`` (3) rounds, each after warm-up:

``tasks_sync_per_s``
    No-op task, ``get`` each before submitting the next; 2,000 tasks or 2 s,
    whichever comes first.
``tasks_async_per_s``
    10,000 no-op tasks submitted, then one ``get`` of all of them.
``tasks_fanout_chain_s``
    A chain of 1,000 tasks, each taking the previous ref
    (``x = inc.remote(x)``); time from the first submit until the final ``get``.
``fanout200_reduce_s``
    200 tasks returning 1 and one task taking all 200 refs as top-level
    arguments (``reduce.remote(*refs)``) and summing them; time until the sum
    is back.
``actor_calls_sync_per_s`` / ``actor_calls_async_per_s``
    One actor with a no-op method: sync gets each call (2,000 calls or 2 s);
    async submits 10,000 calls, then gets them all.
``put_small_per_s`` / ``get_small_per_s``
    ``put`` of a small int (refs dropped at once); ``get`` of one already-put
    small int. 2,000 operations or 1 s each.
``get_large_ms`` / ``get_large_is_view`` / ``get_large_writeable``
    A 400 MB float64 array is put once; median time of ``get``. ``is_view`` is
    True when the returned array does not own its data (zero-copy from the
    object store), ``writeable`` whether numpy lets you write to it.
``task_numpy_arg_ms`` / ``numpy_sum_ms`` / ``task_numpy_overhead_ms``
    A 100 MB float64 array is put once; median over 20 runs (after 2 warm-up
    calls) of ``get(sum_task.remote(ref))``. ``numpy_sum_ms`` is a bare
    ``numpy.sum`` of the same array in the driver; the overhead is the
    difference.

Ratios (``--peer ray``): for every figure both libraries produced, how many
times better heliostat is than Ray; above 1 means heliostat is better. Rates
are divided heliostat / Ray, times, sizes and process counts Ray / heliostat.

A workload that fails or exceeds its time budget is recorded under ``errors``
in its library's section and the run goes on with the next one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RAY_PYTHON = REPO_ROOT / ".venv-ray" / "bin" / "python"
LIBS = ("heliostat", "ray")
NUM_CPUS = 2

STARTUP_REPS = 3
STARTUP_TIMEOUT_S = 60.0
WORKLOAD_TIMEOUT_S = 60
MAX_TIMEOUTS = 2  # after this many workloads time out, skip the rest
CHILD_TIMEOUT_S = 420.0

THROUGHPUT_REPS = 3
SYNC_MAX_N = 2000
SYNC_MAX_S = 2.0
SMALL_OBJ_MAX_N = 2000
SMALL_OBJ_MAX_S = 1.0
ASYNC_N = 10_000
CHAIN_LEN = 1000
FANOUT_N = 200
FANOUT_REPS = 5
CHAIN_REPS = 3
LARGE_BYTES = 400 * 1024 * 1024
LARGE_REPS = 7
NUMPY_ARG_BYTES = 100 * 1024 * 1024
NUMPY_ARG_WARMUP = 2
NUMPY_ARG_REPS = 20

Result = dict[str, Any]


def log(msg: str) -> None:
    """Print a progress line on stderr."""
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Remote bodies. Plain functions, wrapped with ``rt.remote`` at run time so the
# same code serves both libraries. Imports live inside the bodies so that the
# functions unpickle in a worker that has not imported numpy yet.
# --------------------------------------------------------------------------


def _noop() -> None:
    return None


def _one() -> int:
    return 1


def _inc(x: int) -> int:
    return x + 1


def _reduce(*xs: int) -> int:
    return sum(xs)


def _np_sum(arr: Any) -> float:
    return float(arr.sum())


class _Pinger:
    def ping(self) -> None:
        return None


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def import_lib(lib: str) -> Any:
    if lib == "ray":
        import ray

        return ray
    import heliostat

    return heliostat


def lib_version(rt: Any) -> str:
    return str(getattr(rt, "__version__", "unknown"))


def ms(seconds: float) -> float:
    return seconds * 1e3


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def rate_loop(op: Callable[[], object], max_n: int, max_s: float) -> float:
    """Run ``op`` until ``max_n`` calls or ``max_s`` seconds; return calls per second."""
    n = 0
    t0 = time.perf_counter()
    while n < max_n:
        op()
        n += 1
        if time.perf_counter() - t0 >= max_s:
            break
    return n / (time.perf_counter() - t0)


class WorkloadTimeout(Exception):
    """Raised in the main thread when a workload exceeds its budget."""


@contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    def _raise(signum: int, frame: FrameType | None) -> None:
        raise WorkloadTimeout(f"exceeded {seconds} s")

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# --------------------------------------------------------------------------
# Startup probe: runs in a fresh interpreter (``--probe``)
# --------------------------------------------------------------------------


def _ray_session_dir(rt: Any) -> str | None:
    try:
        node = rt._private.worker._global_node  # private API, best effort
        return str(node.get_session_dir_path())
    except Exception:  # report it, keep going
        return None


def _process_label(proc: Any) -> str:
    """Short, readable name: the executable, or the script for an interpreter."""
    try:
        cmdline: list[str] = proc.cmdline()
    except Exception:  # report it, keep going
        cmdline = []
    if not cmdline:
        return str(proc.name())
    exe = os.path.basename(cmdline[0])
    if exe.startswith("python"):
        script = next((a for a in cmdline[1:] if not a.startswith("-")), "")
        return f"python {os.path.basename(script)}".strip()
    return exe


def process_tree_memory(lib: str, rt: Any) -> Result:
    """RSS/PSS of the driver, its descendants, and (Ray) processes of its session."""
    import psutil

    me = psutil.Process()
    procs: dict[int, psutil.Process] = {me.pid: me}
    for child in me.children(recursive=True):
        procs[child.pid] = child
    extra = 0
    marker = _ray_session_dir(rt) if lib == "ray" else None
    if marker:
        for p in psutil.process_iter(["cmdline"]):
            if p.pid in procs:
                continue
            cmdline = " ".join(p.info.get("cmdline") or [])
            if marker in cmdline:
                procs[p.pid] = p
                extra += 1
    rss = 0
    pss = 0
    pss_ok = True
    names: list[str] = []
    for p in procs.values():
        try:
            rss += p.memory_info().rss
            names.append(_process_label(p))
            try:
                pss += getattr(p.memory_full_info(), "pss", 0)
            except (psutil.AccessDenied, AttributeError):
                pss_ok = False
        except psutil.NoSuchProcess:
            continue
    return {
        "peak_rss_mb": rss / 2**20,
        "pss_mb": pss / 2**20 if pss_ok else None,
        "num_processes": len(names),
        "extra_processes": extra if lib != "ray" or marker else None,
        "process_names": sorted(names),
    }


def startup_probe(lib: str) -> Result:
    t0 = time.perf_counter()
    rt = import_lib(lib)
    t1 = time.perf_counter()
    rt.init(num_cpus=NUM_CPUS)
    t2 = time.perf_counter()
    noop = rt.remote(_noop)
    rt.get(noop.remote())
    t3 = time.perf_counter()
    rt.get([noop.remote() for _ in range(20)])
    time.sleep(1.0)
    out: Result = {
        "import_s": t1 - t0,
        "init_only_s": t2 - t1,
        "init_s": t2 - t0,
        "first_task_s": t3 - t1,
    }
    out.update(process_tree_memory(lib, rt))
    rt.shutdown()
    return out


def run_process(
    cmd: list[str], timeout: float, env: dict[str, str], capture_stderr: bool = False
) -> tuple[int | None, str]:
    """Run ``cmd`` in its own process group; kill the whole group on timeout.

    Returns (exit code, or None on timeout; captured stderr). Stdout goes to our
    stderr so that library chatter never mixes with the JSON on stdout.
    """
    proc = subprocess.Popen(
        cmd,
        stdout=sys.stderr,
        stderr=subprocess.PIPE if capture_stderr else None,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        start_new_session=True,
    )
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return None, f"timed out after {timeout:.0f} s"
    return proc.returncode, stderr or ""


def run_startup(lib: str) -> Result:
    """Run the startup probe ``STARTUP_REPS`` times in fresh interpreters; medians."""
    runs: list[Result] = []
    for i in range(STARTUP_REPS):
        with tempfile.TemporaryDirectory() as tmp:
            out_path = Path(tmp) / "probe.json"
            cmd = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--lib",
                lib,
                "--probe",
                "--out",
                str(out_path),
            ]
            rc, stderr = run_process(
                cmd, STARTUP_TIMEOUT_S, env=child_env(lib), capture_stderr=True
            )
            if rc != 0 or not out_path.exists():
                last = (stderr.strip().splitlines() or ["no output"])[-1]
                raise RuntimeError(f"startup probe failed (rc={rc}): {last}")
            runs.append(json.loads(out_path.read_text()))
        log(
            f"{lib}: startup probe {i + 1}/{STARTUP_REPS}: "
            f"init_s={runs[-1]['init_s']:.3f} first_task_s={runs[-1]['first_task_s']:.3f}"
        )
    out: Result = {}
    for key in ("import_s", "init_only_s", "init_s", "first_task_s", "peak_rss_mb"):
        out[key] = median([float(r[key]) for r in runs])
    pss = [float(r["pss_mb"]) for r in runs if r.get("pss_mb") is not None]
    out["pss_mb"] = median(pss) if pss else None
    out["num_processes"] = round(median([float(r["num_processes"]) for r in runs]))
    extras = [r["extra_processes"] for r in runs if r.get("extra_processes") is not None]
    out["extra_processes"] = max(extras) if extras else None
    out["process_names"] = runs[-1]["process_names"]
    return out


# --------------------------------------------------------------------------
# In-process workloads (after rt.init)
# --------------------------------------------------------------------------


def bench_tasks_sync(rt: Any) -> Result:
    noop = rt.remote(_noop)
    for _ in range(20):
        rt.get(noop.remote())
    rates = [
        rate_loop(lambda: rt.get(noop.remote()), SYNC_MAX_N, SYNC_MAX_S)
        for _ in range(THROUGHPUT_REPS)
    ]
    return {"tasks_sync_per_s": median(rates)}


def bench_tasks_async(rt: Any) -> Result:
    noop = rt.remote(_noop)
    rt.get([noop.remote() for _ in range(100)])
    rates: list[float] = []
    for _ in range(THROUGHPUT_REPS):
        t0 = time.perf_counter()
        refs = [noop.remote() for _ in range(ASYNC_N)]
        rt.get(refs)
        rates.append(ASYNC_N / (time.perf_counter() - t0))
        del refs
    return {"tasks_async_per_s": median(rates)}


def bench_chain(rt: Any) -> Result:
    inc = rt.remote(_inc)
    rt.get(inc.remote(0))
    times: list[float] = []
    for _ in range(CHAIN_REPS):
        t0 = time.perf_counter()
        x = inc.remote(0)
        for _ in range(CHAIN_LEN - 1):
            x = inc.remote(x)
        value = rt.get(x)
        times.append(time.perf_counter() - t0)
        if value != CHAIN_LEN:
            raise AssertionError(f"chain returned {value}, expected {CHAIN_LEN}")
    return {"tasks_fanout_chain_s": median(times)}


def bench_fanout_reduce(rt: Any) -> Result:
    one = rt.remote(_one)
    reduce = rt.remote(_reduce)
    rt.get(reduce.remote(*[one.remote() for _ in range(4)]))
    times: list[float] = []
    for _ in range(FANOUT_REPS):
        t0 = time.perf_counter()
        refs = [one.remote() for _ in range(FANOUT_N)]
        total = rt.get(reduce.remote(*refs))
        times.append(time.perf_counter() - t0)
        if total != FANOUT_N:
            raise AssertionError(f"reduce returned {total}, expected {FANOUT_N}")
    return {"fanout200_reduce_s": median(times)}


def _make_actor(rt: Any) -> Any:
    actor = rt.remote(_Pinger).remote()
    for _ in range(20):
        rt.get(actor.ping.remote())
    return actor


def bench_actor_sync(rt: Any) -> Result:
    actor = _make_actor(rt)
    rates = [
        rate_loop(lambda: rt.get(actor.ping.remote()), SYNC_MAX_N, SYNC_MAX_S)
        for _ in range(THROUGHPUT_REPS)
    ]
    return {"actor_calls_sync_per_s": median(rates)}


def bench_actor_async(rt: Any) -> Result:
    actor = _make_actor(rt)
    rates: list[float] = []
    for _ in range(THROUGHPUT_REPS):
        t0 = time.perf_counter()
        refs = [actor.ping.remote() for _ in range(ASYNC_N)]
        rt.get(refs)
        rates.append(ASYNC_N / (time.perf_counter() - t0))
        del refs
    return {"actor_calls_async_per_s": median(rates)}


def bench_put_small(rt: Any) -> Result:
    for i in range(20):
        rt.put(i)
    rates = [
        rate_loop(lambda: rt.put(7), SMALL_OBJ_MAX_N, SMALL_OBJ_MAX_S)
        for _ in range(THROUGHPUT_REPS)
    ]
    return {"put_small_per_s": median(rates)}


def bench_get_small(rt: Any) -> Result:
    ref = rt.put(42)
    if rt.get(ref) != 42:
        raise AssertionError("get of a small object returned the wrong value")
    rates = [
        rate_loop(lambda: rt.get(ref), SMALL_OBJ_MAX_N, SMALL_OBJ_MAX_S)
        for _ in range(THROUGHPUT_REPS)
    ]
    return {"get_small_per_s": median(rates)}


def bench_get_large(rt: Any) -> Result:
    import numpy as np

    arr = np.ones(LARGE_BYTES // 8, dtype=np.float64)
    ref = rt.put(arr)
    del arr
    got = rt.get(ref)  # warm-up
    if got.nbytes != LARGE_BYTES:
        raise AssertionError(f"get returned {got.nbytes} bytes, expected {LARGE_BYTES}")
    is_view = not bool(got.flags.owndata)
    writeable = bool(got.flags.writeable)
    del got
    times: list[float] = []
    for _ in range(LARGE_REPS):
        t0 = time.perf_counter()
        got = rt.get(ref)
        times.append(time.perf_counter() - t0)
        del got
    del ref
    return {
        "get_large_ms": ms(median(times)),
        "get_large_is_view": is_view,
        "get_large_writeable": writeable,
    }


def bench_task_numpy_arg(rt: Any) -> Result:
    import numpy as np

    arr = np.arange(NUMPY_ARG_BYTES // 8, dtype=np.float64)
    expected = float(arr.sum())
    ref = rt.put(arr)
    sum_task = rt.remote(_np_sum)
    for _ in range(NUMPY_ARG_WARMUP):
        rt.get(sum_task.remote(ref))
    task_times: list[float] = []
    for _ in range(NUMPY_ARG_REPS):
        t0 = time.perf_counter()
        value = rt.get(sum_task.remote(ref))
        task_times.append(time.perf_counter() - t0)
    if value != expected:
        raise AssertionError(f"sum task returned {value}, expected {expected}")
    np_times: list[float] = []
    for _ in range(NUMPY_ARG_REPS):
        t0 = time.perf_counter()
        arr.sum()
        np_times.append(time.perf_counter() - t0)
    task_ms = ms(median(task_times))
    np_ms = ms(median(np_times))
    return {
        "task_numpy_arg_ms": task_ms,
        "numpy_sum_ms": np_ms,
        "task_numpy_overhead_ms": task_ms - np_ms,
    }


@dataclass(frozen=True)
class Workload:
    name: str
    figures: tuple[str, ...]
    run: Callable[[Any], Result]


STARTUP_FIGURES = (
    "import_s",
    "init_only_s",
    "init_s",
    "first_task_s",
    "peak_rss_mb",
    "pss_mb",
    "num_processes",
)

WORKLOADS: tuple[Workload, ...] = (
    Workload("tasks_sync", ("tasks_sync_per_s",), bench_tasks_sync),
    Workload("tasks_async", ("tasks_async_per_s",), bench_tasks_async),
    Workload("tasks_fanout_chain", ("tasks_fanout_chain_s",), bench_chain),
    Workload("fanout200_reduce", ("fanout200_reduce_s",), bench_fanout_reduce),
    Workload("actor_calls_sync", ("actor_calls_sync_per_s",), bench_actor_sync),
    Workload("actor_calls_async", ("actor_calls_async_per_s",), bench_actor_async),
    Workload("put_small", ("put_small_per_s",), bench_put_small),
    Workload("get_small", ("get_small_per_s",), bench_get_small),
    Workload(
        "get_large", ("get_large_ms", "get_large_is_view", "get_large_writeable"), bench_get_large
    ),
    Workload(
        "task_numpy_arg",
        ("task_numpy_arg_ms", "numpy_sum_ms", "task_numpy_overhead_ms"),
        bench_task_numpy_arg,
    ),
)

# Figures compared in "ratios": True when higher is better.
RATIO_FIGURES: dict[str, bool] = {
    "import_s": False,
    "init_only_s": False,
    "init_s": False,
    "first_task_s": False,
    "peak_rss_mb": False,
    "pss_mb": False,
    "num_processes": False,
    "tasks_sync_per_s": True,
    "tasks_async_per_s": True,
    "tasks_fanout_chain_s": False,
    "fanout200_reduce_s": False,
    "actor_calls_sync_per_s": True,
    "actor_calls_async_per_s": True,
    "put_small_per_s": True,
    "get_small_per_s": True,
    "get_large_ms": False,
    "task_numpy_arg_ms": False,
    "task_numpy_overhead_ms": False,
}


def selected(only: set[str] | None, name: str, figures: tuple[str, ...]) -> bool:
    return only is None or name in only or bool(only.intersection(figures))


def valid_only_names() -> set[str]:
    names = {"startup", *STARTUP_FIGURES}
    for w in WORKLOADS:
        names.add(w.name)
        names.update(w.figures)
    return names


def run_workloads(
    rt: Any, lib: str, todo: list[Workload], result: Result, errors: dict[str, str]
) -> None:
    """Run each workload under a time limit, recording figures or the error."""
    timeouts = 0
    for w in todo:
        if timeouts >= MAX_TIMEOUTS:
            errors[w.name] = f"skipped: {timeouts} earlier workloads timed out"
            continue
        t0 = time.perf_counter()
        try:
            with time_limit(WORKLOAD_TIMEOUT_S):
                figures = w.run(rt)
        except Exception as exc:  # report it, keep going
            timeouts += isinstance(exc, WorkloadTimeout)
            errors[w.name] = f"{type(exc).__name__}: {exc}"
            log(f"{lib}: {w.name} FAILED after {time.perf_counter() - t0:.1f} s: {errors[w.name]}")
            continue
        result.update(figures)
        shown = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()
        )
        log(f"{lib}: {w.name}: {shown} ({time.perf_counter() - t0:.1f} s)")


def run_lib(lib: str, only: set[str] | None) -> Result:
    """Run the selected workloads for one library in this interpreter."""
    wall0 = time.perf_counter()
    result: Result = {"python": platform.python_version()}
    errors: dict[str, str] = {}

    if selected(only, "startup", STARTUP_FIGURES):
        log(f"{lib}: startup ({STARTUP_REPS} fresh interpreters)")
        try:
            result.update(run_startup(lib))
        except Exception as exc:  # report it, keep going
            errors["startup"] = f"{type(exc).__name__}: {exc}"
            log(f"{lib}: startup FAILED: {errors['startup']}")

    todo = [w for w in WORKLOADS if selected(only, w.name, w.figures)]
    if todo:
        try:
            rt = import_lib(lib)
            result["version"] = lib_version(rt)
            with time_limit(WORKLOAD_TIMEOUT_S):
                rt.init(num_cpus=NUM_CPUS)
        except Exception as exc:  # report it, keep going
            errors["init"] = f"{type(exc).__name__}: {exc}"
            log(f"{lib}: init FAILED: {errors['init']}")
            todo = []
        run_workloads(rt, lib, todo, result, errors)
        if todo:
            try:
                with time_limit(30):
                    rt.shutdown()
            except Exception as exc:  # report it, keep going
                errors["shutdown"] = f"{type(exc).__name__}: {exc}"
    else:
        try:
            result["version"] = lib_version(import_lib(lib))
        except Exception as exc:  # report it, keep going
            errors["import"] = f"{type(exc).__name__}: {exc}"

    result["errors"] = errors
    result["wall_s"] = time.perf_counter() - wall0
    return result


# --------------------------------------------------------------------------
# Parent: one subprocess per library, then ratios
# --------------------------------------------------------------------------


def child_env(lib: str) -> dict[str, str]:
    env = dict(os.environ)
    if lib == "ray":
        env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return env


def run_child(lib: str, python: str, only: str | None) -> Result:
    if not Path(python).exists():
        return {"errors": {"interpreter": f"{python} not found"}}
    with tempfile.TemporaryDirectory() as tmp:
        out_path = Path(tmp) / f"{lib}.json"
        cmd = [python, str(Path(__file__).resolve()), "--lib", lib, "--out", str(out_path)]
        if only:
            cmd += ["--only", only]
        log(f"running {lib}: {' '.join(cmd)}")
        rc, _ = run_process(cmd, CHILD_TIMEOUT_S, env=child_env(lib))
        if rc is None:
            return {"errors": {"child": f"timed out after {CHILD_TIMEOUT_S:.0f} s"}}
        if not out_path.exists():
            return {"errors": {"child": f"exited {rc} without results"}}
        data: Result = json.loads(out_path.read_text())
        return data


def ratios(hs: Result, ray: Result) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for fig, higher_better in RATIO_FIGURES.items():
        a, b = hs.get(fig), ray.get(fig)
        if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
            continue
        if a <= 0 or b <= 0:
            out[fig] = None  # e.g. an overhead that came out negative
            continue
        out[fig] = round(a / b if higher_better else b / a, 3)
    return out


def machine_info() -> Result:
    info: Result = {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        import psutil

        info["mem_total_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    return info


def rounded(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--peer", choices=["ray"], help="also run the workloads on Ray")
    p.add_argument("--only", help="comma-separated workload or figure names")
    p.add_argument(
        "--ray-python",
        default=str(DEFAULT_RAY_PYTHON),
        help="interpreter with Ray installed (default: %(default)s)",
    )
    p.add_argument(
        "--heliostat-python",
        default=sys.executable,
        help="interpreter with heliostat installed (default: this one)",
    )
    p.add_argument("--lib", choices=LIBS, help=argparse.SUPPRESS)  # internal: run one library
    p.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)  # internal
    p.add_argument("--out", help=argparse.SUPPRESS)  # internal: write JSON here
    args = p.parse_args(argv)
    if args.only:
        unknown = set(args.only.split(",")) - valid_only_names()
        if unknown:
            p.error(
                f"unknown --only names: {', '.join(sorted(unknown))}; "
                f"known: {', '.join(sorted(valid_only_names()))}"
            )
    return args


def emit(data: Result, out: str | None, stream: TextIO = sys.stdout) -> None:
    text = json.dumps(rounded(data), indent=2)
    if out:
        Path(out).write_text(text)
    else:
        print(text, file=stream, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    only = set(args.only.split(",")) if args.only else None

    # Libraries print to stdout (Ray forwards worker and raylet logs there);
    # keep stdout for the JSON alone by sending everything else to stderr.
    json_stream = sys.stdout
    sys.stdout = sys.stderr
    if args.lib and args.probe:
        emit(startup_probe(args.lib), args.out, json_stream)
        return 0
    if args.lib:
        emit(run_lib(args.lib, only), args.out, json_stream)
        return 0

    t0 = time.perf_counter()
    report: Result = {"machine": machine_info()}
    report["heliostat"] = run_child("heliostat", args.heliostat_python, args.only)
    if args.peer == "ray":
        report["ray"] = run_child("ray", args.ray_python, args.only)
        report["ratios"] = ratios(report["heliostat"], report["ray"])
    log(f"done in {time.perf_counter() - t0:.1f} s")
    emit(report, None, json_stream)
    return 0


if __name__ == "__main__":
    sys.exit(main())
