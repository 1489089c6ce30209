"""Double of aiter's arch_info: the chip, asked of the active Triton driver when imported."""

import triton

_CACHED_ARCH = triton.runtime.driver.active.get_current_target().arch


def get_arch() -> str:
    return _CACHED_ARCH
