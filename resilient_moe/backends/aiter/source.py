"""Where aiter's Triton MoE GEMMs come from: the installed ``aiter`` package (a ROCm server), or, in a
tool process on a machine without it, aiter's source tree, imported without aiter's compiled parts.

``import aiter`` loads its C++/HIP JIT stack, and ``aiter.ops.triton`` imports every Triton op it has.
The MoE GEMMs need neither: from a source tree (``RESILIENT_MOE_AITER_SOURCE``, a folder holding
``aiter/ops/triton``) the three packages ``aiter``, ``aiter.ops`` and ``aiter.ops.triton`` are entered
as empty packages over their real folders, so importing an op module loads only what it imports
itself (its kernel, routing, reduce, config and arch helpers: pure Python and Triton). aiter's
``arch_info`` asks the active Triton driver for the chip when imported; it is imported under a
virtual driver for the target, so it answers that chip with its own tables; its CU count comes from
the target's. One source per process: its modules are ``aiter.*``.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import os
import sys
import types
from pathlib import Path
from types import ModuleType

SOURCE_ENV = "RESILIENT_MOE_AITER_SOURCE"
PACKAGES = ("aiter", "aiter.ops", "aiter.ops.triton")
ARCH_INFO = "aiter.ops.triton.utils._triton.arch_info"
DEVICE_INFO = "aiter.ops.triton.utils.device_info"


def module(name: str, source: Path | str | None = None, arch: str = "gfx950") -> ModuleType:
    """aiter's module ``name`` (``aiter.ops.triton.moe.moe_op_gemm_a8w4``): from ``source`` (else
    RESILIENT_MOE_AITER_SOURCE) where one is given, else the installed package. ImportError names
    what is missing."""
    root = source if source is not None else os.environ.get(SOURCE_ENV)
    if root is None:
        try:
            return importlib.import_module(name)
        except ImportError as err:
            raise ImportError(f"aiter's {name} cannot be imported ({err}); on a machine without aiter, point "
                              f"{SOURCE_ENV} at a checkout of ROCm/aiter (the folder holding aiter/ops/triton)") from err
    install(str(root), arch)
    return importlib.import_module(name)


def install(root: str, arch: str = "gfx950") -> None:
    """Enter aiter's source tree at ``root`` as the ``aiter`` packages of this process (see the module
    docstring). Safe to call again with the same root; another root in the same process is an error."""
    folder = Path(root).resolve()
    triton_ops = folder / "aiter" / "ops" / "triton"
    if not triton_ops.is_dir():
        raise ImportError(f"{SOURCE_ENV}={root}: no aiter/ops/triton under it (a checkout of ROCm/aiter is expected)")
    present = sys.modules.get("aiter")
    if present is not None:
        paths = [Path(p).resolve() for p in getattr(present, "__path__", [])]
        if paths != [folder / "aiter"]:
            raise ImportError(f"aiter is already imported from {paths or present} in this process; {root} cannot be entered too")
        return
    from ...virtual.worker import IMPORTERS

    for name in PACKAGES:
        package = types.ModuleType(name, f"aiter's {name} package over its source folder, without its __init__")
        package.__path__ = [str(folder.joinpath(*name.split(".")))]
        sys.modules[name] = package
    _arch_info(arch)
    IMPORTERS["aiter"] = (f"{__name__}:install", str(folder))  # compile workers enter the same tree


def _arch_info(arch: str) -> None:
    """aiter's own arch_info, imported while the active Triton driver answers ``arch``; and its CU count,
    which aiter asks its compiled chip_info (or torch's device) for, answered from the chip's."""
    from ...targets import chip
    from ...virtual.driver import virtual_target

    target = chip(arch)
    with virtual_target(target):
        importlib.import_module(ARCH_INFO)
    if importlib.util.find_spec(DEVICE_INFO) is not None:
        importlib.import_module(DEVICE_INFO).get_num_sms = lambda: target.sm_count


@functools.cache
def version() -> str:
    """The aiter release installed (part of every key: a release can change a kernel's LDS), else
    ``source`` for a source tree, which has no version of its own."""
    if "aiter" in sys.modules and not hasattr(sys.modules["aiter"], "__file__"):
        return "source"
    try:
        return importlib.metadata.version("amd-aiter")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
