"""The ``heliostat.workflow`` API (Ray Workflows names): run, resume, status, output.

Where things live: the lineage database is ``HELIOSTAT_DB_URL`` (default SQLite at
``$HELIOSTAT_HOME/heliostat.db``); checkpoints go to ``hs.init(storage=...)``, else
``HELIOSTAT_STORAGE``, else ``$HELIOSTAT_HOME/checkpoints``. A driver joined to a
cluster uses the cluster's database and store in place of the home's defaults
(:mod:`heliostat.workflows.cluster_stores`). The stores belong to the runtime
(:mod:`heliostat.workflows.services`).

Every way of running a workflow (``run``, ``resume``, ``resume_all``, the scheduler's
recovery, the CLI) takes the workflow's lease first and holds it for the whole run
(:mod:`heliostat.workflows.lease`); a second taker gets
:class:`~heliostat.exceptions.WorkflowLeaseError` naming the holder.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import cloudpickle

import heliostat.engine as hs
from heliostat.engine.dag import DAGNode
from heliostat.engine.object_ref import ObjectRef
from heliostat.engine.runtime import current_client, current_runtime
from heliostat.exceptions import (
    HeliostatError,
    TaskError,
    WorkflowCancelledError,
    WorkflowDefinitionError,
    WorkflowError,
    WorkflowLeaseError,
    WorkflowNotFoundError,
    WorkflowNotResumableError,
    WorkflowOutputFailedError,
    WorkflowOutputNotFoundError,
)
from heliostat.storage.checkpoints import safe_segment
from heliostat.storage.models import ID_LENGTH
from heliostat.storage.states import StepStatus, WorkflowStatus
from heliostat.workflows.beacon import LeaseBeacon
from heliostat.workflows.compile import (
    CompiledWorkflow,
    compile_dag,
    definition_differences,
)
from heliostat.workflows.executor import WorkflowExecutor, plan_from_lineage
from heliostat.workflows.lease import Lease, LeaseOwner, lease_timeout
from heliostat.workflows.lineage import AttemptRecord, StepRecord, WorkflowRecord
from heliostat.workflows.machine import (
    WorkflowMachine,
)
from heliostat.workflows.services import (
    WorkflowServices,
    runtime_services,
    workflow_services,
)
from heliostat.workflows.step import StepLogs
from heliostat.workflows.store import WorkflowStore, held_error
from heliostat.workflows.transitions import (
    AlreadySucceeded,
    cancel_moves,
    reconcile_moves,
    resolve_records,
    resume_moves,
)

__all__ = [
    "attempts",
    "cancel",
    "delete",
    "describe",
    "get_metadata",
    "get_output",
    "get_output_async",
    "get_status",
    "init",
    "lease_timeout",
    "list_all",
    "list_records",
    "logs",
    "reconcile",
    "resolve",
    "resume",
    "resume_all",
    "resume_async",
    "run",
    "run_async",
]

log = logging.getLogger("heliostat.workflows")

Progress = Callable[[int, int, int], None]

_OUTPUT_POLL_S = 0.2  # get_output_async: how often to look at another driver's run


# --- checks at the boundary ----------------------------------------------------------------


def _check_id(workflow_id: object, what: str = "workflow_id") -> str:
    if not isinstance(workflow_id, str):
        raise TypeError(f"{what} must be a str, not {type(workflow_id).__name__}.")
    if not workflow_id.strip() or len(workflow_id) > ID_LENGTH:
        raise ValueError(f"{what} must be 1 to {ID_LENGTH} characters, got {workflow_id!r}.")
    return workflow_id


def _check_metadata(metadata: object) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict, not {type(metadata).__name__}.")
    try:
        json.dumps(metadata)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"metadata must be JSON-serializable: {exc}") from exc
    return dict(metadata)


def _check_progress(on_progress: object) -> Progress | None:
    if on_progress is not None and not callable(on_progress):
        raise TypeError(f"on_progress must be callable, not {type(on_progress).__name__}.")
    return on_progress


def _refuse_inside_task(call: str) -> None:
    """A workflow is driven from a driver; inside a task there is no runtime to own it."""
    if current_runtime() is None:
        try:
            current_client()
        except HeliostatError:
            return  # no runtime at all: the caller's own check names that
        raise WorkflowError(
            f"workflow.{call}() cannot be called inside a task or actor: a workflow is "
            "run by a driver, which holds its lease. Start it from the driver, or return "
            "workflow.continuation(dag) from a workflow step to extend the running "
            "workflow with more steps."
        )


def _services() -> WorkflowServices:
    """The current runtime's services; a clear error without a runtime."""
    current_client()  # raises NotInitializedError, naming init()
    services = runtime_services()
    assert services is not None  # a current client in the driver means a runtime
    return services


def _default_id(dag: DAGNode) -> str:
    name = getattr(dag, "name", "workflow")
    return f"{name}.{time.strftime('%Y%m%d-%H%M%S')}.{uuid.uuid4().hex[:6]}"


# --- running ----------------------------------------------------------------------------------


def run(
    dag: DAGNode,
    *,
    workflow_id: str | None = None,
    metadata: dict[str, Any] | None = None,
    on_progress: Progress | None = None,
) -> Any:
    """Run ``dag`` durably and return its output.

    With the id of an existing workflow of the same definition (the same steps, code
    and arguments), returns its stored output if it succeeded, else resumes it. A
    different definition under an existing id is refused: use another id, or
    :func:`resume` with ``dag=`` to continue the stored run with changed code.
    ``metadata["schedule"]``, if given, names the schedule the run came from.

    Raises:
        WorkflowDefinitionError: the DAG is invalid, or differs from the stored run of
            ``workflow_id`` (the message names what differs); nothing ran.
        WorkflowExecutionError / WorkflowNeedsAttentionError / WorkflowCancelledError:
            how the run ended, if not successfully.
        WorkflowLeaseError: another live driver runs this workflow (named).
        StorageError: the lineage database or checkpoint storage cannot be used.
    """
    _refuse_inside_task("run")
    services = _services()
    workflow_id = _check_id(workflow_id) if workflow_id is not None else _default_id(dag)
    meta = _check_metadata(metadata)
    on_progress = _check_progress(on_progress)
    compiled = compile_dag(dag)
    checkpoints = services.checkpoints()  # a bad storage URL fails before any row
    store = services.store()
    owner = LeaseOwner.new()
    schedule = meta.get("schedule")
    acquired = time.monotonic()  # before the lease is written: see beacon.py
    lease = store.create(
        workflow_id=workflow_id,
        compiled=compiled,
        metadata=meta,
        name=getattr(dag, "name", ""),
        schedule=schedule if isinstance(schedule, str) else None,
        owner=owner,
        timeout=lease_timeout(),
        now=services.clock.now(),
    )
    if lease is None:  # the id exists: the same workflow, or a mistake
        record = store.load(workflow_id, with_steps=False)
        differences = definition_differences(store.load_dag(record), compiled)
        if differences:
            raise WorkflowDefinitionError(
                f"Workflow {workflow_id!r} exists with a different definition: "
                f"{'; '.join(differences)}. Run it under a new workflow_id, or continue "
                f"the stored run: workflow.resume({workflow_id!r}) with its own DAG, or "
                f"workflow.resume({workflow_id!r}, dag=...) with this one.",
                workflow_id=workflow_id,
            )
        if record.status is WorkflowStatus.SUCCESSFUL:
            return get_output(workflow_id)
        return _resume(services, workflow_id, compiled, on_progress, cause="run()")
    executor = WorkflowExecutor(
        workflow_id=workflow_id,
        compiled=compiled,
        store=store,
        checkpoints=checkpoints,
        lease=lease,
        seq=0,
        clock=services.clock,
        keeper=services.keeper,
        on_progress=on_progress,
        beacon=_beacon(lease, acquired),
    )
    return _drive(services, executor)


def _beacon(lease: Lease, acquired: float) -> LeaseBeacon:
    """The run's lease beacon in the runtime's session directory, published at once."""
    runtime = current_runtime()
    assert runtime is not None  # the caller checked for a runtime
    name = f"{safe_segment(lease.workflow_id)}-{lease.generation}-{uuid.uuid4().hex[:8]}"
    beacon = LeaseBeacon(os.path.join(runtime.session_dir, "leases", name))
    beacon.publish(acquired + lease.timeout)
    return beacon


def _drive(services: WorkflowServices, executor: WorkflowExecutor) -> Any:
    services.register(executor.workflow_id, executor)
    try:
        # The DAG is compiled and stored by now: the freeze covers it too, so the
        # collections during the run walk only what the run makes.
        with services.heap.during_run():
            return executor.run()
    finally:
        services.unregister(executor.workflow_id, executor)


def resume(
    workflow_id: str,
    *,
    dag: DAGNode | None = None,
    on_progress: Progress | None = None,
) -> Any:
    """Resume a workflow that failed, lost its driver, or needs attention.

    Committed steps are not re-run. Returns the workflow's output. Without ``dag`` the
    stored DAG runs; with ``dag`` (the same steps and edges), its code and step
    options are used for the steps still to run: how to resume with a bug fixed, or
    with an ``on_in_doubt`` hook added after a NEEDS_ATTENTION.

    Raises:
        WorkflowNotFoundError: no such workflow.
        WorkflowLeaseError: another live driver runs it (named).
        WorkflowCancelledError: it was cancelled.
        WorkflowDefinitionError: ``dag`` has other steps or edges than the stored run.
    """
    _refuse_inside_task("resume")
    _check_id(workflow_id)
    on_progress = _check_progress(on_progress)
    if runtime_services() is None:  # say who holds it before saying init() is missing
        with workflow_services() as temporary:
            record = _resumable(temporary.store(), workflow_id)
            if WorkflowStore.lease_is_live(record.lease, temporary.clock.now()):
                raise held_error(workflow_id, record.lease)
    services = _services()
    compiled = None
    if dag is not None:
        compiled = compile_dag(dag)
    return _resume(services, workflow_id, compiled, on_progress, cause="resume()")


def _resumable(store: WorkflowStore, workflow_id: str) -> WorkflowRecord:
    """The record of a workflow to resume; Ray's WorkflowNotResumableError if none."""
    try:
        return store.load(workflow_id, with_steps=False)
    except WorkflowNotFoundError as exc:
        raise WorkflowNotResumableError(
            f"Workflow {workflow_id!r} cannot be resumed: {exc}", workflow_id=workflow_id
        ) from exc


def _stored_dag(store: WorkflowStore, record: WorkflowRecord) -> CompiledWorkflow:
    """The stored DAG of a run to resume; WorkflowNotResumableError if it cannot load.

    A row that fails its signature stays an UnauthenticatedDataError (a storage
    problem, not the workflow's).
    """
    try:
        return store.load_dag(record)
    except HeliostatError:
        raise
    except Exception as exc:  # unpickling user code fails in many ways
        wid = record.workflow_id
        raise WorkflowNotResumableError(
            f"Workflow {wid!r} cannot be resumed: its stored DAG cannot be loaded "
            f"({type(exc).__name__}: {exc}); the modules its steps come from must be "
            "importable by the process that resumes it.",
            workflow_id=wid,
        ) from exc


def _resume(
    services: WorkflowServices,
    workflow_id: str,
    compiled: CompiledWorkflow | None,
    on_progress: Progress | None,
    *,
    cause: str,
) -> Any:
    store = services.store()
    record = _resumable(store, workflow_id)
    if record.status is WorkflowStatus.SUCCESSFUL:
        return get_output(workflow_id)
    if record.status is WorkflowStatus.CANCELED:
        raise WorkflowCancelledError(
            f"Workflow {workflow_id!r} was cancelled; it cannot be resumed.",
            workflow_id=workflow_id,
        )
    stored = _stored_dag(store, record)
    if compiled is None:
        compiled = stored
    else:
        differences = definition_differences(stored, compiled)
        shape = [d for d in differences if "code" not in d and "arguments" not in d]
        if shape:
            raise WorkflowDefinitionError(
                f"Cannot resume workflow {workflow_id!r} with this DAG: {'; '.join(shape)}. "
                "A resume keeps the stored steps and edges; run a new workflow instead.",
                workflow_id=workflow_id,
            )
        for difference in differences:
            log.info("workflow %r resumes with new code: %s", workflow_id, difference)
    checkpoints = services.checkpoints()
    owner = LeaseOwner.new()
    acquired = time.monotonic()  # before the lease is written: see beacon.py
    try:
        lease, seq = store.take_over(
            workflow_id,
            owner,
            timeout=lease_timeout(),
            now=services.clock.now(),
            moves=resume_moves(workflow_id, cause),
        )
    except AlreadySucceeded:
        return get_output(workflow_id)
    record = store.load(workflow_id)
    executor = WorkflowExecutor(
        workflow_id=workflow_id,
        compiled=compiled,
        store=store,
        checkpoints=checkpoints,
        lease=lease,
        seq=seq,
        clock=services.clock,
        keeper=services.keeper,
        records=record.steps,
        on_progress=on_progress,
        beacon=_beacon(lease, acquired),
    )
    return _drive(services, executor)


def _in_thread(fn: Callable[[], Any]) -> ObjectRef:
    """Run ``fn`` in a thread; the ref is always completed, with its value or error."""
    client = current_client()
    ref = client.promise()

    def body() -> None:
        try:
            value = fn()
        except BaseException as exc:  # delivered to whoever gets the ref
            try:
                client.fulfill(ref, error=exc)
            except Exception:  # the error itself cannot travel: say what it was
                client.fulfill(
                    ref,
                    error=WorkflowError(f"{type(exc).__name__}: {exc}".splitlines()[0]),
                )
        else:
            try:
                client.fulfill(ref, value)
            except Exception as exc:  # an output that cannot be stored in the object store
                client.fulfill(ref, error=WorkflowError(f"the output cannot be returned: {exc}"))

    threading.Thread(target=body, name="heliostat-workflow", daemon=True).start()
    return ref


def run_async(
    dag: DAGNode,
    *,
    workflow_id: str | None = None,
    metadata: dict[str, Any] | None = None,
    on_progress: Progress | None = None,
) -> ObjectRef:
    """Like :func:`run`, in the background; returns a ref to the output.

    The DAG and the arguments are checked here, before the call returns.
    """
    _refuse_inside_task("run_async")
    workflow_id = _check_id(workflow_id) if workflow_id is not None else _default_id(dag)
    _check_metadata(metadata)
    _check_progress(on_progress)
    compile_dag(dag)  # reject a bad DAG here, not in the background
    services = _services()
    services.expect(workflow_id)  # get_output_async waits for it from now on

    def body() -> Any:
        try:
            return run(dag, workflow_id=workflow_id, metadata=metadata, on_progress=on_progress)
        finally:
            services.finished(workflow_id)

    return _in_thread(body)


def resume_async(workflow_id: str, *, dag: DAGNode | None = None) -> ObjectRef:
    """Like :func:`resume`, in the background; returns a ref to the output."""
    _refuse_inside_task("resume_async")
    _check_id(workflow_id)
    _resumable(_services().store(), workflow_id)  # unknown id: fail here
    return _in_thread(lambda: resume(workflow_id, dag=dag))


def resume_all(include_failed: bool = False) -> list[tuple[str, ObjectRef]]:
    """Resume every workflow whose driver is gone (and failed ones, if asked).

    Only workflows whose driver has surely stopped are taken: no lease, a driver
    process on this host that exited, or a lease lapsed longer ago than a driver keeps
    retrying a lost database (each resume takes the lease first, so one another driver
    runs is never run twice).
    """
    if not isinstance(include_failed, bool):
        raise TypeError(f"include_failed must be a bool, not {type(include_failed).__name__}.")
    statuses = [WorkflowStatus.RUNNING, WorkflowStatus.RESUMABLE]
    if include_failed:
        statuses.append(WorkflowStatus.FAILED)
    out = []
    store = _services().store()
    for record in store.list_workflows(statuses):
        if not store.holder_is_gone(record.lease):  # it may still run, or renew
            continue
        out.append((record.workflow_id, resume_async(record.workflow_id)))
    return out


# --- reading ---------------------------------------------------------------------------------


def reconcile(workflow_id: str) -> WorkflowStatus:
    """Record that a RUNNING workflow's driver is gone: RESUMABLE, attempts interrupted.

    Steps that were running get the decision a resume would make (an interrupted
    idempotent step back to PENDING, a non-idempotent one IN_DOUBT, one whose output
    was written before the crash committed), under the workflow's lease. A workflow
    whose lease is live, or that is not RUNNING, is left as it is.

    Returns:
        The workflow's status afterwards.
    """
    _check_id(workflow_id)
    with workflow_services() as services:
        return _reconcile(services, services.store().load(workflow_id, with_steps=False))


def _reconcile(services: WorkflowServices, record: WorkflowRecord) -> WorkflowStatus:
    store = services.store()
    if record.status is not WorkflowStatus.RUNNING or not store.holder_is_gone(
        record.lease, services.clock.now()
    ):
        return record.status
    wid = record.workflow_id
    try:
        lease, seq = store.take_over(
            wid,
            LeaseOwner.new(),
            timeout=lease_timeout(),
            now=services.clock.now(),
            moves=reconcile_moves(wid),
        )
    except WorkflowLeaseError:  # somebody resumed it meanwhile
        return store.status(wid)
    try:
        full = store.load(wid)
        machine = WorkflowMachine(wid, store.load_dag(full), now=services.clock.now)
        plan = plan_from_lineage(machine, full.steps, services.checkpoints())
        machine.load(plan, {t: r.attempts for t, r in full.steps.items()})
        records = machine.take_records()
    except Exception:
        store.commit(lease, seq + 1, [], now=services.clock.now(), release=True)
        raise
    store.commit(lease, seq + 1, records, now=services.clock.now(), release=True)
    return WorkflowStatus.RESUMABLE


def _effective(services: WorkflowServices, record: WorkflowRecord) -> WorkflowStatus:
    """RUNNING whose driver is surely gone is RESUMABLE: reconcile it and say so.

    A lapsed lease alone is not enough: its driver may be riding out a database
    outage and renew it at the next beat; reading must not fence it.
    """
    if record.status is WorkflowStatus.RUNNING and services.store().holder_is_gone(
        record.lease, services.clock.now()
    ):
        try:
            return _reconcile(services, record)
        except WorkflowNotFoundError:
            raise
        except Exception:  # reconciling is a courtesy of the reader: report, don't fail
            log.warning("could not reconcile workflow %r", record.workflow_id, exc_info=True)
            return WorkflowStatus.RESUMABLE
    return record.status


def _step_of(
    record: WorkflowRecord,
    task_id: str,
    missing: type[WorkflowNotFoundError] = WorkflowNotFoundError,
) -> StepRecord:
    """The record of one step, or ``missing`` (WorkflowNotFoundError) naming the known ones."""
    step = record.steps.get(task_id)
    if step is None:
        known = ", ".join(sorted(record.steps)[:20])
        raise missing(
            f"Workflow {record.workflow_id!r} has no step {task_id!r} (known steps: {known}).",
            workflow_id=record.workflow_id,
            task_id=task_id,
        )
    return step


def get_status(workflow_id: str) -> WorkflowStatus:
    """The workflow's status (RESUMABLE once its driver is gone)."""
    _check_id(workflow_id)
    with workflow_services() as services:
        return _effective(services, services.store().load(workflow_id, with_steps=False))


def get_output(workflow_id: str, *, task_id: str | None = None) -> Any:
    """The stored output of the workflow, or of one of its steps.

    Raises:
        WorkflowOutputNotFoundError: no such workflow or step, or the step has no
            output yet (a WorkflowNotFoundError, and a ValueError as Ray raises here).
        WorkflowOutputFailedError: the workflow or step failed; its ``cause`` is the
            step's error (a WorkflowExecutionError, and a ValueError as in Ray).
        UnauthenticatedDataError: the output's record is not signed with this
            installation's key (it is not read).
    """
    _check_id(workflow_id)
    if task_id is not None:
        _check_id(task_id, "task_id")
    with workflow_services() as services:
        record = _load_for_output(services.store(), workflow_id)
        target = task_id or record.output_task_id
        checkpoints = services.checkpoints()
        if task_id is None and record.status is WorkflowStatus.FAILED:
            _raise_failure(services.store(), record, None)
        while True:
            step = _step_of(record, target or "", WorkflowOutputNotFoundError)
            if step.checkpoint is None and step.status is StepStatus.FAILED:
                _raise_failure(services.store(), record, step)
            if step.checkpoint is None:
                raise WorkflowOutputNotFoundError(
                    f"Step {target!r} of workflow {workflow_id!r} has no stored output "
                    f"(status {step.status}).",
                    workflow_id=workflow_id,
                    task_id=target or "",
                )
            if step.output_format != "continuation":
                return checkpoints.read(step.checkpoint)
            cont = checkpoints.read(step.checkpoint)
            target = compile_dag(cont.dag, prefix=f"{target}.").output


def _load_for_output(store: WorkflowStore, workflow_id: str, **kwargs: Any) -> WorkflowRecord:
    """The workflow's record; an unknown id is a WorkflowOutputNotFoundError (get_output)."""
    try:
        return store.load(workflow_id, **kwargs)
    except WorkflowOutputNotFoundError:
        raise
    except WorkflowNotFoundError as exc:
        raise WorkflowOutputNotFoundError(str(exc), workflow_id=workflow_id) from None


def _raise_failure(store: WorkflowStore, record: WorkflowRecord, step: StepRecord | None) -> None:
    """Raise what :func:`run` raised when the workflow (or ``step``) failed, for get_output.

    A :class:`WorkflowOutputFailedError` (a WorkflowExecutionError that is also the
    ValueError Ray's get_output raises) whose ``cause`` (and ``__cause__``) is the
    step's error: a :class:`~heliostat.exceptions.TaskError` that is also an instance
    of the user's exception class, rebuilt from the signed copy in the lineage. When
    that copy is missing (the exception could not be pickled, or the worker died), the
    cause is a TaskError carrying the recorded type, message and traceback.
    """
    wid = record.workflow_id
    if step is None:
        failed = [s for s in record.steps.values() if s.status is StepStatus.FAILED]
        if not failed:
            raise WorkflowOutputFailedError(
                record.error or f"Workflow {wid!r} failed.", workflow_id=wid
            )
        step = min(failed, key=lambda s: s.finished_at or record.created_at)
    cause: BaseException | None = None
    data = store.step_exception(wid, step.task_id)
    if data is not None:
        try:
            cause = cloudpickle.loads(data)
        except Exception:  # its class is not importable here: keep its text
            log.debug("cannot unpickle the exception of %s/%s", wid, step.task_id, exc_info=True)
    summary = step.error or "the step failed"
    error = TaskError(
        step.name, step.traceback or "", cause, cause_repr=summary
    ).as_instanceof_cause()
    raise WorkflowOutputFailedError(
        f"Workflow {wid!r} failed: step {step.task_id!r} raised {summary}",
        workflow_id=wid,
        task_id=step.task_id,
        cause=error,
    ) from error


def get_output_async(workflow_id: str, *, task_id: str | None = None) -> ObjectRef:
    """Like :func:`get_output`, in the background; returns a ref to the output (Ray's API).

    While the workflow runs (in this process or another driver) the ref completes when
    it finishes, or with ``task_id`` when that step has an output, even a step that
    has not started yet or that a continuation creates later; otherwise it holds the
    stored output, or the error :func:`get_output` raises (``hs.get`` raises it).

    Raises:
        TypeError / ValueError: a malformed id (at once, not through the ref).
        NotInitializedError: no runtime (``hs.init()`` first).
    """
    _check_id(workflow_id)
    if task_id is not None:
        _check_id(task_id, "task_id")
    services = _services()
    if not services.expected(workflow_id):  # unknown id: fail here
        _load_for_output(services.store(), workflow_id, with_steps=False)

    def still_running() -> bool:
        if not services.wait_finished(workflow_id, timeout=0):  # a run of this process
            return True
        # A run of another driver: its outputs are there once it stops running.
        return get_status(workflow_id) in (WorkflowStatus.RUNNING, WorkflowStatus.PENDING)

    def fetch() -> Any:
        pause = threading.Event()
        if task_id is None:
            services.wait_finished(workflow_id)
            while still_running():
                pause.wait(_OUTPUT_POLL_S)
            return get_output(workflow_id, task_id=task_id)
        # One step: as in Ray, the ref completes when that step has finished, even if
        # it has not started yet (or only a continuation will create it). Only once
        # the run is over does a step without output become an error.
        while True:
            running = still_running()
            try:
                return get_output(workflow_id, task_id=task_id)
            except WorkflowNotFoundError:
                if not running:
                    raise
            pause.wait(_OUTPUT_POLL_S)

    return _in_thread(fetch)


def init(
    storage: str | None = None,
    *,
    max_running_workflows: int | None = None,
    max_pending_workflows: int | None = None,
) -> None:
    """Prepare workflows: start the runtime if needed and choose the checkpoint storage.

    Ray's ``workflow.init``. Without a runtime, starts one (``hs.init(storage=...)``).
    With ``storage``, step outputs are checkpointed there from now on (any fsspec URL,
    or a local path); it takes precedence over ``HELIOSTAT_STORAGE``, which still
    applies when ``storage`` is None. The lineage database is chosen by
    ``HELIOSTAT_DB_URL`` (default: SQLite under ``HELIOSTAT_HOME``) and is not changed here.

    Args:
        storage: checkpoint URL or path, or None to keep the current choice.
        max_running_workflows: Ray's limit on concurrent workflows; heliostat runs every
            workflow it is asked to at once, so only None or -1 (no limit) is accepted.
        max_pending_workflows: likewise, only None or -1.

    Raises:
        TypeError: an argument of the wrong type.
        ValueError: a limit heliostat does not enforce.
        WorkflowError: workflows of this runtime already use another storage.
        StorageError: ``storage`` names no filesystem fsspec knows.
    """
    if storage is not None and not isinstance(storage, str):
        raise TypeError(f"storage must be a str (a URL or path), not {type(storage).__name__}.")
    for name, limit in (
        ("max_running_workflows", max_running_workflows),
        ("max_pending_workflows", max_pending_workflows),
    ):
        if limit is None:
            continue
        if not isinstance(limit, int) or isinstance(limit, bool):
            raise TypeError(f"{name} must be None or an int, not {type(limit).__name__}.")
        if limit != -1:
            raise ValueError(
                f"{name}={limit} is not supported: heliostat runs every workflow at once, "
                "with no queue; pass None or -1 (no limit)."
            )
    _refuse_inside_task("init")
    if current_runtime() is None:
        hs.init(storage=storage)
        return
    if storage is not None:
        _services().use_storage(storage)


def get_metadata(workflow_id: str, task_id: str | None = None) -> dict[str, Any]:
    """Status, timings and user metadata of a workflow or one step."""
    _check_id(workflow_id)
    with workflow_services() as services:
        record = services.store().load(workflow_id)
        if task_id is None:
            return {
                "workflow_id": record.workflow_id,
                "status": str(_effective(services, record)),
                "user_metadata": record.metadata,
                "schedule": record.schedule,
                "created_at": record.created_at.isoformat(),
                "started_at": record.started_at.isoformat() if record.started_at else None,
                "finished_at": record.finished_at.isoformat() if record.finished_at else None,
                "error": record.error,
                "resume_count": record.resume_count,
                "steps": len(record.steps),
                "steps_done": record.steps_done,
            }
    step = _step_of(record, task_id)
    return {
        "task_id": step.task_id,
        "name": step.name,
        "status": str(step.status),
        "attempts": step.attempts,
        "user_metadata": step.metadata,
        "queued_at": step.queued_at.isoformat() if step.queued_at else None,
        "started_at": step.started_at.isoformat() if step.started_at else None,
        "finished_at": step.finished_at.isoformat() if step.finished_at else None,
        "duration": step.duration,
        "error": step.error,
        "error_type": step.error_type,
        "traceback": step.traceback,
        "idempotency_key": step.idempotency_key,
        "checkpoint": step.checkpoint.location if step.checkpoint else None,
    }


def _statuses(
    status_filter: WorkflowStatus | str | Iterable[WorkflowStatus | str] | None,
) -> list[WorkflowStatus] | None:
    if status_filter is None:
        return None
    items = [status_filter] if isinstance(status_filter, str) else list(status_filter)
    return [WorkflowStatus(s) for s in items]


def _check_limit(limit: object) -> None:
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)):
        raise TypeError(f"limit must be an int or None, not {type(limit).__name__}.")
    if isinstance(limit, int) and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}.")


def list_all(
    status_filter: WorkflowStatus | str | Iterable[WorkflowStatus | str] | None = None,
    *,
    limit: int | None = None,
) -> list[tuple[str, WorkflowStatus]]:
    """(workflow id, status) of every workflow (the newest ``limit`` ones), newest first."""
    statuses = _statuses(status_filter)
    _check_limit(limit)
    with workflow_services() as services:
        records = services.store().list_workflows(statuses, limit=limit)
        return [(r.workflow_id, _effective(services, r)) for r in records]


def list_records(
    status_filter: WorkflowStatus | str | Iterable[WorkflowStatus | str] | None = None,
    *,
    limit: int | None = None,
    search: str | None = None,
) -> list[WorkflowRecord]:
    """Workflow records, newest first, as a listing needs them: status (made effective:
    RESUMABLE once a driver is gone), times, steps done / total, the schedule a run came
    from; no steps, no DAG.

    Args:
        status_filter: only these statuses.
        limit: at most this many.
        search: only ids containing this text.
    """
    statuses = _statuses(status_filter)
    _check_limit(limit)
    if search is not None and not isinstance(search, str):
        raise TypeError(f"search must be a str, not {type(search).__name__}.")
    with workflow_services() as services:
        records = services.store().list_workflows(statuses, limit=limit, search=search)
        out = []
        for r in records:
            status = _effective(services, r)
            out.append(r if status is r.status else dataclasses.replace(r, status=status))
        return out


def cancel(workflow_id: str) -> None:
    """Cancel a workflow: no new step of it starts once this returns.

    A run in progress (in this process or another) interrupts its idempotent steps in
    flight, lets a non-idempotent one finish and records its result, starts nothing
    downstream, and ends CANCELED; its steps that never started become SKIPPED. A
    workflow nobody runs is marked CANCELED at once. A finished workflow is left as it is.
    """
    _check_id(workflow_id)
    with workflow_services() as services:
        store = services.store()
        record = store.load(workflow_id, with_steps=False)
        if record.status in (WorkflowStatus.SUCCESSFUL, WorkflowStatus.CANCELED):
            return
        _effective(services, record)  # a dead run's attempts are marked interrupted first
        # The status check of every group commit that starts steps happens under the
        # same row lock, so no INTENT is written after this commits.
        store.move(workflow_id, cancel_moves(workflow_id), now=services.clock.now())
        services.notify_cancel(workflow_id)


_UNSET: Any = object()


def resolve(workflow_id: str, task_id: str, *, result: Any = _UNSET, rerun: bool = False) -> None:
    """Settle an in-doubt step by hand, after checking what really happened.

    Give either ``result`` (the step did its work: this becomes its output) or
    ``rerun=True`` (it did not: run it again). Then resume the workflow
    (``workflow.resume(workflow_id)``, or ``heliostat workflow resume ID``).

    Raises:
        WorkflowNotFoundError: no such workflow or step.
        WorkflowLeaseError: a driver is running the workflow right now.
        ValueError: the step is not IN_DOUBT, or not exactly one of result / rerun.
        TypeError: ``rerun`` is not a bool.
    """
    _check_id(workflow_id)
    _check_id(task_id, "task_id")
    if not isinstance(rerun, bool):
        raise TypeError(f"rerun must be a bool, not {type(rerun).__name__}.")
    if (result is _UNSET) == (not rerun):
        raise ValueError("Pass exactly one of result=... or rerun=True.")
    with workflow_services() as services:
        store = services.store()
        step = _step_of(store.load(workflow_id), task_id)
        if step.status is not StepStatus.IN_DOUBT:
            raise ValueError(
                f"Step {task_id!r} of workflow {workflow_id!r} is {step.status}, not "
                "IN_DOUBT; only an in-doubt step can be resolved."
            )
        lease, seq = store.take_over(
            workflow_id,
            LeaseOwner.new(),
            timeout=lease_timeout(),
            now=services.clock.now(),
            moves=lambda status, live: [],
        )
        try:
            checkpoint = None
            if not rerun:
                checkpoint = services.checkpoints().write(
                    workflow_id, task_id, max(step.attempts, 1), result
                )
            records = resolve_records(
                workflow_id,
                task_id,
                store.load(workflow_id).steps[task_id].status,
                step.attempts,
                checkpoint=checkpoint,
                rerun=rerun,
                at=services.clock.now(),
            )
        except BaseException:
            store.commit(lease, seq + 1, [], now=services.clock.now(), release=True)
            raise
        store.commit(lease, seq + 1, records, now=services.clock.now(), release=True)
    log.info(
        "step %r of workflow %r resolved (%s); resume the workflow to go on: "
        "heliostat workflow resume %s",
        task_id,
        workflow_id,
        "re-run" if rerun else "result given",
        workflow_id,
    )


def delete(workflow_id: str) -> None:
    """Forget a workflow: its lineage rows and its checkpoints.

    Raises:
        WorkflowLeaseError: a driver runs it now (cancel it first).
    """
    _check_id(workflow_id)
    with workflow_services() as services:
        store = services.store()
        record = store.load(workflow_id, with_steps=False)
        if WorkflowStore.lease_is_live(record.lease, services.clock.now()):
            raise WorkflowLeaseError(
                f"Workflow {workflow_id!r} is running ({record.lease.describe()}); cancel "
                "it before deleting it.",
                workflow_id=workflow_id,
                holder_host=record.lease.host or "",
                holder_pid=record.lease.pid or 0,
            )
        store.delete(workflow_id)
        services.checkpoints().delete_workflow(workflow_id)


def describe(workflow_id: str, *, steps: bool = True) -> WorkflowRecord:
    """The workflow's lineage record with its steps, for display (``heliostat workflow show``).

    The record's status is the one :func:`get_status` reports (RESUMABLE once the
    driver is gone); ``steps`` maps each task id to its record: status, attempts,
    timings, latest error. With ``steps=False`` only the run's own row is read (its
    ``steps_done`` / ``steps_total`` counters are kept current by every commit): what
    a poll of a running workflow needs.

    Raises:
        WorkflowNotFoundError: no such workflow.
    """
    _check_id(workflow_id)
    if not isinstance(steps, bool):
        raise TypeError(f"steps must be a bool, not {type(steps).__name__}.")
    with workflow_services() as services:
        store = services.store()
        record = store.load(workflow_id, with_steps=False)
        status = _effective(services, record)
        if steps or status is not record.status:
            record = store.load(workflow_id, with_steps=steps)
        return record if status is record.status else dataclasses.replace(record, status=status)


def attempts(workflow_id: str, task_id: str | None = None) -> list[AttemptRecord]:
    """Every attempt of the workflow's steps (of one step), oldest first: times, worker,
    outcome, and the exception's type, message and traceback for failed ones."""
    _check_id(workflow_id)
    with workflow_services() as services:
        store = services.store()
        record = store.load(workflow_id, with_steps=task_id is not None)
        if task_id is not None:
            _step_of(record, task_id)
        return store.attempts(workflow_id, task_id)


def logs(workflow_id: str, task_id: str | None = None) -> list[tuple[str, int, StepLogs]]:
    """What the workflow's steps printed (stdout and stderr), per step and attempt.

    Each attempt keeps the last megabyte it printed; ``StepLogs.truncated`` says when
    the start was cut.

    Returns:
        ``(task id, attempt, logs)`` in step order, attempts in order.
    """
    _check_id(workflow_id)
    with workflow_services() as services:
        store = services.store()
        record = store.load(workflow_id, with_steps=task_id is not None)
        if task_id is not None:
            _step_of(record, task_id)
        return store.logs(workflow_id, task_id)
