"""Know what fits a chip you do not have: compile for it and compare with its limit.

``fits(...)`` raises the real ``triton.runtime.errors.OutOfResources`` the chip would raise, so the
dispatcher treats a virtual failure exactly like one on the device. Compiles run in worker
processes (see ``worker.py``); in a process that is not interpreting Triton they could run in
place, but one path for every process keeps the numbers comparable.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from .driver import VirtualDriver, virtual_target
from .worker import Compiled, CompileJob, Worker, job_for

__all__ = [
    "Compiled", "CompileJob", "VirtualDriver", "compile_many", "fits", "job_for", "measure", "virtual_target",
]

_pool: list[Worker] = []
_pool_lock = threading.Lock()


def _workers(n: int) -> list[Worker]:
    with _pool_lock:
        while len(_pool) < n:
            _pool.append(Worker())
        return _pool[:n]


@atexit.register
def _close_workers() -> None:
    for worker in _pool:
        worker.close()


_measured: dict[CompileJob, Compiled] = {}


def measure(job: CompileJob, worker: Worker | None = None) -> Compiled:
    """Compile one job for its chip (memoized per process) and report the bytes it needs."""
    found = _measured.get(job)
    if found is None:
        found = _measured[job] = (worker or _workers(1)[0]).compile(job)
    return found


def fits(kernel: Any, args: tuple[Any, ...], constexprs: dict[str, Any], chip: str) -> Compiled:
    """Raise the chip's OutOfResources if this launch would not fit it; else return the measurement."""
    compiled = measure(job_for(kernel, args, constexprs, chip))
    if compiled.error is not None:
        raise compiled.error
    return compiled


def compile_many(jobs: Iterable[CompileJob], processes: int) -> Iterator[tuple[CompileJob, Compiled | BaseException]]:
    """Compile jobs in parallel worker processes; yields each job with its result as it completes."""
    todo = list(dict.fromkeys(jobs))
    workers = _workers(max(1, processes))
    free: list[Worker] = list(workers)
    lock = threading.Lock()

    def run(job: CompileJob) -> Compiled:
        with lock:
            worker = free.pop()
        try:
            return measure(job, worker)
        finally:
            with lock:
                free.append(worker)

    with concurrent.futures.ThreadPoolExecutor(len(workers)) as pool:
        futures = {pool.submit(run, job): job for job in todo}
        for future in concurrent.futures.as_completed(futures):
            err = future.exception()
            yield futures[future], err if err is not None else future.result()

