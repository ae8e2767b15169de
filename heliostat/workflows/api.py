"""The ``heliostat.workflow`` API (Ray Workflows names): run, resume, status, output.

Where things live: the lineage database is ``HELIOSTAT_DB_URL`` (default SQLite at
``$HELIOSTAT_HOME/heliostat.db``); checkpoints go to ``hs.init(storage=...)``, else
``HELIOSTAT_STORAGE``, else ``$HELIOSTAT_HOME/checkpoints``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from heliostat.engine.dag import DAGNode
from heliostat.engine.object_ref import ObjectRef
from heliostat.engine.runtime import current_client, current_runtime
from heliostat.exceptions import (
    WorkflowCancelledError,
    WorkflowLeaseError,
    WorkflowNotFoundError,
)
from heliostat.storage.checkpoints import CheckpointStore
from heliostat.storage.db import default_db_url
from heliostat.storage.states import StepStatus, WorkflowStatus
from heliostat.workflows.compile import CompiledWorkflow, compile_dag
from heliostat.workflows.executor import WorkflowExecutor
from heliostat.workflows.store import (
    Batch,
    LeaseOwner,
    StepRecord,
    WorkflowRecord,
    WorkflowStore,
)

__all__ = [
    "cancel",
    "delete",
    "describe",
    "get_metadata",
    "get_output",
    "get_status",
    "list_all",
    "resolve",
    "resume",
    "resume_all",
    "resume_async",
    "run",
    "run_async",
]

log = logging.getLogger("heliostat.workflows")

_lock = threading.Lock()
_stores: dict[str, WorkflowStore] = {}
_checkpoint_stores: dict[str, CheckpointStore] = {}
_owner = LeaseOwner.this_process()


def lease_timeout() -> float:
    """Seconds a workflow's lease lasts without a heartbeat (``HELIOSTAT_LEASE_TIMEOUT``)."""
    return float(os.environ.get("HELIOSTAT_LEASE_TIMEOUT", "6"))


def _store() -> WorkflowStore:
    url = default_db_url()
    with _lock:
        store = _stores.get(url)
        if store is None:
            store = _stores[url] = WorkflowStore.open(url)
        return store


def _checkpoints() -> CheckpointStore:
    runtime = current_runtime()
    url = (runtime.storage if runtime is not None else None) or os.environ.get("HELIOSTAT_STORAGE")
    key = url or ""
    with _lock:
        store = _checkpoint_stores.get(key)
        if store is None:
            store = _checkpoint_stores[key] = CheckpointStore(url)
        return store


class _LeaseKeeper:
    """Renews the leases of the workflows this process runs, every third of a timeout."""

    def __init__(self) -> None:
        self._held: dict[str, WorkflowStore] = {}
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def hold(self, workflow_id: str, store: WorkflowStore) -> None:
        with self._cond:
            self._held[workflow_id] = store
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="heliostat-lease-keeper", daemon=True
                )
                self._thread.start()

    def drop(self, workflow_id: str) -> None:
        with self._cond:
            self._held.pop(workflow_id, None)

    def _loop(self) -> None:
        while True:
            timeout = lease_timeout()
            with self._cond:
                self._cond.wait(timeout / 3)
                held = dict(self._held)
            by_store: dict[int, tuple[WorkflowStore, list[str]]] = {}
            for wid, store in held.items():
                by_store.setdefault(id(store), (store, []))[1].append(wid)
            for store, ids in by_store.values():
                try:
                    store.renew_leases(_owner, ids, timeout)
                except Exception:  # a database hiccup: the next beat retries
                    log.warning("could not renew workflow leases", exc_info=True)


_keeper = _LeaseKeeper()


def _default_id(dag: DAGNode) -> str:
    name = getattr(dag, "name", "workflow")
    return f"{name}.{time.strftime('%Y%m%d-%H%M%S')}.{uuid.uuid4().hex[:6]}"


def _execute(
    workflow_id: str,
    compiled: CompiledWorkflow,
    store: WorkflowStore,
    record: WorkflowRecord | None,
    on_progress: Callable[[int, int, int], None] | None,
) -> Any:
    current_client()  # fail early, clearly, without a runtime
    _keeper.hold(workflow_id, store)
    try:
        executor = WorkflowExecutor(
            workflow_id=workflow_id,
            compiled=compiled,
            store=store,
            checkpoints=_checkpoints(),
            records=record.steps if record is not None else None,
            on_progress=on_progress,
        )
        return executor.run()
    finally:
        _keeper.drop(workflow_id)
        store.release_lease(workflow_id, _owner)


def run(
    dag: DAGNode,
    *,
    workflow_id: str | None = None,
    metadata: dict[str, Any] | None = None,
    on_progress: Callable[[int, int, int], None] | None = None,
) -> Any:
    """Run ``dag`` durably and return its output.

    With the id of a finished workflow, returns its stored output without running
    anything; with the id of a failed, resumable or in-doubt one, resumes it.

    Raises:
        WorkflowDefinitionError: the DAG is invalid (nothing ran).
        WorkflowExecutionError / WorkflowNeedsAttentionError / WorkflowCancelledError:
            how the run ended, if not successfully.
        WorkflowLeaseError: another live driver runs this workflow.
    """
    current_client()  # no runtime: fail before anything is recorded
    store = _store()
    workflow_id = workflow_id or _default_id(dag)
    if store.exists(workflow_id):
        status = get_status(workflow_id)
        if status is WorkflowStatus.SUCCESSFUL:
            return get_output(workflow_id)
        return _resume(workflow_id, on_progress=on_progress, dag=compile_dag(dag))
    compiled = compile_dag(dag)
    store.create(
        workflow_id=workflow_id,
        compiled=compiled,
        metadata=dict(metadata or {}),
        name=getattr(dag, "name", ""),
        owner=_owner,
        lease_timeout=lease_timeout(),
    )
    return _execute(workflow_id, compiled, store, None, on_progress)


def _in_thread(fn: Callable[[], Any]) -> ObjectRef:
    client = current_client()
    ref = client.promise()

    def body() -> None:
        try:
            value = fn()
        except BaseException as exc:  # delivered to whoever gets the ref
            client.fulfill(ref, error=exc)
        else:
            client.fulfill(ref, value)

    threading.Thread(target=body, name="heliostat-workflow", daemon=True).start()
    return ref


def run_async(
    dag: DAGNode, *, workflow_id: str | None = None, metadata: dict[str, Any] | None = None
) -> ObjectRef:
    """Like :func:`run`, in the background; returns a ref to the output."""
    workflow_id = workflow_id or _default_id(dag)
    compile_dag(dag)  # reject a bad DAG here, not in the background
    return _in_thread(lambda: run(dag, workflow_id=workflow_id, metadata=metadata))


def resume(workflow_id: str, *, on_progress: Callable[[int, int, int], None] | None = None) -> Any:
    """Resume a workflow that failed, lost its driver, or needs attention.

    Committed steps are not re-run. Returns the workflow's output. The stored DAG is
    resumed; to resume with new code or new step options (an ``on_in_doubt`` hook
    added after a NEEDS_ATTENTION, say), call ``run(new_dag, workflow_id=...)``
    with a DAG of the same shape.

    Raises:
        WorkflowNotFoundError: no such workflow.
        WorkflowLeaseError: another live driver runs it.
        WorkflowCancelledError: it was cancelled.
    """
    return _resume(workflow_id, on_progress=on_progress, dag=None)


def _same_shape(a: CompiledWorkflow, b: CompiledWorkflow) -> bool:
    return a.output == b.output and {(t, s.parents) for t, s in a.steps.items()} == {
        (t, s.parents) for t, s in b.steps.items()
    }


def _resume(
    workflow_id: str,
    *,
    on_progress: Callable[[int, int, int], None] | None,
    dag: CompiledWorkflow | None,
) -> Any:
    store = _store()
    record = store.load(workflow_id)
    if record.status is WorkflowStatus.SUCCESSFUL:
        return get_output(workflow_id)
    if record.status is WorkflowStatus.CANCELED:
        raise WorkflowCancelledError(
            f"Workflow {workflow_id!r} was cancelled; it cannot be resumed.",
            workflow_id=workflow_id,
        )
    if record.lease_owner != _owner.owner and WorkflowStore.lease_is_live(
        record.lease_owner, record.lease_host, record.lease_pid, record.lease_expires_at
    ):
        store.acquire_lease(workflow_id, _owner, lease_timeout())  # raises, naming the holder
    current_client()  # no runtime: fail before the lease is taken
    store.acquire_lease(workflow_id, _owner, lease_timeout())
    if record.status is WorkflowStatus.RUNNING:
        store.set_status(workflow_id, WorkflowStatus.RESUMABLE, cause="its driver is gone")
    store.set_status(workflow_id, WorkflowStatus.RUNNING, cause="resume()")
    assert record.dag is not None
    compiled = CompiledWorkflow.from_bytes(record.dag)
    if dag is not None:
        if _same_shape(dag, compiled):
            compiled = dag  # same steps and edges: the caller's code and options win
        else:
            log.warning(
                "workflow %r: the DAG passed to run() differs from the stored one "
                "(other steps or edges); resuming the stored DAG",
                workflow_id,
            )
    return _execute(workflow_id, compiled, store, record, on_progress)


def resume_async(workflow_id: str) -> ObjectRef:
    """Like :func:`resume`, in the background; returns a ref to the output."""
    _store().load(workflow_id, with_steps=False)  # unknown id: fail here
    return _in_thread(lambda: resume(workflow_id))


def resume_all(include_failed: bool = False) -> list[tuple[str, ObjectRef]]:
    """Resume every workflow whose driver is gone (and failed ones, if asked).

    Only workflows whose lease has expired (or whose driver process on this host has
    exited) are taken, so a workflow another driver runs is never run twice.
    """
    statuses = [WorkflowStatus.RUNNING, WorkflowStatus.RESUMABLE]
    if include_failed:
        statuses.append(WorkflowStatus.FAILED)
    out = []
    for record in _store().list_workflows(statuses):
        if record.status is WorkflowStatus.RUNNING and WorkflowStore.lease_is_live(
            record.lease_owner, record.lease_host, record.lease_pid, record.lease_expires_at
        ):
            continue
        out.append((record.workflow_id, resume_async(record.workflow_id)))
    return out


def _effective(store: WorkflowStore, record: WorkflowRecord) -> WorkflowStatus:
    """RUNNING with a dead lease is RESUMABLE: record that and say so."""
    if record.status is WorkflowStatus.RUNNING and not WorkflowStore.lease_is_live(
        record.lease_owner, record.lease_host, record.lease_pid, record.lease_expires_at
    ):
        try:
            store.set_status(record.workflow_id, WorkflowStatus.RESUMABLE, cause="lease expired")
        except Exception:  # somebody else moved it meanwhile: read again
            return store.status(record.workflow_id)
        return WorkflowStatus.RESUMABLE
    return record.status


def _step_of(record: WorkflowRecord, task_id: str) -> StepRecord:
    """The record of one step, or WorkflowNotFoundError naming the known ones."""
    step = record.steps.get(task_id)
    if step is None:
        known = ", ".join(sorted(record.steps)[:20])
        raise WorkflowNotFoundError(
            f"Workflow {record.workflow_id!r} has no step {task_id!r} (known steps: {known}).",
            workflow_id=record.workflow_id,
            task_id=task_id,
        )
    return step


def get_status(workflow_id: str) -> WorkflowStatus:
    """The workflow's status (RESUMABLE once its driver is gone)."""
    store = _store()
    return _effective(store, store.load(workflow_id, with_steps=False))


def get_output(workflow_id: str, *, task_id: str | None = None) -> Any:
    """The stored output of the workflow, or of one of its steps.

    Raises:
        WorkflowNotFoundError: no such workflow or step, or the step has no output yet.
    """
    store = _store()
    record = store.load(workflow_id)
    target = task_id or record.output_task_id
    checkpoints = _checkpoints()
    seen = set()
    while True:
        step = _step_of(record, target or "")
        if step.checkpoint is None:
            raise WorkflowNotFoundError(
                f"Step {target!r} of workflow {workflow_id!r} has no stored output "
                f"(status {step.status}).",
                workflow_id=workflow_id,
                task_id=target or "",
            )
        if step.output_format != "continuation":
            return checkpoints.read(step.checkpoint)
        cont = checkpoints.read(step.checkpoint)
        seen.add(target)
        target = compile_dag(cont.dag, prefix=f"{target}.").output


def get_metadata(workflow_id: str, task_id: str | None = None) -> dict[str, Any]:
    """Status, timings and user metadata of a workflow or one step."""
    store = _store()
    record = store.load(workflow_id)
    if task_id is None:
        return {
            "workflow_id": record.workflow_id,
            "status": str(_effective(store, record)),
            "user_metadata": record.metadata,
            "created_at": record.created_at.isoformat(),
            "started_at": record.started_at.isoformat() if record.started_at else None,
            "finished_at": record.finished_at.isoformat() if record.finished_at else None,
            "error": record.error,
            "resume_count": record.resume_count,
            "steps": len(record.steps),
        }
    step = _step_of(record, task_id)
    return {
        "task_id": step.task_id,
        "name": step.name,
        "status": str(step.status),
        "attempts": step.attempts,
        "user_metadata": step.metadata,
        "started_at": step.started_at.isoformat() if step.started_at else None,
        "finished_at": step.finished_at.isoformat() if step.finished_at else None,
        "error": step.error,
        "checkpoint": step.checkpoint.location if step.checkpoint else None,
    }


def list_all(
    status_filter: WorkflowStatus | str | Iterable[WorkflowStatus | str] | None = None,
    *,
    limit: int | None = None,
) -> list[tuple[str, WorkflowStatus]]:
    """(workflow id, status) of every workflow (the newest ``limit`` ones), newest first."""
    statuses = None
    if status_filter is not None:
        items = [status_filter] if isinstance(status_filter, str) else list(status_filter)
        statuses = [WorkflowStatus(s) for s in items]
    store = _store()
    records = store.list_workflows(statuses, limit=limit)
    return [(r.workflow_id, _effective(store, r)) for r in records]


def cancel(workflow_id: str) -> None:
    """Cancel a workflow: its driver stops submitting steps and marks it CANCELED."""
    store = _store()
    status = store.status(workflow_id)
    if status in (WorkflowStatus.SUCCESSFUL, WorkflowStatus.CANCELED):
        return
    # A running executor (maybe in another process) sees this within half a second,
    # stops submitting steps and cancels the ones in flight.
    store.set_status(workflow_id, WorkflowStatus.CANCELED, cause="cancel()")


_UNSET: Any = object()


def resolve(workflow_id: str, task_id: str, *, result: Any = _UNSET, rerun: bool = False) -> None:
    """Settle an in-doubt step by hand, after checking what really happened.

    Give either ``result`` (the step did its work: this becomes its output) or
    ``rerun=True`` (it did not: run it again). Then ``resume`` the workflow.

    Raises:
        WorkflowNotFoundError: no such workflow or step.
        ValueError: the step is not IN_DOUBT, or not exactly one of result / rerun.
    """
    if (result is _UNSET) == (not rerun):
        raise ValueError("Pass exactly one of result=... or rerun=True.")
    store = _store()
    record = store.load(workflow_id)
    step = _step_of(record, task_id)
    if step.status is not StepStatus.IN_DOUBT:
        raise ValueError(
            f"Step {task_id!r} of workflow {workflow_id!r} is {step.status}, not IN_DOUBT; "
            "only an in-doubt step can be resolved."
        )
    batch = Batch()
    if rerun:
        batch.step_status(task_id, StepStatus.RUNNING, "resolve(rerun=True)")
        batch.step_status(task_id, StepStatus.PENDING, "re-run requested")
    else:
        attempt = max(step.attempts, 1)
        ref = _checkpoints().write(workflow_id, task_id, attempt, result)
        batch.commit(task_id, attempt, ref, "resolve(result=...)", start=StepStatus.IN_DOUBT)
    store.apply(workflow_id, batch)


def delete(workflow_id: str) -> None:
    """Forget a workflow: its lineage rows and its checkpoints."""
    store = _store()
    status = get_status(workflow_id)
    if status is WorkflowStatus.RUNNING:
        raise WorkflowLeaseError(
            f"Workflow {workflow_id!r} is running; cancel it before deleting it.",
            workflow_id=workflow_id,
        )
    store.delete(workflow_id)
    _checkpoints().delete_workflow(workflow_id)


def describe(workflow_id: str) -> WorkflowRecord:
    """The workflow's lineage record with its steps, for display (``heliostat workflow show``).

    The record's status is the one :func:`get_status` reports (RESUMABLE once the
    driver is gone); ``steps`` maps each task id to its record: status, attempts,
    timings, first error.

    Raises:
        WorkflowNotFoundError: no such workflow.
    """
    store = _store()
    record = store.load(workflow_id)
    status = _effective(store, record)
    return record if status is record.status else dataclasses.replace(record, status=status)
