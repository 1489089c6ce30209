"""Backends: the MoE GEMMs behind the dispatcher, peers behind one protocol (``dispatch.resolve``).

A backend only describes a call: its key, its own default tile, an attempt under a given tile and, where it
knows one, a lower bound of a tile's shared memory. Dispatch tries, steps down, caches and reports.

- builtin/: our kernel (``moe_matmul``), with its heuristics, launches and bound beside it;
- upstream/: upstream Triton's ``matmul_ogs`` / ``matmul``, its own tile imposed through its opt flags.
"""
