"""The base weights a 4-bit-trained adapter actually saw: the recipe's 4-bit model, dequantized per tensor.

QLoRA trains the adapter against dequantize(quantize(W)), not W. Merging into the 16-bit W would shift
every quantized weight by its rounding error; merging into the dequantized weights keeps the merged
model equal to the model that was trained and evaluated. The 4-bit model is the one copy of the base in
memory (about 0.55 bytes per expert parameter); each tensor is dequantized only when it is written.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from align.config import Recipe
from align.export.checkpoint import TensorRef

log = logging.getLogger("align")


class Dequantized:
    """Model-space tensors of a 4-bit model, dequantized on request (None where a tensor was not quantized)."""

    def __init__(self, model: torch.nn.Module):
        import bitsandbytes as bnb

        from align.moe.quant import QuantizedExperts

        self.model = model
        self.linear = {n: m for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
        self.experts = {n: m for n, m in model.named_modules() if isinstance(m, QuantizedExperts)}

    def get(self, ref: TensorRef) -> torch.Tensor | None:
        import bitsandbytes.functional as bnbf

        module_name, _, attr = ref.param.rpartition(".")
        if attr == "weight" and module_name in self.linear:
            weight = self.linear[module_name].weight
            return bnbf.dequantize_4bit(weight.data, weight.quant_state).float().cpu()
        if module_name in self.experts and ref.expert is not None:
            experts = self.experts[module_name]
            kind = attr.removesuffix("_proj")
            full = bnbf.dequantize_4bit(getattr(experts, f"{kind}_{ref.expert}"), experts.states[kind][ref.expert])
            full = full.float().cpu()
            return full[ref.rows[0] : ref.rows[1]] if ref.rows else full
        if module_name in self.experts:
            raise ValueError(f"{ref.param}: a fused on-disk expert tensor cannot come from 4-bit experts")
        return None


def load_dequantized(recipe: Recipe, base_dir: Path) -> Dequantized:
    """Load the base exactly as the recipe trained it (4-bit Linear layers and experts)."""
    from align.model import load_model
    from align.runtime import resolve_runtime

    section = recipe.model.model_copy(update={"name_or_path": str(base_dir), "revision": None})
    model = load_model(section, recipe.quantization, resolve_runtime(recipe.model.dtype))
    dq = Dequantized(model)
    log.info(
        "export: the adapter was trained on a 4-bit (%s) base; merging into the DEQUANTIZED 4-bit weights "
        "(%d Linear layers, %d expert blocks), i.e. the weights training saw",
        recipe.quantization.bnb_4bit_quant_type,
        len(dq.linear),
        len(dq.experts),
    )
    return dq
