"""Test double, loaded as ``triton_kernels.routing`` (exists in v3.5 only). Not upstream code."""

from doubles.tk_double.core import GatherIndx, RoutingData, ScatterIndx
from doubles.tk_double.core import dict_routing as routing

__all__ = ["GatherIndx", "RoutingData", "ScatterIndx", "routing"]
