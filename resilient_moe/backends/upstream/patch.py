"""Putting our ``matmul_ogs`` / ``matmul`` where serving code looks upstream's up, and taking it back."""

from __future__ import annotations

from ..patching import lock, original, patched, restore, swap

__all__ = ["lock", "original", "patch_triton_kernels", "patched", "unpatch_triton_kernels"]

OWNER = "triton_kernels"


def patch_triton_kernels() -> None:
    """Put our function where upstream's is looked up, in every copy imported (the standalone
    ``triton_kernels`` and the copies vLLM and SGLang vendor): each copy's module attribute and every
    imported module holding that copy's function as a global, under any name (vLLM, SGLang and ATOM
    do ``from triton_kernels.matmul_ogs import matmul_ogs``). Safe to call again: it also catches
    copies and modules imported since. Modules imported later get ours from the copy's attribute."""
    from .copies import copies
    from .matmul_ogs import front

    with lock:
        swap(OWNER, {id(up.fn): (up.fn, front(up)) for up in copies()})


def unpatch_triton_kernels() -> None:
    """Restore exactly the names ``patch_triton_kernels`` replaced (those still holding ours)."""
    restore(OWNER)
