"""A stand-in Triton driver that makes the JIT compile for a chip this machine does not have.

Triton asks ``driver.active`` for the target, the device and the device's shared-memory limit, and
``CompiledKernel._init_handles`` raises the real ``OutOfResources`` when ``metadata.shared`` is over
that limit. Installing this driver therefore gives real compiles and real errors for any chip, with
the JIT's own argument specialization. Each virtual chip (and compiler environment) reports its own
device key, because the JIT keeps its compiled kernels per device, not per target. Launches that fit do nothing: outputs of a
virtual run are not computed.

The driver is process-global state in Triton: use ``virtual_target`` in a tool or a worker process,
never around a serving thread.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import torch
from triton.runtime.driver import driver

from ..targets import Chip, compile_env


class _Utils:
    def __init__(self, chip: Chip, real: Any | None) -> None:
        self._chip, self._real = chip, real

    def get_device_properties(self, device: Any) -> dict[str, int]:
        return {"max_shared_mem": self._chip.max_shared_mem, "multiprocessor_count": self._chip.sm_count,
                "warpSize": self._chip.warp_size}

    def load_binary(self, *args: Any) -> tuple[None, None, int, int, int]:
        return None, None, 0, 0, 1024

    def __getattr__(self, name: str) -> Any:
        if self._real is None:
            raise AttributeError(name)
        return getattr(self._real, name)


class _NoLaunch:
    """Stands in for the backend launcher: a virtual kernel that fits is not run, only noted in the
    driver's ``launched`` (kernel name, shared bytes), so a tool can say what a fitting call used."""

    def __init__(self, launched: list[tuple[str, int]], src: Any, metadata: Any) -> None:
        self._launched, self._kernel = launched, (str(metadata.name), int(metadata.shared))

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        self._launched.append(self._kernel)


class VirtualDriver:
    """Reports ``chip`` as the current target; delegates the rest to the real driver when there is one."""

    def __init__(self, chip: Chip, real: Any | None = None) -> None:
        self.chip = chip
        self._real = real
        self.utils = _Utils(chip, getattr(real, "utils", None))
        self.launched: list[tuple[str, int]] = []
        self.launcher_cls = functools.partial(_NoLaunch, self.launched)

    def get_current_target(self) -> Any:
        return self.chip.gpu_target()

    def get_current_device(self) -> str:
        """The JIT keeps compiled kernels per device: one key per chip and compiler environment, so a
        kernel compiled for gfx950 without async copies is not reused with them."""
        return ",".join([f"resilient_moe.virtual:{self.chip.name}", *(f"{k}={v}" for k, v in compile_env())])

    def get_current_stream(self, device: Any = None) -> int:
        return 0

    def set_current_device(self, device: Any) -> None:
        return None

    def get_active_torch_device(self) -> torch.device:
        return self._real.get_active_torch_device() if self._real is not None else torch.device("cpu")

    def get_device_interface(self) -> Any:
        return self._real.get_device_interface() if self._real is not None else torch.cpu

    def __getattr__(self, name: str) -> Any:
        if self._real is None:
            raise AttributeError(f"VirtualDriver for {self.chip.name} has no {name!r} (no real driver to delegate to)")
        return getattr(self._real, name)


def _real_driver() -> Any | None:
    try:
        return driver.default
    except RuntimeError:  # no GPU driver on this machine
        return None


@contextlib.contextmanager
def virtual_target(chip: Chip) -> Iterator[VirtualDriver]:
    """Make every JIT compile and launch in this block target ``chip``; restores the previous driver.
    Inside a block for the same chip it keeps that block's driver (one ``launched`` record)."""
    previous = driver._active  # reset_active() would fail on a machine without any GPU driver
    if isinstance(previous, VirtualDriver) and previous.chip == chip:
        yield previous
        return
    stand_in = VirtualDriver(chip, _real_driver())
    driver.set_active(stand_in)
    try:
        yield stand_in
    finally:
        driver._active = previous
