"""The builtin MoE GEMM: ``moe_matmul.py`` is the front the dispatcher sees; the kernel (``_kernel.py``), its
default tiles (``heuristics.py``), launches (``launch.py``), bound launches for the hot path (``bound.py``) and
shared-memory lower bound (``smem.py``) sit beside it, as triton_kernels keeps opt_flags beside matmul_ogs."""
