"""A workflow driver for the fault-injection tests: ``python fault_driver.py CONFIG_JSON``.

Run as a script (so the step functions are ``__main__`` functions, pickled by value
into the stored DAG and the workers). The configuration (JSON) says which workflows to
drive, and for each one:

* ``wid``: the workflow id; ``action``: ``"run"`` (``workflow.run`` of the DAG),
  ``"resume"`` (``workflow.resume``) or ``"auto"`` (resume it if it exists, else run);
* ``steps``: the DAG, in topological order, each step a dict: ``task_id``, ``k``,
  ``parents`` (task ids), ``idempotent``, ``hook`` (give a non-idempotent step an
  ``on_in_doubt`` hook), ``pre`` / ``post`` (seconds to sleep before / after the side
  effect), ``gate`` (a file the step waits for) with ``gate_attempts`` (the attempts
  that wait; default: all), ``blob`` (return this many bytes instead of a number);
  ``output``: the output step's id.

A step's value is ``k + sum(inputs)``. Every attempt first appends one line
``"<workflow id> <task id> <attempt> <idempotency key> <worker pid>"`` to ``log``; a
non-idempotent step then appends ``"<idempotency key> <value as JSON>"`` to
``ledger`` (its side effect, done once per key if heliostat keeps its promise). The
hook of an in-doubt step looks its key up in the ledger: the recorded value if the
effect happened, else ``workflow.RERUN``; it appends ``"<key> found|rerun"`` to
``hooks``. An attempt that returns appends ``"<workflow id> <task id> <attempt>"`` to
``done`` first.

With ``ready`` / ``go`` paths, the driver starts its runtime and opens the lineage
store, creates ``ready``, and waits for the test to create ``go`` (a barrier for
drivers started together). It prints one line ``RESULT {json}``: per workflow id,
``{"value": ...}`` or ``{"error": class name, "message": ..., ...}``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import heliostat as hs
from heliostat import workflow
from heliostat.exceptions import HeliostatError, StorageError, WorkflowNotFoundError

GATE_TIMEOUT_S = 120.0
RESULT_TIMEOUT_S = 240.0


def append(path: str, line: str) -> None:
    """Append one line (one ``write`` on an ``O_APPEND`` file: lines never interleave)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def wait_file(path: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


@hs.remote
def step(spec: dict[str, Any], *inputs: Any) -> Any:
    ctx = workflow.get_context()
    append(
        spec["log"],
        f"{ctx.workflow_id} {ctx.task_id} {ctx.attempt} {ctx.idempotency_key} {os.getpid()}",
    )
    gate = spec.get("gate")
    attempts = spec.get("gate_attempts")
    if gate and (attempts is None or ctx.attempt in attempts):
        if not wait_file(gate, GATE_TIMEOUT_S):
            raise TimeoutError(f"the test never opened the gate {gate}")
    time.sleep(spec.get("pre", 0.0))
    value = spec["k"] + sum(inputs)
    if not spec["idempotent"]:
        append(spec["ledger"], f"{ctx.idempotency_key} {json.dumps(value)}")
    time.sleep(spec.get("post", 0.0))
    append(spec["done"], f"{ctx.workflow_id} {ctx.task_id} {ctx.attempt}")
    if spec.get("blob"):
        return os.urandom(spec["blob"])
    return value


def make_hook(ledger: str, hooks: str) -> Any:
    """An ``on_in_doubt`` hook: the ledger's value for the key, else ``RERUN``."""

    def on_in_doubt(key: str) -> Any:
        found = None
        if os.path.exists(ledger):
            with open(ledger) as f:
                for line in f:
                    k, _, v = line.rstrip("\n").partition(" ")
                    if k == key:
                        found = json.loads(v)
        append(hooks, f"{key} {'rerun' if found is None else 'found'}")
        return workflow.RERUN if found is None else found

    return on_in_doubt


def build(cfg: dict[str, Any], wf: dict[str, Any]) -> Any:
    nodes: dict[str, Any] = {}
    for s in wf["steps"]:
        spec = {**s, "log": cfg["log"], "ledger": cfg["ledger"], "done": cfg["done"]}
        opts: dict[str, Any] = {"task_id": s["task_id"], "idempotent": s["idempotent"]}
        if s.get("hook"):
            opts["on_in_doubt"] = make_hook(cfg["ledger"], cfg["hooks"])
        node = step.options(**workflow.options(**opts))
        nodes[s["task_id"]] = node.bind(spec, *[nodes[p] for p in s.get("parents", ())])
    return nodes[wf["output"]]


def start(cfg: dict[str, Any], wf: dict[str, Any]) -> Any:
    action = wf.get("action", "auto")
    wid = wf["wid"]
    if action == "auto":
        try:
            workflow.get_status(wid)
            action = "resume"
        except WorkflowNotFoundError:
            action = "run"
    if action == "run":
        return workflow.run_async(build(cfg, wf), workflow_id=wid)
    return workflow.resume_async(wid)


def describe(exc: BaseException) -> dict[str, Any]:
    out: dict[str, Any] = {"error": type(exc).__name__, "message": str(exc)}
    for name in ("task_id", "fenced", "holder_host", "holder_pid"):
        if hasattr(exc, name):
            out[name] = getattr(exc, name)
    out["storage_error"] = isinstance(exc, StorageError)
    return out


def main() -> None:
    cfg = json.loads(sys.argv[1])
    hs.init(num_cpus=cfg.get("num_cpus", 2))
    try:
        if cfg.get("go"):
            workflow.list_all(limit=1)  # import and open everything before the barrier
            append(cfg["ready"], str(os.getpid()))
            if not wait_file(cfg["go"], GATE_TIMEOUT_S):
                raise TimeoutError("the test never released the barrier")
        refs = {}
        results: dict[str, Any] = {}
        for wf in cfg["workflows"]:
            try:
                refs[wf["wid"]] = start(cfg, wf)
            except HeliostatError as exc:
                results[wf["wid"]] = describe(exc)
        for wid, ref in refs.items():
            try:
                value = hs.get(ref, timeout=RESULT_TIMEOUT_S)
                results[wid] = {"value": value if not isinstance(value, bytes) else len(value)}
            except HeliostatError as exc:
                results[wid] = describe(exc)
        print("RESULT " + json.dumps(results), flush=True)
    finally:
        hs.shutdown()


if __name__ == "__main__":
    main()
