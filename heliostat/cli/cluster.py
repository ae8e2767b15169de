"""``heliostat start`` (a head or a node daemon) and ``heliostat stop``.

``start`` checks every option before it starts anything, then runs the daemon
(:mod:`heliostat.cli.daemon`) in a session of its own and waits until it says it is
up, or why it is not: the command's exit status is the daemon's start-up outcome,
and a failed start leaves no process behind. ``stop`` sends SIGTERM to the daemons
started from this ``HELIOSTAT_HOME`` (the node first, so it can say goodbye to its
head), waits, and sends SIGKILL to the whole process group of one that does not
stop in time, saying so.

Also here: how ``heliostat status`` finds a head to ask (:func:`cluster_summary`).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from heliostat.cli._util import EXIT_FAILED, EXIT_OK, CliError

__all__ = ["DEFAULT_HEAD_PORT", "cluster_summary", "register"]

DEFAULT_HEAD_PORT = 9637
"""The head's gRPC port unless ``--port`` says otherwise (no well-known service's)."""

_START_TIMEOUT = 120.0  # seconds a daemon may take to come up (imports, a remote DB)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "start",
        help="start a cluster head (--head) or join this machine to one (--address)",
        description="Start a heliostat daemon on this machine and return. With --head: the "
        "cluster's control plane (gRPC, token required), a local node, the schedule "
        "trigger loop and, with --ui-port, the web UI; it prints the token and the "
        "command that joins a node. With --address HOST:PORT: a node (its own node "
        "manager, object store and workers) that registers with that head and "
        "heartbeats. Pid, log and token files go under HELIOSTAT_HOME/cluster/.",
    )
    role = p.add_mutually_exclusive_group(required=True)
    role.add_argument("--head", action="store_true", help="start a head")
    role.add_argument("--address", metavar="HOST:PORT", help="join the head at this address")
    p.add_argument(
        "--host",
        default=None,
        help="head: address to bind (default 127.0.0.1; 0.0.0.0 for every interface)",
    )
    p.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"head: gRPC port (default {DEFAULT_HEAD_PORT}; 0: any free)",
    )
    p.add_argument(
        "--num-cpus", type=float, default=None, help="CPUs this node offers (default: all)"
    )
    p.add_argument(
        "--resources", default=None, metavar="JSON", help="custom resources, e.g. '{\"db\": 1}'"
    )
    p.add_argument("--ui-port", type=int, default=None, help="head: also serve the web UI here")
    p.add_argument("--db-url", default=None, metavar="URL", help="head: the metadata database")
    p.add_argument("--storage", default=None, metavar="URL", help="head: the checkpoint store")
    p.add_argument(
        "--token",
        default=None,
        metavar="T",
        help="node: the cluster token (default HELIOSTAT_TOKEN, else this home's token file)",
    )
    p.add_argument(
        "--node-ip-address",
        default=None,
        metavar="IP",
        help="node: this node's address as the cluster sees it (a local address; default: "
        "the one that reaches the head)",
    )
    p.add_argument(
        "--tls-cert",
        default=None,
        metavar="PEM",
        help="the cluster's TLS certificate (with --tls-key): the head serves its control "
        "plane with it, every node serves its peers with it and trusts it for the head "
        "and its peers; its names must cover every node's address",
    )
    p.add_argument("--tls-key", default=None, metavar="PEM", help="the private key of --tls-cert")
    p.set_defaults(func=_cmd_start)

    p = sub.add_parser(
        "stop",
        help="stop the heliostat daemons started from this HELIOSTAT_HOME",
        description="Stop the node and head daemons that 'heliostat start' started from "
        "this HELIOSTAT_HOME: SIGTERM, then SIGKILL after --timeout seconds.",
    )
    p.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait before SIGKILL (default 30)"
    )
    p.set_defaults(func=_cmd_stop)


# --- checking the options -------------------------------------------------------------


def _resources(text: str | None) -> dict[str, float]:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise CliError(f"--resources is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise CliError("--resources must be a JSON object, e.g. '{\"db\": 1}'")
    out: dict[str, float] = {}
    for name, amount in value.items():
        if name in ("CPU", "GPU"):
            raise CliError(f"--resources cannot set {name}; use --num-cpus for CPUs")
        if isinstance(amount, bool) or not isinstance(amount, int | float):
            raise CliError(f"--resources: {name!r} must be a number, not {amount!r}")
        if not math.isfinite(amount) or amount < 0:
            raise CliError(f"--resources: {name!r} must be a finite number >= 0")
        out[str(name)] = float(amount)
    return out


def _port(name: str, value: int | None) -> None:
    if value is not None and not 0 <= value <= 65535:
        raise CliError(f"{name} must be 0-65535, not {value}")


def _readable(name: str, path: str | None) -> str | None:
    if path is None:
        return None
    full = os.path.abspath(path)
    if not os.access(full, os.R_OK) or not os.path.isfile(full):
        raise CliError(f"{name} {path!r} is not a readable file")
    return full


def _refuse(args: argparse.Namespace, names: tuple[str, ...], why: str) -> None:
    for name in names:
        if getattr(args, name.lstrip("-").replace("-", "_")) is not None:
            raise CliError(f"{name} {why}")


def _check_head(args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    _refuse(args, ("--token",), "is for a node; the head makes the cluster's token itself")
    _refuse(args, ("--node-ip-address",), "is for a node; a head binds to --host")
    _port("--port", args.port)
    _port("--ui-port", args.ui_port)
    if (args.tls_cert is None) != (args.tls_key is None):
        raise CliError("TLS needs both --tls-cert and --tls-key")
    host = args.host or "127.0.0.1"
    if args.db_url is not None:
        import sqlalchemy as sa

        try:
            sa.make_url(args.db_url)
        except sa.exc.ArgumentError as exc:
            raise CliError(f"--db-url {args.db_url!r} is not a database URL: {exc}") from None
        env["HELIOSTAT_DB_URL"] = args.db_url
    if args.storage is not None:
        from heliostat.storage.checkpoints import validate_storage_url

        try:
            validate_storage_url(args.storage, source="--storage")
        except Exception as exc:
            raise CliError(str(exc).splitlines()[0]) from None
        env["HELIOSTAT_STORAGE"] = args.storage
    if args.ui_port is not None and args.ui_port == args.port and args.port:
        raise CliError("--ui-port and --port must differ")
    return {
        "kind": "head",
        "host": host,
        "port": DEFAULT_HEAD_PORT if args.port is None else args.port,
        "ui_port": args.ui_port,
        "tls_cert": _readable("--tls-cert", args.tls_cert),
        "tls_key": _readable("--tls-key", args.tls_key),
    }


def _local_address_towards(host: str, port: int) -> str:
    """The address this machine uses to reach ``host`` (no packet is sent)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((host, port))
            return str(probe.getsockname()[0])
        except OSError:
            return "127.0.0.1"


def _check_node(args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    # Light modules only: this runs before the daemon starts (the daemon imports gRPC).
    from heliostat.cluster.addresses import parse_address
    from heliostat.cluster.auth import read_token_file
    from heliostat.cluster.local import token_path

    head_only = "is for a head (--head); a node takes --address"
    _refuse(args, ("--host", "--port", "--ui-port", "--db-url", "--storage"), head_only)
    if args.tls_key is not None and args.tls_cert is None:
        raise CliError("--tls-key needs --tls-cert (the cluster's certificate)")
    if args.tls_cert is not None and args.tls_key is None:
        raise CliError(
            "--tls-cert needs --tls-key on a node: nodes serve each other with TLS too, "
            "with the cluster's certificate and key"
        )
    try:
        host, port = parse_address(args.address)
    except ValueError as exc:
        raise CliError(f"--address: {exc}") from None
    token = args.token or os.environ.get("HELIOSTAT_TOKEN") or None
    if token is None:
        try:
            token = read_token_file(token_path())
        except (OSError, ValueError) as exc:
            raise CliError(f"cannot read the cluster token file: {exc}") from None
    if not token:
        raise CliError(
            "no cluster token: pass --token (printed by 'heliostat start --head'), set "
            f"HELIOSTAT_TOKEN, or put it in {token_path()}"
        )
    env["HELIOSTAT_TOKEN"] = token
    node_ip = args.node_ip_address or _local_address_towards(host, port)
    try:
        ipaddress.ip_address(node_ip)
    except ValueError:
        raise CliError(f"--node-ip-address {node_ip!r} is not an IP address") from None
    family = socket.AF_INET6 if ":" in node_ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((node_ip, 0))
        except OSError as exc:
            raise CliError(
                f"--node-ip-address {node_ip} is not an address of this machine ({exc.strerror})"
            ) from None
    return {
        "kind": "node",
        "address": args.address,
        "node_ip_address": node_ip,
        "tls_cert": _readable("--tls-cert", args.tls_cert),
        "tls_key": _readable("--tls-key", args.tls_key),
    }


# --- start ----------------------------------------------------------------------------


def _cmd_start(args: argparse.Namespace) -> int:
    from heliostat.cli.daemon import DaemonSpec
    from heliostat.cluster.local import DaemonKind, log_path, remove_daemon_files, running_daemon
    from heliostat.storage.home import make_private_dirs

    if args.num_cpus is not None and (not math.isfinite(args.num_cpus) or args.num_cpus < 0):
        raise CliError(f"--num-cpus must be a number >= 0, not {args.num_cpus}")
    resources = _resources(args.resources)
    env = dict(os.environ)
    fields = _check_head(args, env) if args.head else _check_node(args, env)
    spec = DaemonSpec(num_cpus=args.num_cpus, resources=resources, **fields)
    kind: DaemonKind = "head" if args.head else "node"
    running = running_daemon(kind)
    if running is not None:
        raise CliError(
            f"a {kind} daemon started from this HELIOSTAT_HOME is running (pid {running.pid}); "
            "'heliostat stop' it first, or use another HELIOSTAT_HOME",
            code=EXIT_FAILED,
        )
    remove_daemon_files(kind)  # stale files of a killed daemon
    log_file = log_path(kind)
    make_private_dirs(log_file.parent)
    answer = _spawn(spec.to_json(), env, log_file)
    if not answer.get("ok"):
        raise CliError(
            f"the {kind} daemon did not start: {answer.get('error', 'no answer')} "
            f"(log: {log_file})",
            code=EXIT_FAILED,
        )
    if kind == "head":
        _print_head(answer, log_file)
    else:
        print(
            f"heliostat node {answer['node_id']} started (pid {answer['pid']}) and joined "
            f"the head at {answer['head']} (cluster {answer['cluster_id']})\n"
            f"  log:  {log_file}\n"
            "Stop it with: heliostat stop",
            flush=True,
        )
    return EXIT_OK


def _spawn(spec_json: str, env: dict[str, str], log_file: Path) -> dict[str, Any]:
    """Start the daemon; its first stdout line, parsed (or why there is none)."""
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "heliostat.cli.daemon"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=fd,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    finally:
        os.close(fd)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(spec_json.encode("utf-8"))
    proc.stdin.close()
    line = b""
    deadline = time.monotonic() + _START_TIMEOUT
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            _kill_group(proc.pid)
            return {"ok": False, "error": f"no answer within {_START_TIMEOUT:g} s"}
        readable, _, _ = select.select([proc.stdout], [], [], left)
        if readable:
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                code = proc.wait()
                return {"ok": False, "error": f"it exited with status {code} before it was up"}
            line += chunk
    proc.stdout.close()
    try:
        answer: dict[str, Any] = json.loads(line)
    except ValueError:
        _kill_group(proc.pid)
        return {"ok": False, "error": f"unreadable answer {line[:200]!r}"}
    if not answer.get("ok"):
        proc.wait(timeout=30)
    return answer


def _print_head(answer: dict[str, Any], log_file: Path) -> None:
    join = f"heliostat start --address {answer['join_address']} --token {answer['token']}"
    lines = [
        f"heliostat head started (pid {answer['pid']}), listening on {answer['address']}",
        f"  cluster token: {answer['token']}",
        f"  token file:    {answer['token_file']} (mode 0600)",
        f"  metadata:      {answer['db_url']}",
    ]
    if answer.get("ui_url"):
        lines.append(f"  web UI:        {answer['ui_url']}")
    lines += [
        f"  log:           {log_file}",
        "To join a node to this cluster, run on its machine:",
        f"  {join}",
        "Stop it with: heliostat stop",
    ]
    print("\n".join(lines), flush=True)


# --- stop -----------------------------------------------------------------------------


def _kill_group(pid: int) -> None:
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
            return
        except ProcessLookupError:
            return
        except PermissionError:
            continue


def _gone(pid: int) -> bool:
    from heliostat._process import process_running

    return not process_running(pid)


def _cmd_stop(args: argparse.Namespace) -> int:
    from heliostat.cluster.local import remove_daemon_files, running_daemon

    if not args.timeout >= 0:
        raise CliError(f"--timeout must be >= 0, not {args.timeout}")
    stopped = 0
    for kind in ("node", "head"):
        info = running_daemon(kind)
        if info is None:
            remove_daemon_files(kind)
            continue
        os.kill(info.pid, signal.SIGTERM)
        deadline = time.monotonic() + args.timeout
        while not _gone(info.pid) and time.monotonic() < deadline:
            time.sleep(0.05)  # polling another process's exit: no handle to wait on
        if not _gone(info.pid):
            sys.stderr.write(
                f"heliostat: the {kind} daemon (pid {info.pid}) did not stop within "
                f"{args.timeout:g} s of SIGTERM; killing it and its processes (SIGKILL)\n"
            )
            _kill_group(info.pid)
            deadline = time.monotonic() + 10
            while not _gone(info.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        remove_daemon_files(kind)
        print(f"stopped the {kind} daemon (pid {info.pid})", flush=True)
        stopped += 1
    if not stopped:
        print("no heliostat daemon started from this HELIOSTAT_HOME is running", flush=True)
    return EXIT_OK


# --- status ---------------------------------------------------------------------------


def cluster_summary(address: str | None, token: str | None) -> dict[str, Any] | None:
    """The cluster ``heliostat status`` shows: ``None`` when no head is known here.

    The head is ``address``, else ``HELIOSTAT_ADDRESS``, else the one this home's head
    or node daemon uses; the token is ``token``, else ``HELIOSTAT_TOKEN``, else this
    home's token file. A head that does not answer is reported, not raised.
    """
    # The client (gRPC, the protobuf modules) only once a head is known: without one,
    # ``heliostat status`` reads two pid files and is done.
    from heliostat.cluster.local import read_daemon_info, running_daemon, token_path

    tls_cert: str | None = None
    address = address or os.environ.get("HELIOSTAT_ADDRESS") or None
    if address is None:
        for kind in ("head", "node"):
            if running_daemon(kind) is not None:
                info = read_daemon_info(kind)
                if info is not None and info.address:
                    address = info.address
                    tls_cert = info.tls_cert or None
                    break
    if address is None:
        return None
    from heliostat.cluster import HeadClient
    from heliostat.cluster.auth import read_token_file
    from heliostat.exceptions import ClusterError

    summary: dict[str, Any] = {"address": address}
    try:
        token = token or os.environ.get("HELIOSTAT_TOKEN") or read_token_file(token_path())
    except (OSError, ValueError) as exc:
        summary["error"] = f"cannot read the cluster token: {exc}"
        return summary
    if not token:
        summary["error"] = "no cluster token (--token, HELIOSTAT_TOKEN or the token file)"
        return summary
    try:
        with HeadClient(address, token, tls_cert=tls_cert, timeout=3.0) as client:
            head = client.cluster_info()
            nodes = client.list_nodes()
            totals = client.cluster_resources()
    except (ClusterError, ValueError) as exc:
        summary["error"] = str(exc)
        return summary
    summary.update(
        cluster_id=head.cluster_id,
        version=head.version,
        head_started_at=head.started_at,
        total=dict(totals.total),
        available=dict(totals.available),
        nodes=[
            {
                "node_id": n.node_id,
                "state": n.state.value,
                "address": n.address,
                "hostname": n.hostname,
                "pid": n.pid,
                "is_head": n.is_head,
                "incarnation": n.incarnation,
                "total": dict(n.total),
                "available": dict(n.available),
                "last_heartbeat_at": n.last_heartbeat_at,
                "silent_for": round(n.silent_for, 3),
                "objects": n.objects,
                "object_bytes": n.object_bytes,
            }
            for n in nodes
        ],
    )
    return summary
