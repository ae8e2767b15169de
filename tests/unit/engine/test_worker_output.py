"""Where a worker's output goes (``NodeState.worker_output`` / ``peer_output``): it is
printed on its own node in any case; the node also sends it to the job's driver when
that driver is attached there, or to the node that owns the task, which goes on from
there. Pure: instructions out, no processes."""

from __future__ import annotations

from heliostat.engine.node_instructions import Execute, LogLines, WorkerOutput
from heliostat.engine.peers import PeerInfo
from heliostat.engine.records import spec_to_wire
from heliostat.scheduler import ResourceSet

A, B = 1, 2  # node indexes: this node, and a peer


def _joined(make_node, num_cpus: float = 2):
    node = make_node(num_cpus=num_cpus)
    peers = node.state.join_cluster(A)
    total = ResourceSet.from_dict({"CPU": 2})
    peers.update([PeerInfo(index=B, address="127.0.0.2:1", total=total, available=total)])
    return node


def _driver_lines(node, driver) -> list[tuple[str, str, int, str, str]]:
    return [
        (m.stream, m.task_name, m.pid, m.text, m.origin)
        for m in node.sent(driver)
        if isinstance(m, WorkerOutput)
    ]


def _running(node, worker, submitter, spec) -> None:
    node.state.verbs["submit"](submitter, None, spec_to_wire(spec))
    assert any(isinstance(m, Execute) for m in node.sent(worker))


def test_output_of_an_attached_drivers_task_is_sent_to_that_driver(make_node, make_spec) -> None:
    node = _joined(make_node)
    driver = node.state.driver_attached(4242)
    worker = node.add_worker()
    _running(node, worker, driver, make_spec(name="load"))
    node.state.worker_output(worker, "stdout", "load", "hello")
    assert _driver_lines(node, driver) == [("stdout", "load", worker.pid, "hello", "")]
    assert not [e for e in node.effects() if isinstance(e, WorkerOutput | LogLines)]


def test_a_nested_tasks_output_goes_to_the_driver_of_its_parents_job(make_node, make_spec) -> None:
    node = _joined(make_node)
    driver = node.state.driver_attached(4242)
    parent_worker, child_worker = node.add_worker(), node.add_worker()
    parent = make_spec(name="parent")
    node.state.verbs["submit"](driver, None, spec_to_wire(parent))
    runs_parent = next(w for w in (parent_worker, child_worker) if node.sent(w))
    other = child_worker if runs_parent is parent_worker else parent_worker
    _running(node, other, runs_parent, make_spec(name="child"))
    node.state.worker_output(other, "stderr", "child", "warning: x")
    assert _driver_lines(node, driver) == [("stderr", "child", other.pid, "warning: x", "")]


def test_output_of_a_task_another_node_owns_goes_back_to_that_node(make_node, make_spec) -> None:
    node = _joined(make_node)
    worker = node.add_worker()
    spec = make_spec(name="remote")
    node.state.peer_forward(B, spec_to_wire(spec), b"code", [], [])
    assert any(isinstance(m, Execute) for m in node.sent(worker))
    node.state.worker_output(worker, "stdout", "remote", "line 1\nline 2")
    (sent,) = [e for e in node.effects() if isinstance(e, LogLines)]
    assert (sent.node, sent.task_id, sent.actor_id) == (B, spec.task_id, 0)
    assert (sent.text, sent.pid, sent.origin) == ("line 1\nline 2", worker.pid, f"{A:020x}")


def test_the_owner_prints_a_peers_lines_at_the_driver_of_the_job(make_node, make_spec) -> None:
    node = _joined(make_node, num_cpus=0)  # no CPUs: everything is forwarded to B
    driver = node.state.driver_attached(4242)
    mine, own = make_spec(name="mine"), make_spec(name="own")
    node.state.verbs["submit"](driver, None, spec_to_wire(mine))
    node.state.submit(node.state.driver, own)  # the node's own driver (index 0)
    assert {node.state.tasks.tasks[s.task_id].remote_node for s in (mine, own)} == {B}
    node.effects()
    origin = f"{B:020x}"
    node.state.peer_output(B, mine.task_id, 0, "stdout", "mine", 7, "hi", origin)
    assert _driver_lines(node, driver) == [("stdout", "mine", 7, "hi", origin)]
    node.state.peer_output(B, own.task_id, 0, "stdout", "own", 7, "also", origin)
    assert [e for e in node.effects() if isinstance(e, WorkerOutput)] == [
        WorkerOutput(stream="stdout", task_name="own", pid=7, text="also", origin=origin)
    ]


def test_a_remote_actors_output_reaches_the_driver_that_created_it(
    make_node, make_spec, make_options
) -> None:
    from heliostat.engine.records import TaskKind

    node = _joined(make_node, num_cpus=0)
    driver = node.state.driver_attached(4242)
    creation = make_spec(kind=TaskKind.ACTOR_CREATE, actor_id=77, name="Counter")
    reply: list = []
    node.state.verbs["create_actor"](
        driver,
        lambda ok, v: reply.append(ok),
        spec_to_wire(creation),
        make_options(methods={"add": 1}),
    )
    assert node.state.actors.actors[77].remote_node == B  # created there
    node.state.peer_output(B, 0, 77, "stdout", "Counter.add", 9, "added", f"{B:020x}")
    assert _driver_lines(node, driver) == [("stdout", "Counter.add", 9, "added", f"{B:020x}")]
