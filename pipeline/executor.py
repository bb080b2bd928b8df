"""Where a stage's part jobs run: this machine's processes, a Ray cluster or a Dask cluster.

Stage code never knows: run_stage (pipeline/stage.py) turns a stage's per-part pass into jobs — plain,
picklable `PartJob`s that carry paths and config, never documents — and an executor runs them and
hands the results back in job order, whatever order they finished in, so counters and float
statistics are summed in one order and a folder's bytes never depend on the executor. A worker
rebuilds the stage once per process from the job (its config, references and what `prepare` left
in the stage folder's artifacts) and writes the part into the stage folder's temporary directory,
which must be on a filesystem every worker sees.

  LocalExecutor(workers)   forked processes on this machine (1: in this process); run_stage's
                           children inherit the stage as prepared (no pickling of its models)
  RayExecutor(address)     Ray tasks on an existing cluster ("auto": the local `ray start --head`);
                           a task whose worker dies is retried on another (max_retries)
  DaskExecutor(address)    futures on an existing Dask scheduler (retries likewise)

The Prefect stage task stays one task run per stage: part jobs are plain Ray/Dask tasks, so the
cluster's workers need no Prefect API and the server sees tens of task runs, not thousands.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterator

from pipeline.documents import StageError

# A worker's death (OOM killer, a node lost, kill -9) is retried this many times; a job that raises
# fails the stage at once (a deterministic failure would fail again).
RETRIES = 3


def worker_id() -> str:
    """Who ran a job: "<pid>@<host>" (timing.json records it per part)."""
    return f"{os.getpid()}@{socket.gethostname()}"


class Executor:
    """Runs `fn(job)` for each job; yields the results in job order."""

    name = "executor"

    def map(self, fn: Callable[[Any], Any], jobs: list[Any]) -> Iterator[Any]:
        raise NotImplementedError

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """One job, e.g. a whole stage that cannot split its parts yet."""
        return next(iter(self.map(_Call(fn), [args])))

    def close(self) -> None:
        pass

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Call:
    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn

    def __call__(self, args: tuple) -> Any:
        return self.fn(*args)


def worker_started() -> None:
    """In a forked worker: default signal handling. The parent may be a Prefect flow run, whose
    SIGTERM handler a fork inherits; Ctrl-C is the parent's to handle."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class LocalExecutor(Executor):
    """`workers` forked processes on this machine; with one worker (or one job), this process.
    `label` names the work in the error a dead worker raises (a stage, the mixture)."""

    name = "local"

    def __init__(self, workers: int = 1, label: str = "a job"):
        self.workers = workers
        self.label = label

    def map(self, fn: Callable[[Any], Any], jobs: list[Any]) -> Iterator[Any]:
        if self.workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                yield fn(job)
            return
        # ProcessPoolExecutor rather than multiprocessing.Pool: a worker that dies (OOM killer, a
        # crash in a C library) raises BrokenProcessPool here instead of hanging the build forever.
        pool = ProcessPoolExecutor(min(self.workers, len(jobs)), mp_context=multiprocessing.get_context("fork"),
                                   initializer=worker_started)
        try:
            yield from pool.map(fn, jobs)
        except BrokenProcessPool as exc:
            raise StageError(f"a worker process of {self.label} died ({exc}); "
                             "rerun with fewer workers if memory is short") from exc
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


class RayExecutor(Executor):
    name = "ray"

    def __init__(self, address: str = "auto"):
        import ray

        self._ray = ray
        self._owned = not ray.is_initialized()
        if self._owned:
            # The job functions live in this repository's packages, importable on every worker of a
            # cluster started from the same checkout (as the docs and tests start it).
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False,
                     logging_level="WARNING", include_dashboard=False)
        self._remote = ray.remote(max_retries=RETRIES, retry_exceptions=False)(_run_job)

    def map(self, fn: Callable[[Any], Any], jobs: list[Any]) -> Iterator[Any]:
        refs = [self._remote.remote(fn, job) for job in jobs]  # all submitted: the cluster fills up
        try:
            for ref in refs:
                yield self._ray.get(ref)
        finally:
            for ref in refs:  # a failed stage leaves nothing running behind it
                if not _ray_done(self._ray, ref):
                    self._ray.cancel(ref, force=True)

    def close(self) -> None:
        if self._owned and self._ray.is_initialized():
            self._ray.shutdown()


def _ray_done(ray: Any, ref: Any) -> bool:
    ready, _ = ray.wait([ref], timeout=0)
    return bool(ready)


class DaskExecutor(Executor):
    name = "dask"

    def __init__(self, address: str):
        from distributed import Client

        self._client = Client(address, set_as_default=False)

    def map(self, fn: Callable[[Any], Any], jobs: list[Any]) -> Iterator[Any]:
        # pure=False: two equal jobs (a rerun) are two runs, not one cached result.
        futures = [self._client.submit(_run_job, fn, job, pure=False, retries=RETRIES) for job in jobs]
        try:
            for future in futures:
                yield future.result()
        finally:
            for future in futures:
                if not future.done():
                    future.cancel()

    def close(self) -> None:
        self._client.close()


def _run_job(fn: Callable[[Any], Any], job: Any) -> Any:
    return fn(job)


def executor_for(dask_address: str | None = None, ray_address: str | None = None) -> Executor | None:
    """The cluster executor of a build (None: this machine's processes, run_stage's `workers`)."""
    if dask_address and ray_address:
        raise ValueError("a Dask address and a Ray address were both given: run the stages on one cluster")
    if dask_address:
        return DaskExecutor(dask_address)
    if ray_address:
        return RayExecutor(ray_address)
    return None
