"""DeepSpeed ZeRO-3 and MoE: make each sparse MoE block one ZeRO-3 leaf.

ZeRO-3 gathers parameters module by module as hooks fire. align's routed expert layer (like any
per-expert loop) skips experts no token was routed to, so ranks that route differently fetch different
parameters and the collectives disagree ("Detected a disagreement on list contents", after a silently
wrong first step; see shared STACK notes, DeepSpeed 0.19.8). A leaf module is gathered whole.
"""

from __future__ import annotations

import logging

from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

log = logging.getLogger("align")


def register_moe_leaves(model) -> bool:
    """Under ZeRO-3, register MixtralSparseMoeBlock as a leaf module; True if registered."""
    if not is_deepspeed_zero3_enabled():
        return False
    from deepspeed.utils import set_z3_leaf_modules

    set_z3_leaf_modules(model, [MixtralSparseMoeBlock])
    log.info("ZeRO-3: MixtralSparseMoeBlock registered as a leaf module (gathered whole, whatever the routing)")
    return True
