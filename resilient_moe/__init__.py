"""resilient_moe: Triton MoE GEMMs that keep running when a tile does not fit the chip.

Flow of a call: policy (policy.py) -> ladder (ladder.py) -> dispatch (dispatch.py) -> backend launch
(moe_matmul.py and _moe_details/, adapters/ for upstream triton_kernels) -> cache (cache.py) and
events (events.py). virtual/ compiles for chips this machine does not have; targets.py lists them.
"""

from .cache import TilingCache
from .config import TileConfig
from .dispatch import Attempt, LadderExhaustedError
from .moe_matmul import moe_matmul
from .policy import Policy, PolicyError, load_policy
from .reference import moe_matmul_reference
from .routing import Routing, route
from .targets import CHIPS, Chip

__all__ = [
    "CHIPS",
    "Attempt",
    "Chip",
    "LadderExhaustedError",
    "Policy",
    "PolicyError",
    "Routing",
    "TileConfig",
    "TilingCache",
    "load_policy",
    "moe_matmul",
    "moe_matmul_reference",
    "route",
]
__version__ = "0.1.0"
