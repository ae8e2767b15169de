"""The processes ``heliostat start`` leaves running: a head daemon or a node daemon.

``heliostat start`` (:mod:`heliostat.cli.cluster`) runs ``python -m heliostat.cli.daemon``
in a new session, writes the daemon's :class:`DaemonSpec` as JSON to its stdin, and
reads one JSON line back from its stdout: ``{"ok": true, ...}`` once everything is up,
or ``{"ok": false, "error": "..."}``. The daemon then points stdout at ``/dev/null``
(its stderr is already the log file), so the command can exit and the daemon stays.

A head daemon runs, in this order (and stops them in the reverse order):

1. the metadata database (schema brought to head) and the node table read from it;
2. the control plane on gRPC (``heliostat.cluster.HeadServer``: token, optional TLS);
3. a local node (``hs.init`` with ``--num-cpus`` / ``--resources``), registered with
   the control plane like any node, so the head also runs work, as Ray's does;
4. the schedule trigger loop (the same one as ``heliostat scheduler``);
5. with ``--ui-port``, the web UI, with the cluster token as its token; its runtime
   page shows the control plane's nodes and jobs, read in this process.

A node daemon checks the head first (the token, the address), then starts its local
node and its agent, which registers and heartbeats (``heliostat.cluster.NodeAgent``).

SIGTERM or SIGINT stops either cleanly (a node deregisters first) and removes its pid
file; ``heliostat stop`` sends SIGTERM.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from types import FrameType
from typing import Any

__all__ = ["DaemonSpec", "main"]

log = logging.getLogger("heliostat.cluster")


@dataclass(frozen=True, slots=True, kw_only=True)
class DaemonSpec:
    """What ``heliostat start`` asks of a daemon (checked by the command already)."""

    kind: str  # "head" or "node"
    num_cpus: float | None = None
    resources: Mapping[str, float] = field(default_factory=dict)
    tls_cert: str | None = None
    # head
    host: str = "127.0.0.1"
    port: int = 0
    ui_port: int | None = None
    tls_key: str | None = None  # head and node: TLS between nodes too (peer_tls.py)
    # node
    address: str = ""
    node_ip_address: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def _stop_signals(stop: threading.Event) -> None:
    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


class _Stack:
    """Things to stop, newest first; one that fails to stop does not keep the rest up."""

    def __init__(self) -> None:
        self._items: list[tuple[str, Callable[[], None]]] = []

    def push(self, name: str, stop: Callable[[], None]) -> None:
        self._items.append((name, stop))

    def close(self) -> None:
        while self._items:
            name, stop = self._items.pop()
            try:
                stop()
            except Exception:
                log.warning("stopping %s failed", name, exc_info=True)


def _connect_host(host: str) -> str:
    """Where this machine reaches a server bound to ``host``."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def _join_host(host: str) -> str:
    """The head's address as another machine should dial it."""
    if host in ("0.0.0.0", "::", ""):
        with contextlib.suppress(OSError):
            return socket.gethostbyname(socket.gethostname())
    return host


def _fmt(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _run_head(spec: DaemonSpec, stack: _Stack, ready: dict[str, Any]) -> None:
    import heliostat
    from heliostat.cluster import HeadClient, HeadServer, HeadService, TlsFiles
    from heliostat.cluster.auth import cluster_id_of, ensure_token_file
    from heliostat.cluster.local import DaemonInfo, log_path, token_path, write_daemon_info
    from heliostat.engine.cluster_join import start_node_runtime
    from heliostat.storage.cluster_names import NameTableStore
    from heliostat.storage.cluster_nodes import NodeTableStore
    from heliostat.storage.db import default_db_url, ensure_schema, make_engine

    token, created = ensure_token_file(token_path())
    db_url = default_db_url()
    engine = make_engine(db_url)
    stack.push("the metadata database", engine.dispose)
    ensure_schema(engine)
    service = HeadService(
        cluster_id=cluster_id_of(token),
        version=heliostat.__version__,
        store=NodeTableStore(engine),
        workflow_stores=_workflow_stores(db_url),
        name_store=NameTableStore(engine),
    )
    tls = TlsFiles(cert=spec.tls_cert, key=spec.tls_key) if spec.tls_cert and spec.tls_key else None
    try:
        server = HeadServer(service, token=token, host=spec.host, port=spec.port, tls=tls)
    except BaseException:
        service.close()
        raise
    stack.push("the control plane", server.stop)
    address = _fmt(spec.host, server.port)
    log.info("control plane listening on %s (TLS %s)", address, "on" if tls else "off")

    client = HeadClient(_fmt(_connect_host(spec.host), server.port), token, tls_cert=spec.tls_cert)
    runtime = start_node_runtime(
        client,
        token=token,
        host=_connect_host(spec.host) if spec.host in ("0.0.0.0", "::") else spec.host,
        num_cpus=spec.num_cpus,
        resources=dict(spec.resources) or None,
        is_head=True,
        tls=_peer_tls(spec),
    )
    stack.push("the local node", heliostat.shutdown)
    node_id = runtime.extensions["cluster"].node_id

    stop_loop = threading.Event()
    scheduler = threading.Thread(
        target=_scheduler, args=(stop_loop,), name="heliostat-scheduler", daemon=True
    )
    scheduler.start()

    def stop_scheduler() -> None:
        stop_loop.set()
        scheduler.join(timeout=15)

    stack.push("the trigger loop", stop_scheduler)

    ui_url = ""
    if spec.ui_port is not None:
        ui_url = _start_ui(spec, token, db_url, stack, cluster=service)
    write_daemon_info(
        DaemonInfo(
            kind="head",
            pid=os.getpid(),
            started_at=time.time(),
            address=address,
            node_id=node_id,
            ui_url=ui_url,
            tls_cert=spec.tls_cert or "",
            log_file=str(log_path("head")),
        )
    )
    ready.update(
        address=address,
        join_address=_fmt(_join_host(spec.host), server.port),
        token=token,
        token_file=str(token_path()),
        token_created=created,
        node_id=node_id,
        ui_url=ui_url,
        db_url=_hide_password(db_url),
    )


def _peer_tls(spec: DaemonSpec) -> Any:
    """TLS between nodes with the cluster's certificate and key, when both were given."""
    from heliostat.cluster.peer_tls import PeerTls

    if spec.tls_cert and spec.tls_key:
        return PeerTls.load(spec.tls_cert, spec.tls_key)
    return None


def _workflow_stores(db_url: str) -> Any:
    """What the head publishes to joining drivers: its database, its checkpoint store
    (``--storage``, else the default under its home) and its signing key."""
    from heliostat.cluster.local import machine_id
    from heliostat.cluster.rpc import WorkflowStores
    from heliostat.storage.checkpoints import default_storage_url
    from heliostat.storage.signing import default_signer

    return WorkflowStores(
        db_url=db_url,
        storage_url=default_storage_url(),
        storage_configured=bool(os.environ.get("HELIOSTAT_STORAGE")),
        signing_key=default_signer().export_key(),
        head_machine=machine_id(),
    )


def _adopt_cluster_key(client: Any) -> None:
    """Sign as the cluster does: a node's workers tag the checkpoint files they write
    with the installation key, and the drivers that resume check those tags with the
    cluster's. A key set here (``HELIOSTAT_SECRET_KEY``) is kept."""
    from heliostat.storage.signing import SECRET_KEY_ENV

    if os.environ.get(SECRET_KEY_ENV):
        return
    stores = client.workflow_stores()
    if stores is not None and stores.signing_key:
        os.environ[SECRET_KEY_ENV] = stores.signing_key.hex()  # the workers inherit it


def _hide_password(url: str) -> str:
    import sqlalchemy as sa

    return sa.make_url(url).render_as_string(hide_password=True)


def _scheduler(stop: threading.Event) -> None:
    from heliostat.workflows import schedules

    try:
        schedules.run_scheduler(stop)
    except Exception:
        log.exception("the schedule trigger loop stopped")


def _start_ui(spec: DaemonSpec, token: str, db_url: str, stack: _Stack, *, cluster: Any) -> str:
    """Serve the web UI in this process; its runtime page reads ``cluster`` (the head's
    control plane) for the nodes and jobs."""
    import uvicorn

    from heliostat.cli.ui import _server_class
    from heliostat.ui import create_app

    app = create_app(db_url=db_url, token=token, host=spec.host, cluster=cluster)
    family = socket.AF_INET6 if ":" in spec.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((spec.host, spec.ui_port or 0))
    except OSError as exc:
        sock.close()
        raise OSError(
            f"the UI cannot listen on {spec.host}:{spec.ui_port}: {exc.strerror}"
        ) from None
    sock.listen(2048)
    port = sock.getsockname()[1]
    server = _server_class()(
        uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
    )
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="heliostat-ui", daemon=True
    )
    thread.start()

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()

    stack.push("the web UI", stop)
    host = _join_host(spec.host) if spec.host in ("0.0.0.0", "::") else spec.host
    return f"http://{_fmt(host, port)}/"


def _run_node(
    spec: DaemonSpec, stack: _Stack, ready: dict[str, Any], fatal: Callable[[Any], None]
) -> None:
    import heliostat
    from heliostat.cluster import HeadClient
    from heliostat.cluster.local import DaemonInfo, log_path, token_path, write_daemon_info
    from heliostat.engine.cluster_join import local_address_towards, start_node_runtime

    token = os.environ.get("HELIOSTAT_TOKEN", "")
    client = HeadClient(spec.address, token, tls_cert=spec.tls_cert)
    stack.push("the connection to the head", client.close)
    info = client.cluster_info()  # a wrong token or address fails here, before any work
    _adopt_cluster_key(client)
    # Keep the token where 'heliostat status' and hs.init(address="auto") look for it.
    if not token_path().exists():
        with contextlib.suppress(OSError):
            _store_token(token_path(), token)
    runtime = start_node_runtime(
        client,
        token=token,
        host=spec.node_ip_address or local_address_towards(spec.address),
        num_cpus=spec.num_cpus,
        resources=dict(spec.resources) or None,
        tls=_peer_tls(spec),
    )
    stack.push("the local node", heliostat.shutdown)
    membership = runtime.extensions["cluster"]
    membership.agent.set_on_fatal(fatal)
    node_id = membership.node_id
    write_daemon_info(
        DaemonInfo(
            kind="node",
            pid=os.getpid(),
            started_at=time.time(),
            address=spec.address,
            node_id=node_id,
            node_address=membership.link.address,
            tls_cert=spec.tls_cert or "",
            log_file=str(log_path("node")),
        )
    )
    ready.update(node_id=node_id, cluster_id=info.cluster_id, head=spec.address)


def _store_token(path: Any, token: str) -> None:
    from heliostat.storage.home import PRIVATE_FILE_MODE, make_private_dirs

    make_private_dirs(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
        os.write(fd, (token + "\n").encode("utf-8"))
    finally:
        os.close(fd)


def _report(out: Any, message: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        out.write(json.dumps(message) + "\n")
        out.flush()


def _detach_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)


def _freeze_startup_heap() -> None:
    """Keep what the daemon built at startup out of the cyclic collector's walks.

    A head holds a few hundred thousand objects once it is up (gRPC, SQLAlchemy, the
    UI's FastAPI and Jinja, the node manager), and nearly all of them live as long as
    the daemon. Under a stream of tiny tasks the node manager promotes enough objects
    for CPython to run a full collection about every 0.6 s, and each walked that whole
    heap: about 50 ms with the node manager's thread stalled (a round of 5,000 tasks
    then took a third longer; ``benchmarks/cluster.py``). Frozen (:func:`gc.freeze`),
    those objects are skipped; reference counting still frees them, and everything
    made later is collected as before. A workflow run that started first holds its
    own freeze (``workflows/heap.py``) and is left alone.
    """
    if gc.isenabled() and gc.get_freeze_count() == 0:
        gc.freeze()


def main() -> int:
    """Run the daemon described by the JSON on stdin; see the module docstring."""
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.WARNING,
        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
    )
    logging.getLogger("heliostat").setLevel(logging.INFO)
    spec = DaemonSpec(**json.loads(sys.stdin.read()))
    out = os.fdopen(os.dup(1), "w")
    stop = threading.Event()
    _stop_signals(stop)
    stack = _Stack()
    ready: dict[str, Any] = {"ok": True, "pid": os.getpid(), "kind": spec.kind}
    failure: list[BaseException] = []

    def fatal(exc: BaseException) -> None:
        failure.append(exc)
        stop.set()

    from heliostat.cluster.local import remove_daemon_files

    kind: Any = spec.kind
    try:
        if spec.kind == "head":
            _run_head(spec, stack, ready)
        else:
            _run_node(spec, stack, ready, fatal)
    except BaseException as exc:
        log.error("the %s daemon could not start: %s", spec.kind, exc, exc_info=True)
        stack.close()
        _report(out, {"ok": False, "error": f"{type(exc).__name__}: {exc}"})
        remove_daemon_files(kind, pid=os.getpid())
        return 1
    log.info("the %s daemon is up (pid %d)", spec.kind, os.getpid())
    _report(out, ready)
    out.close()
    _detach_stdout()
    _freeze_startup_heap()
    while not stop.wait(0.5):
        pass
    log.info("the %s daemon is stopping", spec.kind)
    stack.close()
    remove_daemon_files(kind, pid=os.getpid())
    if failure:
        log.error("the %s daemon stopped: %s", spec.kind, failure[0])
        return 1
    log.info("the %s daemon stopped", spec.kind)
    return 0


if __name__ == "__main__":
    sys.exit(main())
