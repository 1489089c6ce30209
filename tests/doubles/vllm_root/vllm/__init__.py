"""A from-scratch test double of the parts of vLLM that resilient_moe hooks (vLLM cannot be installed
here). It follows vLLM's public source where the integration depends on it: the package-level
``override_config`` (a module global, restored only on a normal exit), ``try_get_optimal_moe_config``'s
signature and lookup order (override, tuned file nearest in M, default), the tuned-file names,
``fused_experts`` and ``TritonExperts.apply``. Its GEMM is ``doubles.fused_moe_kernel_double``."""

__version__ = "0.0.0+double"
