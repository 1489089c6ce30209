"""Compile launches for a virtual chip in a separate process, and say how much shared memory they need.

A process that interprets Triton (TRITON_INTERPRET=1, how kernels run on a CPU) cannot also compile,
so compiles go to long-lived worker processes started without that variable. A worker speaks pickle
over its stdin/stdout; anything the compiler prints goes to stderr. Requests carry only what the JIT
specializes on: dtypes and 16-byte alignment of pointers, the integer values, the constexprs.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import subprocess
import sys
import threading
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
    return CompileJob(f"{fn.__module__}:{fn.__name__}", described, tuple(sorted(constexprs.items())), chip, compile_env())


def compile_here(job: CompileJob) -> Compiled:
    """Compile in this process (which must not be interpreting) under a virtual driver for the job's chip."""
    from triton.runtime.errors import OutOfResources

    from ..targets import chip as lookup
    from .driver import virtual_target

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
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        return subprocess.Popen(
            [sys.executable, "-m", "resilient_moe.virtual"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )

    def compile(self, job: CompileJob) -> Compiled:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = self._start()
            assert self._proc.stdin is not None and self._proc.stdout is not None
            try:
                pickle.dump(job, self._proc.stdin)
                self._proc.stdin.flush()
                reply = pickle.load(self._proc.stdout)
            except (EOFError, BrokenPipeError) as err:
                self._proc = None
                raise RuntimeError(f"resilient_moe compile worker died while compiling {job.kernel} for {job.chip}") from err
        if isinstance(reply, BaseException):
            raise reply
        return reply

    def close(self) -> None:
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.stdin.close()  # type: ignore[union-attr]
                self._proc.wait(timeout=30)
            self._proc = None


def main() -> None:
    protocol = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # the compiler's prints must not corrupt the protocol on stdout
    sys.stdout = sys.stderr
    _serve(sys.stdin.buffer, protocol)
