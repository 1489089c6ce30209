"""Compile launches for a virtual chip in a separate process, and say how much shared memory they need.

A process that interprets Triton (TRITON_INTERPRET=1, how kernels run on a CPU) cannot also compile,
so compiles go to long-lived worker processes started without that variable. A worker speaks pickle
over its stdin/stdout; anything the compiler prints goes to stderr. Requests carry only what the JIT
specializes on: dtypes and 16-byte alignment of pointers, the integer values, the constexprs.

A compile that runs past RESILIENT_MOE_COMPILE_TIMEOUT seconds is killed with its worker (the next
compile starts a fresh one), and no worker outlives its parent, even one stuck in a compile.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import importlib
import math
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import torch
from triton.tools.tensor_descriptor import TensorDescriptor


@dataclass(frozen=True)
class PointerArg:
    """What the JIT sees of a tensor argument: its dtype, and whether its address is 16-byte aligned."""

    dtype: str
    aligned: bool

    @staticmethod
    def of(tensor: torch.Tensor) -> PointerArg:
        return PointerArg(str(tensor.dtype).removeprefix("torch."), tensor.data_ptr() % 16 == 0)


class _Pointer:
    """Duck-typed tensor for the JIT's specializer: ``data_ptr`` and ``dtype`` are all it reads."""

    def __init__(self, arg: PointerArg) -> None:
        self.dtype = getattr(torch, arg.dtype)
        self._ptr = 0 if arg.aligned else 8

    def data_ptr(self) -> int:
        return self._ptr


@dataclass(frozen=True)
class DescriptorArg:
    """What the JIT sees of a host-built TMA descriptor: its base pointer's, and its shape, strides and
    block (the persistent kernel's operands), never the tensor's data."""

    base: PointerArg
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    block_shape: tuple[int, ...]

    @staticmethod
    def of(desc: TensorDescriptor) -> DescriptorArg:
        return DescriptorArg(PointerArg.of(desc.base), tuple(desc.shape), tuple(desc.strides), tuple(desc.block_shape))

    def rebuilt(self) -> TensorDescriptor:
        return TensorDescriptor(_Pointer(self.base), list(self.shape), list(self.strides), list(self.block_shape))


def _described(arg: Any) -> Any:
    if isinstance(arg, torch.Tensor):
        return PointerArg.of(arg)
    if isinstance(arg, TensorDescriptor):
        return DescriptorArg.of(arg)
    return arg


def _rebuilt(arg: Any) -> Any:
    if isinstance(arg, PointerArg):
        return _Pointer(arg)
    if isinstance(arg, DescriptorArg):
        return arg.rebuilt()
    return arg


@dataclass(frozen=True)
class CompileJob:
    kernel: str  # "module:attribute" of a @triton.jit function
    args: tuple[Any, ...]  # PointerArg for tensors, DescriptorArg for TMA descriptors, ints, floats, None
    constexprs: tuple[tuple[str, Any], ...]  # constexpr values and launch options (num_warps, num_stages)
    chip: str
    env: tuple[tuple[str, str], ...] = ()  # the compiler's environment knobs (targets.COMPILE_ENV) to compile under
    setup: tuple[str, str] | None = None  # ("module:function", argument): makes the kernel's module importable


@dataclass(frozen=True)
class Compiled:
    """The answer: bytes of shared memory the kernel needs, and the error the chip would raise (if any)."""

    shared: int
    limit: int
    error: BaseException | None


def job_for(kernel: Any, args: tuple[Any, ...], constexprs: dict[str, Any], chip: str) -> CompileJob:
    """Describe a launch so another process can compile it exactly as the JIT here would."""
    from ..targets import compile_env

    fn = kernel.fn
    described = tuple(_described(a) for a in args)
    setup = IMPORTERS.get(fn.__module__.split(".")[0])
    return CompileJob(f"{fn.__module__}:{fn.__name__}", described, tuple(sorted(constexprs.items())), chip, compile_env(), setup)


IMPORTERS: dict[str, tuple[str, str]] = {}
"""Top-level package -> ("module:function", argument) a worker calls before importing a kernel of that
package: for packages entered from a source tree rather than installed (aiter's, ``backends.aiter.source``)."""


def compile_here(job: CompileJob) -> Compiled:
    """Compile in this process (which must not be interpreting) under a virtual driver for the job's chip."""
    from triton.runtime.errors import OutOfResources

    from ..targets import chip as lookup
    from .driver import virtual_target

    if job.setup is not None:
        where, argument = job.setup
        setup_module, function = where.split(":")
        getattr(importlib.import_module(setup_module), function)(argument)
    module, name = job.kernel.split(":")
    kernel = getattr(importlib.import_module(module), name)
    target = lookup(job.chip)
    args = tuple(_rebuilt(a) for a in job.args)
    with virtual_target(target), _environment(job.env):
        compiled = kernel.warmup(*args, grid=(1,), **dict(job.constexprs))
        try:
            compiled._init_handles()  # Triton's own resource checks, against the chip's limits
            error = None
        except OutOfResources as err:
            error = err
    return Compiled(compiled.metadata.shared, target.max_shared_mem, error)


@contextlib.contextmanager
def _environment(env: tuple[tuple[str, str], ...]) -> Iterator[None]:
    """Exactly ``env`` for the compiler's knobs (``targets.COMPILE_ENV``), whatever the worker started with."""
    from ..targets import COMPILE_ENV

    saved = {name: os.environ.get(name) for name in COMPILE_ENV}
    for name in COMPILE_ENV:
        os.environ.pop(name, None)
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


COMPILE_TIMEOUT_ENV = "RESILIENT_MOE_COMPILE_TIMEOUT"
DEFAULT_COMPILE_TIMEOUT_S = 300.0
"""A compile of the builtin kernel takes seconds; one past five minutes is stuck (10**6 pipeline stages,
before policies bounded them, kept a compile going for over five minutes)."""
START_TIMEOUT_S = 120.0
"""How long a new worker may take to import Triton and say it is ready (not counted in a compile's time)."""
READY = "resilient_moe.worker ready"
CLOSE_GRACE_S = 5.0
"""How long a closing worker may take to finish and exit before it is killed."""


def compile_timeout() -> float:
    """Seconds a compile may take: RESILIENT_MOE_COMPILE_TIMEOUT, else 300 (read at every compile, a rare path)."""
    raw = os.environ.get(COMPILE_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_COMPILE_TIMEOUT_S
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise ValueError(f"{COMPILE_TIMEOUT_ENV} must be a positive, finite number of seconds, got {raw!r}")
    return seconds


def _serve(requests: BinaryIO, replies: BinaryIO) -> None:
    while True:
        try:
            job = pickle.load(requests)
        except EOFError:
            return
        try:
            reply: Any = compile_here(job)
        except Exception as err:  # sent back and re-raised in the caller: nothing is swallowed
            reply = err if _picklable(err) else RuntimeError(f"{type(err).__name__}: {err}")
        pickle.dump(reply, replies)
        replies.flush()


def _picklable(err: BaseException) -> bool:
    try:
        pickle.dumps(err)
        return True
    except Exception:
        return False


class Worker:
    """One compile process, started on first use; safe to share between threads (one job at a time)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None

    def _start(self) -> subprocess.Popen[bytes]:
        """Start a worker from a thread that waits for it: Linux sends the parent-death signal when the
        *thread* that started a child ends, and the callers' threads (a pool's, a server's) come and go."""
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        started: concurrent.futures.Future[subprocess.Popen[bytes]] = concurrent.futures.Future()

        def start_and_wait() -> None:
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "resilient_moe.virtual", str(os.getpid())],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    env=env,
                )
            except BaseException as err:
                started.set_exception(err)
                return
            started.set_result(proc)
            proc.wait()

        threading.Thread(target=start_and_wait, name="resilient_moe-compile-worker", daemon=True).start()
        proc = started.result()
        timer = threading.Timer(START_TIMEOUT_S, proc.kill)
        timer.daemon = True
        timer.start()
        try:
            said = pickle.load(proc.stdout)  # type: ignore[arg-type]
        except (EOFError, OSError, pickle.UnpicklingError) as err:
            _discard(proc)
            raise RuntimeError(f"resilient_moe compile worker did not start within {START_TIMEOUT_S:g} s (see its stderr)") from err
        finally:
            timer.cancel()
        if said != READY:
            _discard(proc)
            raise RuntimeError(f"resilient_moe compile worker sent {said!r} before it was ready")
        return proc

    def compile(self, job: CompileJob) -> Compiled:
        """The job's measurement from the worker; a TimeoutError (the worker killed) past the compile
        timeout, counted from when the worker is ready."""
        seconds = compile_timeout()
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = self._start()
            proc = self._proc
            assert proc.stdin is not None and proc.stdout is not None
            expired = threading.Event()

            def expire() -> None:
                expired.set()
                proc.kill()

            timer = threading.Timer(seconds, expire)
            timer.daemon = True
            timer.start()
            try:
                pickle.dump(job, proc.stdin)
                proc.stdin.flush()
                reply = pickle.load(proc.stdout)
            except (EOFError, OSError, pickle.UnpicklingError) as err:
                self._proc = None
                _discard(proc)
                if expired.is_set():
                    raise TimeoutError(
                        f"compiling {job.kernel} for {job.chip} took longer than {seconds:g} s "
                        f"({COMPILE_TIMEOUT_ENV}): its worker was killed, the next compile starts a fresh one"
                    ) from None
                raise RuntimeError(f"resilient_moe compile worker died while compiling {job.kernel} for {job.chip}") from err
            finally:
                timer.cancel()
        if isinstance(reply, BaseException):
            raise reply
        return reply

    def close(self) -> None:
        """End the worker: it exits once its stdin closes; one still busy after CLOSE_GRACE_S is killed.
        Takes no lock, so that a compile in flight (another thread's) cannot hold up an exit."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            proc.stdin.close()  # type: ignore[union-attr]
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=CLOSE_GRACE_S)
        _discard(proc)


def _discard(proc: subprocess.Popen[bytes]) -> None:
    """Kill a worker (a no-op once it has exited), reap it and close its pipes."""
    proc.kill()
    proc.wait()
    for pipe in (proc.stdin, proc.stdout):
        with contextlib.suppress(OSError):
            pipe.close()  # type: ignore[union-attr]


PR_SET_PDEATHSIG = 1
"""prctl(2): the signal a process gets when the thread that started it ends."""


def _exit_with_parent(parent: int) -> None:
    """No worker outlives its parent, even one stuck in a compiler pass that holds the GIL: on Linux the
    kernel kills it (PR_SET_PDEATHSIG); elsewhere a thread polls the parent's pid (while the GIL allows)."""
    armed = False
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            armed = ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL)) == 0
    if os.getppid() != parent:  # it died before the signal was armed
        os._exit(1)
    if not armed:
        threading.Thread(target=_watch_parent, args=(parent,), name="resilient_moe-parent-watch", daemon=True).start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def main() -> None:
    """The worker's loop; its one argument is the parent's pid."""
    _exit_with_parent(int(sys.argv[1]))
    protocol = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # the compiler's prints must not corrupt the protocol on stdout
    sys.stdout = sys.stderr
    import triton.compiler  # noqa: F401  (before "ready": start-up is not a compile's time)

    pickle.dump(READY, protocol)
    protocol.flush()
    _serve(sys.stdin.buffer, protocol)
