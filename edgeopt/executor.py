"""Where tasks run: build work inline or anywhere on a Ray cluster, timing only on nodes that are the target.

Two kinds of task: `build` (export, calibration, quantization, fine-tuning, fidelity) may run on any node;
`measure` (latency, peak memory) runs only on a node that advertises the target's Ray custom resource
(`target_resource("cpu-avx2") == "target:cpu-avx2"`). Each node advertises one unit of it, so at most one
timing task runs on a node at a time; a timing task also asks for every CPU of the smallest such node, so
no build task runs beside it either (parallel work on the node being timed would corrupt the numbers).

`LocalExecutor` runs each function inline when it is submitted (no Ray needed). `RayExecutor` submits
Ray tasks; the functions must be top-level functions of plain data (paths, dicts, numpy arrays), importable
on every node (edgeopt installed there), and the files they read and write must be on a folder every
node sees. Errors: a task's own exception comes back as itself from `result()`; Ray's failures (a worker
killed, a node lost) as a one-line PassError.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

from edgeopt.errors import InputError, PassError
from edgeopt.extras import require
from edgeopt.target import detect_target

T = TypeVar("T")

KINDS = ("local", "ray")
PROBE_TIMEOUT_S = 3.0          # how long a --ray-address gets to accept a TCP connection
# Ray's own resources; the rest of a node's resources are the custom ones a TaskRecord keeps
_RAY_BUILTIN = ("CPU", "GPU", "memory", "object_store_memory")


@dataclass
class TaskRecord:
    """Where and how long one finished task ran (`ok` False: it raised; `error` is the first line)."""

    kind: str                  # "build" | "measure"
    function: str              # module.qualname of the function
    node_id: str
    node_ip: str
    resources: dict[str, float] = field(default_factory=dict)   # the node's custom resources
    seconds: float = 0.0
    ok: bool = True
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@runtime_checkable
class TaskFuture(Protocol):
    """The result of a submitted task."""

    def result(self, timeout: float | None = None) -> Any: ...
    def done(self) -> bool: ...


@runtime_checkable
class Executor(Protocol):
    """Runs build tasks anywhere and measure tasks only where the target is; logs where each ran."""

    name: str
    slots: int
    log: list[TaskRecord]

    def build(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> TaskFuture: ...
    def measure(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> TaskFuture: ...
    def close(self) -> None: ...


def target_resource(target_name: str) -> str:
    """The Ray custom resource that marks a node as the target: "target:" + the sanitised target name.

    "auto" names this machine's detected target. Anything outside [a-z0-9._-] becomes "-".
    """
    name = str(target_name).strip().lower()
    if name == "auto":
        name = detect_target().name
    name = re.sub(r"[^a-z0-9._-]+", "-", name).strip("-")
    if not name:
        raise InputError(f"target name {target_name!r} gives no resource name")
    return f"target:{name}"


def _fn_name(fn: Callable[..., Any]) -> str:
    inner = getattr(fn, "func", fn)          # functools.partial
    qual = getattr(inner, "__qualname__", None) or type(inner).__name__
    mod = getattr(inner, "__module__", None)
    return f"{mod}.{qual}" if mod else qual


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _custom(resources: dict[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in resources.items() if k not in _RAY_BUILTIN and not k.startswith("node:")}


# --------------------------------------------------------------------------------------------- local


class _DoneFuture:
    """A future that is already finished (the local executor ran the function inline)."""

    def __init__(self, value: Any = None, error: BaseException | None = None):
        self._value, self._error = value, error

    def result(self, timeout: float | None = None) -> Any:
        if self._error is not None:
            raise self._error
        return self._value

    def done(self) -> bool:
        return True


class LocalExecutor:
    """Runs every task inline, in this process, when it is submitted; `slots` is 1."""

    name = "local"

    def __init__(self, target: str = "auto"):
        self.slots = 1
        self.log: list[TaskRecord] = []
        self._target = target
        self._node = socket.gethostname()

    def _run(self, kind: str, fn: Callable[..., Any], args: tuple, kwargs: dict) -> TaskFuture:
        t0 = time.perf_counter()
        try:
            value, error = fn(*args, **kwargs), None
        except Exception as e:     # handed back through result(), like a Ray task's
            value, error = None, e
        self.log.append(TaskRecord(kind, _fn_name(fn), self._node, "127.0.0.1", {}, time.perf_counter() - t0,
                                   error is None, "" if error is None else _first_line(error)))
        return _DoneFuture(value, error)

    def build(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> TaskFuture:
        return self._run("build", fn, args, kwargs)

    def measure(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> TaskFuture:
        return self._run("measure", fn, args, kwargs)

    def check_target(self) -> list[dict[str, Any]]:
        """Nothing to check: this machine is where measure tasks run."""
        return []

    def close(self) -> None:
        pass

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------------------------- ray


def _remote_call(fn: Callable[..., Any], args: tuple, kwargs: dict) -> tuple:
    """The body of every Ray task: run `fn`, and say where it ran and how long it took.

    Returns (ok, value or exception, remote traceback, node_id, node_ip, seconds). The task's own
    exception is returned, not raised, so the driver re-raises the original type; one that cannot make
    the trip (it does not pickle) becomes a PassError with its first line.
    """
    import ray  # lazy: ray is an optional extra (this runs inside a Ray worker, where it is loaded)
    from ray import cloudpickle  # lazy: as above

    ctx = ray.get_runtime_context()
    node_id, node_ip = ctx.get_node_id(), ray.util.get_node_ip_address()
    t0 = time.perf_counter()
    try:
        return True, fn(*args, **kwargs), "", node_id, node_ip, time.perf_counter() - t0
    except Exception as e:     # sent back to the driver, which raises it
        seconds, tb = time.perf_counter() - t0, traceback.format_exc()
        try:
            cloudpickle.loads(cloudpickle.dumps(e))
            err: Exception = e
        except Exception:      # an exception that cannot cross processes
            err = PassError(f"{type(e).__name__}: {_first_line(e)}")
        return False, err, tb, node_id, node_ip, seconds


class RayFuture:
    """A submitted Ray task. `result()` re-raises the task's exception; the first call that sees the task
    finished (`done()` or `result()`) adds its TaskRecord to the executor's log."""

    def __init__(self, executor: RayExecutor, ref: Any, kind: str, function: str):
        self._ex, self.ref, self._kind, self._function = executor, ref, kind, function
        self._lock = threading.Lock()
        self._settled = False
        self._value: Any = None
        self._error: BaseException | None = None

    def done(self) -> bool:
        if self._settled:
            return True
        ready, _ = self._ex._ray.wait([self.ref], num_returns=1, timeout=0)
        if ready:
            self._settle(None)
        return bool(ready)

    def result(self, timeout: float | None = None) -> Any:
        self._settle(timeout)
        if self._error is not None:
            raise self._error
        return self._value

    def _settle(self, timeout: float | None) -> None:
        with self._lock:
            if self._settled:
                return
            ray = self._ex._ray
            try:
                ok, value, tb, node_id, node_ip, seconds = ray.get(self.ref, timeout=timeout)
            except ray.exceptions.GetTimeoutError:
                raise TimeoutError(f"{self._function} did not finish within {timeout} s") from None
            except ray.exceptions.RayTaskError as e:   # the wrapper itself failed, e.g. fn not importable there
                cause = getattr(e, "cause", None)
                err = cause if isinstance(cause, Exception) else PassError(f"{self._function} on Ray: {_first_line(e)}")
                self._finish(None, err, "", "", 0.0)
                return
            except ray.exceptions.RayError as e:       # worker killed, node lost, task cancelled
                self._finish(None, PassError(f"{self._function} on Ray: {type(e).__name__}: {_first_line(e)}"),
                             "", "", 0.0)
                return
            if ok:
                self._finish(value, None, node_id, node_ip, seconds)
            else:
                if tb:
                    value.add_note(f"(raised in a Ray task on node {node_ip} {node_id[:12]})\n{tb.rstrip()}")
                self._finish(None, value, node_id, node_ip, seconds)

    def _finish(self, value: Any, error: BaseException | None, node_id: str, node_ip: str, seconds: float) -> None:
        self._value, self._error, self._settled = value, error, True
        self._ex._record(TaskRecord(self._kind, self._function, node_id, node_ip, self._ex._node_resources(node_id),
                                    seconds, error is None, "" if error is None else _first_line(error)))


def _split_address(address: str) -> tuple[str, int]:
    """HOST:PORT (or ray://HOST:PORT, [IPv6]:PORT) -> (host, port); anything else is an InputError."""
    rest = address.strip()
    if "://" in rest:
        rest = rest.split("://", 1)[1]
    m = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\s/]+):(\d+)", rest.rstrip("/"))
    if not m:
        raise InputError(f"ray address {address!r}: expected HOST:PORT (e.g. 127.0.0.1:6379)")
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    if not 0 < int(port) < 65536:
        raise InputError(f"ray address {address!r}: port {port} is out of range")
    return host, int(port)


_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])   # + an empty SETTINGS frame


def _reachable(host: str, port: int, timeout: float = PROBE_TIMEOUT_S, *, grpc: bool = False) -> str | None:
    """None when HOST:PORT accepts a TCP connection within `timeout`, else why not ("unreachable (…)").

    `grpc`: also ask that it speak HTTP/2, as Ray's GCS (a gRPC server) does: it must answer the HTTP/2
    preface with a SETTINGS frame. Ray itself would retry a port that is open but no GCS for many minutes.
    Skipped under RAY_USE_TLS (the handshake is TLS first).
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            if not grpc or os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
                return None
            sock.sendall(_H2_PREFACE)
            head = b""
            while len(head) < 9:
                chunk = sock.recv(9 - len(head))
                if not chunk:
                    break
                head += chunk
            if len(head) == 9 and head[3] == 4:            # frame type 4: SETTINGS
                return None
            return "answers, but is not a Ray cluster (no gRPC server there)"
    except socket.timeout:
        return f"unreachable (no answer within {timeout:g} s)"
    except OSError as e:
        return f"unreachable ({e.strerror or type(e).__name__})"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@contextlib.contextmanager
def ray_on_loopback() -> Iterator[None]:
    """Let Ray use 127.0.0.1 as this node's address while a node is started or joined inside the block.

    On Linux Ray swaps 127.0.0.1 for the machine's routable address and its servers listen on every
    interface; with this, a local cluster listens on 127.0.0.1 only. Ray has no public switch for it: this
    sets RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (what Ray reads at import; the processes started inside the
    block inherit it) and the constant Ray read from it, both restored afterwards. Without that constant
    (another Ray version) the block changes nothing and Ray binds as it always does.
    """
    import ray._private.ray_constants as rc  # lazy: ray is an optional extra; the one knob is private

    key = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
    old_env, had = os.environ.get(key), hasattr(rc, "ENABLE_RAY_CLUSTER")
    old = getattr(rc, "ENABLE_RAY_CLUSTER", None)
    os.environ[key] = "0"
    if had:
        rc.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if old_env is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old_env
        if had:
            rc.ENABLE_RAY_CLUSTER = old


class RayExecutor:
    """Build tasks as Ray tasks anywhere (`num_cpus_per_build` CPUs each); measure tasks only on nodes with
    the target's custom resource, one at a time per node, holding the CPUs of the smallest such node.

    `address` None starts a private single-node Ray on 127.0.0.1 (RAY_ADDRESS is not consulted) that offers
    the target's resource (or uses
    the Ray this process already runs); else it connects to the cluster at HOST:PORT, after checking the
    address answers at all (an unreachable one is an InputError within seconds, not Ray's minutes of
    retries). `close()` shuts Ray down only if this executor started it or connected to it.
    """

    name = "ray"

    def __init__(self, *, address: str | None = None, target: str = "auto", num_cpus_per_build: float = 1):
        if address is not None:        # before importing ray: an unreachable address fails in seconds
            host, port = _split_address(address)
            why = _reachable(host, port, grpc=True)
            if why is not None:
                raise InputError(f"ray address {address}: {why}")
        self._ray = require("ray", "--executor ray")
        self.resource = target_resource(target)
        self.num_cpus_per_build = float(num_cpus_per_build)
        self.address = address
        self.log: list[TaskRecord] = []
        self._log_lock = threading.Lock()
        self._nodes: dict[str, dict[str, float]] = {}
        self._pending: list[RayFuture] = []
        self._owns = False
        self._connect(address)
        self._task = self._ray.remote(_remote_call)
        total = float(self._ray.cluster_resources().get("CPU", 0.0))
        self.slots = max(1, int(total // self.num_cpus_per_build)) if self.num_cpus_per_build > 0 else 1

    def _connect(self, address: str | None) -> None:
        ray = self._ray
        if ray.is_initialized():                 # someone in this process set Ray up already: use it
            return
        common = dict(ignore_reinit_error=True, log_to_driver=False, logging_level=logging.WARNING)
        if address is None:
            with ray_on_loopback(), _env(RAY_USAGE_STATS_ENABLED="0"):
                ray.init(address="local", resources={self.resource: 1}, include_dashboard=False, **common)
            self._owns = True
            return
        host, port = _split_address(address)
        # Ray rewrites a loopback address to this machine's routable one; a cluster listening on 127.0.0.1
        # only (started under ray_on_loopback, or `ray start --node-ip-address 127.0.0.1`) is joined as is
        loop = (_is_loopback(host) and "://" not in address
                and _reachable(ray.util.get_node_ip_address(), port, 1.0) is not None)
        try:
            with ray_on_loopback() if loop else contextlib.nullcontext():
                ray.init(address=address, **common)
        except Exception as e:     # Ray's errors here are many; the user needs one line
            raise InputError(f"ray address {address}: cannot join the cluster ({type(e).__name__}: "
                             f"{_first_line(e)})") from None
        self._owns = True

    # -- bookkeeping

    def _record(self, rec: TaskRecord) -> None:
        with self._log_lock:
            self.log.append(rec)

    def _node_resources(self, node_id: str) -> dict[str, float]:
        """A node's custom resources (from ray.nodes(), read again when a new node shows up)."""
        if not node_id:
            return {}
        if node_id not in self._nodes:
            try:
                for n in self._ray.nodes():
                    self._nodes[n["NodeID"]] = _custom(n.get("Resources", {}))
            except Exception:      # the record is still useful without them
                pass
        return dict(self._nodes.get(node_id, {}))

    def _target_nodes(self) -> list[dict[str, Any]]:
        return [n for n in self._ray.nodes() if n.get("Alive") and n.get("Resources", {}).get(self.resource, 0) >= 1]

    # -- tasks

    def _submit(self, kind: str, fn: Callable[..., Any], args: tuple, kwargs: dict, **options: Any) -> RayFuture:
        name = _fn_name(fn)
        ref = self._task.options(name=f"{kind}:{name}", max_retries=1, **options).remote(fn, args, kwargs)
        fut = RayFuture(self, ref, kind, name)
        self._pending = [f for f in self._pending if not f._settled] + [fut]
        return fut

    def build(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> TaskFuture:
        return self._submit("build", fn, args, kwargs, num_cpus=self.num_cpus_per_build)

    def check_target(self) -> list[dict[str, Any]]:
        """The live nodes that offer the target's resource (ray.nodes() entries); InputError if none does.
        `measure` checks this on every call; a search may call it once before its first trial."""
        nodes = self._target_nodes()
        if not nodes:
            raise InputError(f"no Ray node offers resource {self.resource} — start one with "
                             f"`ray start --address HEAD:PORT --resources '{{\"{self.resource}\": 1}}'`")
        return nodes

    def measure(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> TaskFuture:
        cpus = min(float(n["Resources"].get("CPU", 0.0)) for n in self.check_target())
        return self._submit("measure", fn, args, kwargs, num_cpus=cpus, resources={self.resource: 1})

    def close(self) -> None:
        """Cancel tasks not finished yet, then shut Ray down if this executor started or joined it."""
        for f in self._pending:
            if not f._settled:
                with contextlib.suppress(Exception):
                    self._ray.cancel(f.ref)
        self._pending = []
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()
        self._owns = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    """Set environment variables that are not set yet, for the block (child processes inherit them)."""
    added = [k for k in values if k not in os.environ]
    for k in added:
        os.environ[k] = values[k]
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def wait_any(futures: Sequence[TaskFuture], timeout: float | None = None) -> list[TaskFuture]:
    """The futures of `futures` that are done, waiting up to `timeout` s (None: forever) for at least one."""
    done = [f for f in futures if f.done()]
    if done or not futures:
        return done
    refs = [f.ref for f in futures if isinstance(f, RayFuture)]
    if refs and len(refs) == len(futures):
        ex = futures[0]._ex  # type: ignore[attr-defined]
        ex._ray.wait(refs, num_returns=1, timeout=timeout)
    else:                      # mixed or foreign futures: poll
        end = None if timeout is None else time.monotonic() + timeout
        while not any(f.done() for f in futures) and (end is None or time.monotonic() < end):
            time.sleep(0.05)
    return [f for f in futures if f.done()]


def is_local(executor: Any) -> bool:
    """Whether work handed to `executor` runs in this process (None or the local executor): then a caller may run
    it directly, with its progress display, instead of as a task of plain data."""
    return executor is None or getattr(executor, "name", "local") == "local"


def make_executor(kind: str = "local", *, address: str | None = None, target: str = "auto",
                  num_cpus_per_build: float = 1) -> Executor:
    """A LocalExecutor ("local") or a RayExecutor ("ray"; `address` an existing cluster's HOST:PORT, None
    starts a local one). `target` names the target whose Ray resource marks the timing nodes."""
    k = str(kind).strip().lower()
    if k not in KINDS:
        raise InputError(f"unknown executor {kind!r}; known: {', '.join(KINDS)}")
    if not num_cpus_per_build > 0:
        raise InputError(f"num_cpus_per_build must be > 0, got {num_cpus_per_build}")
    if k == "local":
        if address:
            raise InputError(f"ray address {address} given, but the executor is local (use the ray executor)")
        return LocalExecutor(target)
    return RayExecutor(address=address, target=target, num_cpus_per_build=num_cpus_per_build)
