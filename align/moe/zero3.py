"""DeepSpeed ZeRO-3 and MoE: make each sparse MoE block one ZeRO-3 leaf.

ZeRO-3 gathers parameters module by module as hooks fire. align's routed expert layer (like any
per-expert loop) skips experts no token was routed to, so ranks that route differently fetch different
parameters and the collectives disagree ("Detected a disagreement on list contents", after a silently
wrong first step; see shared STACK notes, DeepSpeed 0.19.8). A leaf module is gathered whole.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from torch import nn
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.models.mixtral.modeling_mixtral import MixtralDecoderLayer, MixtralSparseMoeBlock

log = logging.getLogger("align")


def register_moe_leaves(model) -> bool:
    """Under ZeRO-3, register MixtralSparseMoeBlock as a leaf module; True if registered."""
    if not is_deepspeed_zero3_enabled():
        return False
    from deepspeed.utils import set_z3_leaf_modules

    set_z3_leaf_modules(model, [MixtralSparseMoeBlock])
    log.info("ZeRO-3: MixtralSparseMoeBlock registered as a leaf module (gathered whole, whatever the routing)")
    return True


@contextlib.contextmanager
def gathered_layers(model) -> Iterator[None]:
    """Forwards outside the DeepSpeed engine (routing profile, pre-training eval) under ZeRO-3.

    Before the engine exists, ZeRO-3-initialised weights are empty shards with no fetch hooks. This
    gathers one block at a time (embeddings, each decoder layer, final norm, lm_head) around its own
    forward, so a 47 B model is never whole on a rank. Every rank must run the same forwards (collective).
    """
    if not is_deepspeed_zero3_enabled():
        yield
        return
    import deepspeed

    open_contexts: dict[int, object] = {}

    def pre(module, args):
        ctx = deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)
        ctx.__enter__()
        open_contexts[id(module)] = ctx

    def post(module, args, output):
        open_contexts.pop(id(module)).__exit__(None, None, None)

    blocks = [
        m
        for name, m in model.named_modules()
        if isinstance(m, MixtralDecoderLayer | nn.Embedding) or name.endswith(("model.norm", "lm_head"))
    ]  # disjoint blocks: nested gathers of the same parameter are an error
    handles = [h for m in blocks for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
