"""The executors: local runs inline and logs; Ray sends timing only to the node with the target's resource."""

from __future__ import annotations

import math
import os
import socket
import sys
import threading
import time

import pytest

from edgeopt.errors import InputError
from edgeopt.executor import (Executor, LocalExecutor, TaskFuture, TaskRecord, make_executor, ray_on_loopback,
                              target_resource, wait_any)
from edgeopt.extras import MissingExtra, install_hint


def _square(x: int, *, plus: int = 0) -> int:
    return x * x + plus


def _fails(msg: str) -> None:
    raise ValueError(msg)


def _window(seconds: float) -> tuple[float, float, int]:
    """When this call ran (monotonic start and end on its host) and in which process."""
    t0 = time.monotonic()
    time.sleep(seconds)
    return t0, time.monotonic(), os.getpid()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------- local


def test_local_runs_inline_and_logs_each_task():
    seen: list[int] = []
    ex = make_executor("local")
    assert isinstance(ex, LocalExecutor) and isinstance(ex, Executor) and ex.name == "local" and ex.slots == 1
    fut = ex.build(seen.append, 7)
    assert seen == [7] and fut.done()          # ran when submitted, not when asked for
    assert isinstance(fut, TaskFuture) and wait_any([fut]) == [fut]
    assert ex.build(_square, 3, plus=1).result() == 10
    assert ex.measure(_square, 4).result(timeout=0) == 16
    assert [(r.kind, r.function, r.ok) for r in ex.log] == [
        ("build", "list.append", True), ("build", f"{__name__}._square", True),
        ("measure", f"{__name__}._square", True)]
    assert all(r.node_id == socket.gethostname() and r.seconds >= 0 for r in ex.log)
    assert ex.check_target() == []
    ex.close()


def test_local_reraises_the_task_exception_at_result():
    ex = make_executor("local")
    fut = ex.build(_fails, "no such layer")
    assert fut.done()
    with pytest.raises(ValueError, match="no such layer"):
        fut.result()
    rec = ex.log[-1]
    assert isinstance(rec, TaskRecord) and not rec.ok and rec.error == "no such layer"
    assert rec.to_dict()["kind"] == "build"


def test_bad_kind_and_options_are_input_errors():
    with pytest.raises(InputError, match="unknown executor 'dask'; known: local, ray"):
        make_executor("dask")
    with pytest.raises(InputError, match="executor is local"):
        make_executor("local", address="127.0.0.1:6379")
    with pytest.raises(InputError, match="num_cpus_per_build"):
        make_executor("ray", num_cpus_per_build=0)


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.1:99999", "http://", ""])
def test_malformed_address(address):
    with pytest.raises(InputError, match="ray address"):
        make_executor("ray", address=address)


def test_unreachable_address_is_one_line():
    port = _closed_port()
    with pytest.raises(InputError) as e:
        make_executor("ray", address=f"127.0.0.1:{port}")
    assert str(e.value).startswith(f"ray address 127.0.0.1:{port}: unreachable (") and "\n" not in str(e.value)


def test_an_open_port_that_is_not_ray_is_refused():
    """An HTTP server answers the HTTP/2 preface with HTTP/1 text: not a GCS, so no minutes of Ray retries."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def answer():
        conn, _ = srv.accept()
        with conn:
            conn.recv(64)
            conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    try:
        with pytest.raises(InputError, match="not a Ray cluster"):
            make_executor("ray", address=f"127.0.0.1:{srv.getsockname()[1]}")
    finally:
        t.join(5)
        srv.close()


def test_missing_ray_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)        # import ray now raises ImportError
    with pytest.raises(MissingExtra) as e:
        make_executor("ray")
    assert install_hint("ray") in str(e.value)


def test_target_resource_names():
    from edgeopt.target import detect_target

    assert target_resource("cpu-avx2") == "target:cpu-avx2"
    assert target_resource(" CPU AVX512/VNNI ") == "target:cpu-avx512-vnni"
    assert target_resource("auto") == f"target:{detect_target().name}"
    with pytest.raises(InputError):
        target_resource("//")


# --------------------------------------------------------------------------------------------- ray


@pytest.mark.slow
def test_ray_timing_runs_only_on_the_target_node():
    """A two-node cluster on 127.0.0.1: the head offers target:cpu-test, the worker only `builder`."""
    ray = pytest.importorskip("ray")
    from ray import cloudpickle
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        pytest.skip("Ray is already initialized in this process")
    cloudpickle.register_pickle_by_value(sys.modules[__name__])   # the workers cannot import tests/
    try:
        with ray_on_loopback():
            cluster = Cluster(initialize_head=True, head_node_args={
                "num_cpus": 1, "resources": {"target:cpu-test": 1}, "include_dashboard": False})
            cluster.add_node(num_cpus=1, resources={"builder": 2})
            cluster.wait_for_nodes()
    except Exception as e:
        pytest.skip(f"cannot start a local Ray cluster here: {type(e).__name__}: {e}")
    try:
        ex = make_executor("ray", address=cluster.address, target="cpu-test")
        try:
            assert ex.name == "ray" and ex.slots == 2
            nodes = {n["NodeID"]: n for n in ray.nodes() if n["Alive"]}
            head = [i for i, n in nodes.items() if n["Resources"].get("target:cpu-test")]
            assert len(nodes) == 2 and len(head) == 1
            builds = [ex.build(_window, 0.5) for _ in range(4)] + [ex.build(_square, 5)]
            measures = [ex.measure(_window, 0.2) for _ in range(3)]
            failed = ex.measure(_fails, "timing broke")
            assert isinstance(ex, Executor) and isinstance(failed, TaskFuture)
            assert wait_any(builds, timeout=60)            # at least one finished
            assert [f.result(timeout=60) for f in builds][-1] == 25
            windows = sorted(f.result(timeout=60) for f in measures)
            with pytest.raises(ValueError, match="timing broke") as e:
                failed.result(timeout=60)
            assert any("raised in a Ray task" in n for n in getattr(e.value, "__notes__", []))
            assert all(f.done() for f in builds + measures + [failed])

            by_kind: dict[str, list[TaskRecord]] = {"build": [], "measure": []}
            for r in ex.log:
                by_kind[r.kind].append(r)
            assert len(by_kind["build"]) == 5 and len(by_kind["measure"]) == 4
            assert {r.node_id for r in by_kind["measure"]} == set(head)
            assert all(r.resources.get("target:cpu-test") == 1 for r in by_kind["measure"])
            assert {r.node_id for r in by_kind["build"]} == set(nodes)     # builds went to both nodes
            assert {r.node_ip for r in ex.log} == {"127.0.0.1"}           # the cluster listens on loopback
            assert [r.ok for r in by_kind["measure"]].count(False) == 1
            # one timing task at a time on the node: their windows do not overlap
            assert all(a[1] <= b[0] for a, b in zip(windows, windows[1:]))

            other = make_executor("ray", address=cluster.address, target="cpu-nothing")
            assert [n["NodeID"] for n in ex.check_target()] == head
            with pytest.raises(InputError, match=r"no Ray node offers resource target:cpu-nothing"):
                other.check_target()
            with pytest.raises(InputError, match=r"no Ray node offers resource target:cpu-nothing"):
                other.measure(_square, 2)
            assert not [r for r in other.log if r.kind == "measure"]
            other.close()                            # it did not connect Ray, so Ray stays up
            assert ex.build(_square, 2).result(timeout=60) == 4
        finally:
            ex.close()
        assert not ray.is_initialized()
    finally:
        cluster.shutdown()
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
