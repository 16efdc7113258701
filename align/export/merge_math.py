"""LoRA merge arithmetic as pure tensor functions (PEFT 0.21 layouts).

A plain LoRA on a weight W [out, in] adds  scale * B @ A  (A [r, in], B [out, r]).
A `target_parameters` LoRA on a fused 3-D expert parameter [E, out, in] stores
  A [E*r, in]  (rows e*r .. e*r+r-1 belong to expert e)  and  B [out, r*E]  (column j*E + e is expert e's j-th),
and adds  scale * B_e @ A_e  to expert e (PEFT's ParamWrapper.get_delta_weight, einsum "o r e, e r i -> e o i").
"""

from __future__ import annotations

import math

import torch


def lora_scale(alpha: float, rank: int, use_rslora: bool = False) -> float:
    """PEFT's scaling: alpha / r, or alpha / sqrt(r) with rsLoRA."""
    return alpha / math.sqrt(rank) if use_rslora else alpha / rank


def lora_delta(lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float) -> torch.Tensor:
    """scale * B @ A in float32: the update of a [out, in] weight."""
    return (lora_b.float() @ lora_a.float()) * scale


def expert_delta(
    lora_a: torch.Tensor, lora_b: torch.Tensor, num_experts: int, expert: int, scale: float
) -> torch.Tensor:
    """The [out, in] update of one expert from stock fused-expert factors A [E*r, in], B [out, r*E]."""
    rank = lora_a.shape[0] // num_experts
    a = lora_a.reshape(num_experts, rank, lora_a.shape[1])[expert]
    b = lora_b.reshape(lora_b.shape[0], rank, num_experts)[:, :, expert]
    return lora_delta(a, b, scale)


def merge(base: torch.Tensor, delta: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """base + delta computed in float32, stored in `dtype`."""
    if base.shape != delta.shape:
        raise ValueError(f"LoRA update of shape {tuple(delta.shape)} does not fit a weight of {tuple(base.shape)}")
    return (base.float() + delta).to(dtype)
