"""What one UI app serves from (:class:`UiState`), and the small shared helpers.

The state is an object made by ``create_app`` and handed to the modules that register
routes (``api``, ``pages``, ``actions``): no module-level singleton, so the cluster's
head can serve an app of its own next to a test's.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import os
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from heliostat.storage.checkpoints import CheckpointStore
from heliostat.storage.signing import default_signer
from heliostat.storage.states import WorkflowStatus
from heliostat.ui import auth, dag
from heliostat.ui.cluster import ClusterSource
from heliostat.workflows.lineage import WorkflowRecord
from heliostat.workflows.store import WorkflowStore

__all__ = [
    "ACTIVE",
    "LOG_PAGE",
    "RESUMABLE_FROM",
    "TEMPLATES",
    "UiState",
    "as_utc",
    "utc_now",
]

log = logging.getLogger("heliostat.ui")

TEMPLATES = Path(__file__).parent
"""The package directory: ``templates/`` and ``static/`` are under it."""
ACTIVE = frozenset({"PENDING", "RUNNING"})
RESUMABLE_FROM = frozenset({"FAILED", "RESUMABLE", "CANCELED", "NEEDS_ATTENTION"})
_env_lock = threading.Lock()
LOG_PAGE = 16_384
"""Characters of an attempt's log on one page (the step page shows each attempt's last)."""


def as_utc(when: dt.datetime | None) -> dt.datetime | None:
    if when is None:
        return None
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UiState:
    """What one app serves from: its lineage store, checkpoint store and token."""

    def __init__(
        self,
        *,
        db_url: str,
        storage: str,
        token: str | None,
        host: str,
        cwd: str,
        cluster: ClusterSource | None = None,
    ) -> None:
        self.db_url = db_url
        self.cluster = cluster  # the head's control plane, when a head serves this UI
        self.storage = storage
        self.token = token or None
        self.loopback = auth.is_loopback(host)
        self.cwd = cwd
        self.secret = (
            hashlib.sha256(b"heliostat-ui:" + self.token.encode()).hexdigest()
            if self.token
            else secrets.token_hex(32)
        )
        self.store = WorkflowStore.open(db_url, signer=default_signer())
        self._checkpoints: CheckpointStore | None = None
        self.shapes = dag.ShapeCache()
        self.children: list[subprocess.Popen[bytes]] = []

    def checkpoints(self) -> CheckpointStore:
        if self._checkpoints is None:
            self._checkpoints = CheckpointStore(self.storage, source="heliostat ui --storage")
        return self._checkpoints

    @contextlib.contextmanager
    def api_env(self) -> Iterator[None]:
        """The environment the public API reads its database and storage from, pointed
        at this app's (the CLI reads the same variables)."""
        with _env_lock:
            saved = {k: os.environ.get(k) for k in ("HELIOSTAT_DB_URL", "HELIOSTAT_STORAGE")}
            os.environ["HELIOSTAT_DB_URL"] = self.db_url
            os.environ["HELIOSTAT_STORAGE"] = self.storage
            try:
                yield
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v

    def effective(self, record: WorkflowRecord) -> str:
        """A RUNNING run whose driver is surely gone shows as RESUMABLE (read only)."""
        if record.status is WorkflowStatus.RUNNING and self.store.holder_is_gone(record.lease):
            return "RESUMABLE"
        return str(record.status)

    def spawn_resume(self, workflow_id: str) -> None:
        """Run ``heliostat workflow resume ID`` in a child process, reaped by a thread."""
        env = {**os.environ, "HELIOSTAT_DB_URL": self.db_url, "HELIOSTAT_STORAGE": self.storage}
        child = subprocess.Popen(
            [sys.executable, "-m", "heliostat.cli", "workflow", "resume", workflow_id],
            cwd=self.cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.children.append(child)

        def reap() -> None:
            _, err = child.communicate()
            if child.returncode:
                log.warning(
                    "resume of %r exited %s: %s",
                    workflow_id,
                    child.returncode,
                    err.decode(errors="replace").strip()[-2000:],
                )
            self.children.remove(child)

        threading.Thread(
            target=reap, name=f"heliostat-ui-resume-{workflow_id}", daemon=True
        ).start()

    def close(self) -> None:
        for child in list(self.children):
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=30)
        self.store.close()
