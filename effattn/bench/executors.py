"""Where a sweep's jobs run: here (`LocalExecutor`) or across a Ray cluster (`RayExecutor`).

A job is a module-level function and its arguments; it returns a result row and never raises for
its own point's failure. The sweep submits jobs and takes finished ones back one at a time, in
whatever order they finish, and writes each row the moment it arrives. The executor decides only
where and when a job runs:

- `LocalExecutor` runs one job at a time in this process, lowest `order` first, so a local sweep
  keeps the order it always had.
- `RayExecutor` makes each job a Ray task with the resources one point needs (CPUs, and one GPU
  on a CUDA sweep). Ray retries a task once when its worker process dies; a second death, or any
  other Ray failure, comes back as a row with status `error` (or `oom` when Ray's memory monitor
  killed it), so a dead worker costs at most its own point.

An executor is any object with `name`, `isolates` (True when every job runs in a fresh process),
`concurrent` (True when several jobs may run at once),
`open(device)`, `submit(job)`, `pending()`, `next_done() -> (job, row)`, `cancel()` and `close()`.
Ray is an optional dependency (`pip install 'effattn[ray]'`), imported only by `RayExecutor`.
"""

from __future__ import annotations

import heapq
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import EffattnError

EXECUTORS = ("local", "ray")


@dataclass(order=True)
class Job:
    order: int
    fn: Callable = field(compare=False)
    args: tuple = field(compare=False, default=())
    base_row: dict = field(compare=False, default_factory=dict)  # what a failed job's row says it was
    info: Any = field(compare=False, default=None)  # the caller's own bookkeeping


class LocalExecutor:
    """Jobs run here, one at a time, lowest order first."""

    name = "local"
    isolates = False  # points run in this process unless the sweep asks for --isolate
    concurrent = False

    def __init__(self):
        self._queue: list[Job] = []
        self.on_start: Callable[[Job], None] | None = None  # told just before a job runs

    def open(self, device: str) -> None:
        pass

    def submit(self, job: Job) -> None:
        heapq.heappush(self._queue, job)

    def pending(self) -> int:
        return len(self._queue)

    def next_done(self) -> tuple[Job, dict]:
        job = heapq.heappop(self._queue)
        if self.on_start:
            self.on_start(job)
        return job, job.fn(*job.args)

    def cancel(self) -> None:
        self._queue.clear()

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return "local"


class RayUnavailable(EffattnError):
    pass


class ExecutorLost(EffattnError):
    """The executor itself failed (e.g. the Ray cluster went away): the sweep cannot go on."""


def _import_ray():
    try:
        import ray
    except ImportError as e:
        raise RayUnavailable("--executor ray needs Ray, which is not installed here: pip install 'effattn[ray]'") from e
    return ray


def check_ray_address(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast on an address where no Ray cluster listens: Ray itself retries such an address
    for minutes, printing warnings, before it gives up."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise EffattnError(
            f"--ray-address {address!r}: expected HOST:PORT (e.g. 127.0.0.1:6379), ray://HOST:PORT or auto"
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise EffattnError(
            f"--ray-address {address}: no Ray cluster answers there "
            f"({e.strerror or type(e).__name__}); start one with `ray start --head` "
            "or check the address"
        ) from e


class RayExecutor:
    """Each job is a Ray task: `cpus_per_point` CPUs, plus one GPU per point on a CUDA sweep.

    Connects to `address` (HOST:PORT, ray://HOST:PORT or "auto"), to the instance this process is
    already connected to, or else starts a local one. A task whose worker dies is retried once."""

    name = "ray"
    isolates = True  # each point in a fresh process under the worker: timeouts and crashes as --isolate
    concurrent = True

    def __init__(self, address: str | None = None, cpus_per_point: float = 1, retries: int = 1):
        if cpus_per_point <= 0:
            raise EffattnError(f"cpus per point must be > 0, got {cpus_per_point}")
        self.address, self.cpus_per_point, self.retries = address, cpus_per_point, retries
        self.gpus_per_point = 0
        self._inflight: dict = {}
        self._connected_here = False
        self._ray = self._task = self._opened_for = None

    # -- connection ------------------------------------------------------------------------
    def connect(self) -> dict:
        """Join the cluster (idempotent); return its total resources."""
        ray = self._ray = _import_ray()
        if not ray.is_initialized():
            import logging

            if self.address:
                check_ray_address(self.address)
            # A measurement tool should not report usage to a third party unasked; set
            # RAY_USAGE_STATS_ENABLED=1 to allow Ray's usage statistics.
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            kwargs = dict(logging_level=logging.ERROR, log_to_driver=False)
            if not self.address and not os.environ.get("RAY_ADDRESS"):
                kwargs["include_dashboard"] = False
            try:
                ray.init(address=self.address, **kwargs)
            except (ConnectionError, ValueError, RuntimeError) as e:
                hint = ""
                if self.address and self.address != "auto" and not os.environ.get("RAY_AUTH_MODE"):
                    # seen with Ray 2.60: a client given an explicit address does not use the
                    # cluster's token unless told to, and is refused after about 30 s
                    hint = " (if the cluster uses token authentication, set RAY_AUTH_MODE=token)"
                raise EffattnError(
                    f"cannot connect to Ray{' at ' + self.address if self.address else ''}: {_first_line(e)}{hint}"
                ) from e
            self._connected_here = True
        return dict(ray.cluster_resources())

    def resolve_device(self, device: str) -> str:
        """`auto` means cuda when the cluster has GPUs. A CUDA sweep needs a GPU somewhere."""
        gpus = self.connect().get("GPU", 0)
        if device == "auto":
            device = "cuda" if gpus >= 1 else "cpu"
        if device == "cuda" and gpus < 1:
            raise EffattnError("--device cuda: the Ray cluster has no GPUs")
        return device

    def open(self, device: str) -> None:
        """Connect and check that some node can hold one point; once per device (the CLI opens
        early to fail fast, the sweep opens again)."""
        if self._task is not None and self._opened_for == device:
            return
        ray = self._ray or _import_ray()
        self.connect()
        self.gpus_per_point = 1 if device == "cuda" else 0
        self._task = ray.remote(_ray_run)
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        fits = [r for r in nodes if r.get("CPU", 0) >= self.cpus_per_point and r.get("GPU", 0) >= self.gpus_per_point]
        if not fits:
            most = max((r.get("CPU", 0) for r in nodes), default=0)
            need = f"{self.cpus_per_point:g} CPUs" + (" and a GPU" if self.gpus_per_point else "")
            raise EffattnError(
                f"no node of the Ray cluster has {need} for one point (the largest has "
                f"{most:g} CPUs); lower --cpus-per-point"
            )
        self._opened_for = device

    def describe(self) -> str:
        res = self._ray.cluster_resources() if self._ray else {}
        nodes = sum(1 for n in self._ray.nodes() if n.get("Alive")) if self._ray else 0
        return (
            f"ray ({nodes} node{'s' if nodes != 1 else ''}, {res.get('CPU', 0):g} CPUs, "
            f"{res.get('GPU', 0):g} GPUs; {self.cpus_per_point:g} CPUs"
            + (" + 1 GPU" if self.gpus_per_point else "")
            + " per point)"
        )

    # -- jobs --------------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        name = f"effattn:{job.base_row.get('label', '?')}:{job.base_row.get('seq_len', '?')}"
        task = self._task.options(
            num_cpus=self.cpus_per_point,
            num_gpus=self.gpus_per_point,
            max_retries=self.retries,
            retry_exceptions=False,
            name=name,
        )
        self._inflight[task.remote(job.fn, job.args)] = job

    def pending(self) -> int:
        return len(self._inflight)

    def next_done(self) -> tuple[Job, dict]:
        ray = self._ray
        try:
            ready, _ = ray.wait(list(self._inflight), num_returns=1)
        except Exception as e:
            raise ExecutorLost(f"lost the Ray cluster: {type(e).__name__}: {_first_line(e)}") from e
        ref = ready[0]
        job = self._inflight.pop(ref)
        try:
            return job, ray.get(ref)
        except ray.exceptions.OutOfMemoryError as e:
            return job, {
                **job.base_row,
                "status": "oom",
                "reason": f"Ray's memory monitor killed the worker: {_first_line(e)}",
            }
        except ray.exceptions.WorkerCrashedError as e:
            return job, {
                **job.base_row,
                "status": "error",
                "reason": f"the Ray worker died {self.retries + 1} times measuring this point "
                f"(retried {self.retries}): {_first_line(e)}",
            }
        except ray.exceptions.RayError as e:
            return job, {**job.base_row, "status": "error", "reason": f"Ray: {type(e).__name__}: {_first_line(e)}"}

    def cancel(self) -> None:
        for ref in list(self._inflight):
            try:
                self._ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
        self._inflight.clear()

    def close(self) -> None:
        # Disconnects what this executor connected (and stops a local instance it started); a
        # connection the caller made before is left as it was.
        if self._connected_here and self._ray is not None and self._ray.is_initialized():
            self._ray.shutdown()


def _first_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def _ray_run(fn, args):
    """Runs on a Ray worker: the job (a row, or a list of rows), with where it ran."""
    result = fn(*args)
    try:
        import ray

        ctx = ray.get_runtime_context()
        where = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "ray_node_id": ctx.get_node_id(),
            "resources": ctx.get_assigned_resources(),
        }
    except Exception:  # noqa: BLE001 - bookkeeping only
        where = {"host": socket.gethostname(), "pid": os.getpid()}
    for row in result if isinstance(result, list) else [result]:
        row["worker"] = where
    return result


def make_executor(name: str, address: str | None = None, cpus_per_point: float = 1):
    if name == "local":
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address=address, cpus_per_point=cpus_per_point)
    raise EffattnError(f"unknown executor {name!r}: choose {' or '.join(EXECUTORS)}")
