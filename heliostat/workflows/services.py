"""The workflow layer's per-runtime services: lineage stores, checkpoint stores, leases.

They belong to the runtime: opened on the first workflow call after ``hs.init()``
(so ``init`` itself stays fast and imports no SQL), closed by ``hs.shutdown()``
(:attr:`heliostat.engine.runtime.Runtime.extensions`). Nothing lives in module
globals: two runtimes one after the other (tests) share nothing.

A call that needs no runtime (reading a status, listing, cancelling from the command
line) gets short-lived services of its own, closed when it returns
(:func:`workflow_services`).

A driver joined to a cluster records its workflows in the cluster's database and
checkpoint store (what the head publishes), unless it sets its own: the order is
decided by :mod:`heliostat.workflows.cluster_stores`.

The clock is injected here: :func:`install` gives a runtime services with a
:class:`~heliostat.workflows.clock.FakeClock`, and leases then expire only when a test
moves that clock.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from heliostat.engine.runtime import Runtime, current_runtime
from heliostat.exceptions import StorageError, WorkflowError
from heliostat.storage.checkpoints import (
    CheckpointStore,
    default_storage_url,
    validate_storage_url,
)
from heliostat.storage.db import default_db_url
from heliostat.storage.signing import Signer, default_signer
from heliostat.workflows import cluster_stores
from heliostat.workflows.clock import Clock, SystemClock
from heliostat.workflows.heap import HeapFreeze
from heliostat.workflows.lease import LeaseKeeper
from heliostat.workflows.store import WorkflowStore

if TYPE_CHECKING:
    from heliostat.cluster.rpc import WorkflowStores
    from heliostat.engine.attach import AttachedRuntime

__all__ = ["EXTENSION", "WorkflowServices", "install", "runtime_services", "workflow_services"]

EXTENSION = "heliostat.workflows"
"""The key of the services in ``Runtime.extensions``."""


class _Cancellable(Protocol):
    def request_cancel(self) -> None: ...


class WorkflowServices:
    """Stores (one per database URL and key), checkpoint stores, the lease keeper, the
    registry of runs in progress and the heap freeze of runs (see
    :mod:`heliostat.workflows.heap`), for one runtime (or one call without one).

    Args:
        clock: the time source of leases and records (default: the system clock).
        storage: the checkpoint URL given to ``hs.init(storage=...)``, if any.
        cluster: what the head of the cluster this runtime joined publishes about its
            workflow stores (``None``: not joined).
        head: that head's address (for messages).
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        storage: str | None = None,
        cluster: WorkflowStores | None = None,
        head: str = "",
    ) -> None:
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.storage = storage
        self.cluster = cluster
        self._head = head
        self._machine = ""
        if cluster is not None:
            from heliostat.cluster.local import machine_id

            self._machine = machine_id()
        self._cluster_signer: Signer | None = None
        self.keeper = LeaseKeeper(self.clock)
        self.heap = HeapFreeze()
        self._stores: dict[tuple[str, int], WorkflowStore] = {}
        self._checkpoints: dict[str, CheckpointStore] = {}
        self._running: dict[str, _Cancellable] = {}
        self._finished: dict[str, threading.Event] = {}  # set when the run ends
        self._lock = threading.Lock()
        self._closed = False

    def store(self, url: str | None = None) -> WorkflowStore:
        """The lineage store of ``url`` (default: ``HELIOSTAT_DB_URL``, the cluster's
        database, or the home's SQLite).

        Raises:
            StorageError: the database cannot be opened or the installation key read,
                or the cluster's database cannot be shared from this machine (the
                message says what to do).
        """
        signer: Signer | None = None
        if url is None:
            choice = cluster_stores.choose_db(
                self.cluster, os.environ, machine=self._machine, head=self._head
            )
            if choice.refusal is not None:
                raise StorageError(choice.refusal)
            url = choice.url or default_db_url()
            signer = self._signer_for(cluster_stores.choose_key(self.cluster, os.environ, choice))
        if signer is None:
            signer = default_signer()  # follows HELIOSTAT_HOME / HELIOSTAT_SECRET_KEY
        key = (url, id(signer))
        with self._lock:
            store = self._stores.get(key)
        if store is not None:
            return store
        store = WorkflowStore.open(url, signer=signer)
        with self._lock:
            existing = self._stores.get(key)
            if existing is None:
                self._stores[key] = store
                return store
        store.close()  # another thread opened it first
        return existing

    def _signer_for(self, key: bytes | None) -> Signer | None:
        """A signer of the cluster's key (one per services, so stores are reused)."""
        if key is None:
            return None
        signer = self._cluster_signer
        if signer is None or signer.export_key() != key:
            signer = Signer(key, source=f"the cluster's key (from the head at {self._head})")
            self._cluster_signer = signer
        return signer

    def checkpoints(self) -> CheckpointStore:
        """The checkpoint store: ``hs.init(storage=)``, ``HELIOSTAT_STORAGE``, the
        cluster's, or the home's.

        Raises:
            StorageError: the URL names no filesystem fsspec knows, or one whose package
                is not installed (the message names where the URL came from), or the
                cluster's store cannot be shared from this machine.
        """
        choice = cluster_stores.choose_storage(
            self.cluster,
            os.environ,
            init_storage=self.storage,
            machine=self._machine,
            head=self._head,
        )
        if choice.refusal is not None:
            raise StorageError(choice.refusal)
        url, source = choice.url or default_storage_url(), choice.source
        with self._lock:
            store = self._checkpoints.get(url)
        if store is not None:
            return store
        validate_storage_url(url, source=source)
        store = CheckpointStore(url)
        with self._lock:
            return self._checkpoints.setdefault(url, store)

    # --- runs in progress ---------------------------------------------------------------

    def register(self, workflow_id: str, run: _Cancellable) -> None:
        with self._lock:
            self._running[workflow_id] = run
            self._finished.setdefault(workflow_id, threading.Event()).clear()

    def unregister(self, workflow_id: str, run: _Cancellable) -> None:
        with self._lock:
            if self._running.get(workflow_id) is run:
                del self._running[workflow_id]
                done = self._finished.pop(workflow_id, None)
                if done is not None:
                    done.set()

    def expect(self, workflow_id: str) -> None:
        """A run of ``workflow_id`` is about to start in this process (``run_async``):
        :meth:`wait_finished` waits for it from now on, before its row exists."""
        with self._lock:
            self._finished.setdefault(workflow_id, threading.Event()).clear()

    def finished(self, workflow_id: str) -> None:
        """The run :meth:`expect` announced is over, however it ended."""
        with self._lock:
            if workflow_id not in self._running:
                done = self._finished.pop(workflow_id, None)
                if done is not None:
                    done.set()

    def expected(self, workflow_id: str) -> bool:
        """Whether a run of ``workflow_id`` in this process is announced or going on."""
        with self._lock:
            return workflow_id in self._finished

    def wait_finished(self, workflow_id: str, timeout: float | None = None) -> bool:
        """Wait until the run of ``workflow_id`` in this process (if any) ends.

        Returns:
            False if it still runs after ``timeout`` seconds, else True.
        """
        with self._lock:
            done = self._finished.get(workflow_id)
        return True if done is None else done.wait(timeout)

    def use_storage(self, url: str) -> None:
        """Checkpoint to ``url`` from now on (``workflow.init(storage=...)``).

        Raises:
            WorkflowError: workflows of this runtime already checkpoint elsewhere
                (their steps would be split between two storages).
            StorageError: ``url`` names no filesystem fsspec knows.
        """
        validate_storage_url(url, source="workflow.init(storage=...)")
        with self._lock:
            used = set(self._checkpoints)
            if used and used != {url}:
                raise WorkflowError(
                    f"workflow.init(storage={url!r}): workflows of this runtime already "
                    f"checkpoint to {sorted(used)[0]!r}. Choose the storage before the "
                    "first workflow runs (or hs.shutdown() and start again)."
                )
            self.storage = url

    def notify_cancel(self, workflow_id: str) -> None:
        """Tell a run of ``workflow_id`` in this process that it was canceled."""
        with self._lock:
            run = self._running.get(workflow_id)
        if run is not None:
            run.request_cancel()

    # --- lifecycle ------------------------------------------------------------------------

    def close_stores(self) -> None:
        """Close the stores (the next call opens them again); tests switch databases."""
        with self._lock:
            stores = list(self._stores.values())
            self._stores.clear()
            self._checkpoints.clear()
        for store in stores:
            store.close()

    def close(self) -> None:
        """Stop the lease keeper and close every store (called by ``hs.shutdown()``)."""
        if self._closed:
            return
        self._closed = True
        self.keeper.close()
        self.close_stores()


def install(runtime: Runtime | AttachedRuntime, *, clock: Clock | None = None) -> WorkflowServices:
    """Give ``runtime`` workflow services with ``clock`` (tests pass a FakeClock).

    Replaces (and closes) services it had already.
    """
    old = runtime.extensions.pop(EXTENSION, None)
    if old is not None:
        old.close()
    membership = runtime.extensions.get("cluster")
    services = WorkflowServices(
        clock=clock,
        storage=runtime.storage,
        cluster=getattr(membership, "workflow_stores", None),
        head=getattr(getattr(membership, "head", None), "address", ""),
    )
    runtime.extensions[EXTENSION] = services
    return services


_install_lock = threading.Lock()


def runtime_services(runtime: Runtime | AttachedRuntime | None = None) -> WorkflowServices | None:
    """The services of ``runtime`` (default: the current one), opened on first use;
    ``None`` without a runtime."""
    runtime = runtime or current_runtime()
    if runtime is None or runtime.client.closed:  # none, or shut down
        return None
    services = runtime.extensions.get(EXTENSION)
    if services is None:
        with _install_lock:
            services = runtime.extensions.get(EXTENSION)
            if services is None:
                services = install(runtime)
    assert isinstance(services, WorkflowServices)
    return services


@contextlib.contextmanager
def workflow_services() -> Iterator[WorkflowServices]:
    """The current runtime's services, or short-lived ones closed on exit.

    Without a runtime but with ``HELIOSTAT_ADDRESS`` set (a command run where drivers
    join a cluster), the short-lived ones use the cluster's stores, asked of its head.
    """
    services = runtime_services()
    if services is not None:
        yield services
        return
    published, head = _cluster_stores_from_env()
    temporary = WorkflowServices(cluster=published, head=head)
    try:
        yield temporary
    finally:
        temporary.close()


def _cluster_stores_from_env() -> tuple[WorkflowStores | None, str]:
    """What the head named by ``HELIOSTAT_ADDRESS`` publishes, if that is set."""
    if not os.environ.get("HELIOSTAT_ADDRESS", "").strip():
        return None, ""
    from heliostat.engine.cluster_join import fetch_workflow_stores, resolve_address

    address = resolve_address(None)
    if address is None:
        return None, ""
    return fetch_workflow_stores(address, None), address
