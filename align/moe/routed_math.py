"""Routed expert LoRA as pure tensor functions: expert e's low-rank update only touches e's tokens.

PEFT's `target_parameters` LoRA on fused experts builds the dense delta B_e @ A_e for EVERY expert on
EVERY forward (E x out x in elements per projection). Here the update is applied as two thin matmuls on
the tokens routed to e: cost ~ routed tokens x rank x (in + out), no dense delta ever built. With the
same A/B the result equals W_e + scale * B_e @ A_e applied to those tokens (tested against PEFT).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class ExpertFactors:
    """One expert's LoRA factors for one adapter: gate_up (H -> 2I) and down (I -> H)."""

    gate_up_A: torch.Tensor  # [r, H]
    gate_up_B: torch.Tensor  # [2I, r]
    down_A: torch.Tensor  # [r, I]
    down_B: torch.Tensor  # [H, r]
    scale: float


def add_lora(base: torch.Tensor, x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scale: float) -> torch.Tensor:
    """base + scale * x @ A^T @ B^T in one fused addmm, never forming B @ A ([n, in] x, 2-D base)."""
    return torch.addmm(base, F.linear(x, A), B.t(), alpha=scale)


Linear = Callable[[torch.Tensor], torch.Tensor]


def expert_mlp(
    x: torch.Tensor,
    gate_up: torch.Tensor | Linear,
    down: torch.Tensor | Linear,
    act: Callable[[torch.Tensor], torch.Tensor],
    factors: Sequence[ExpertFactors] = (),
    dropout: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Mixtral expert SwiGLU on tokens `x` [n, H], with each adapter's low-rank updates added.

    `gate_up` / `down` are the expert's weights, or callables applying them (4-bit experts).
    """
    h = gate_up(x) if callable(gate_up) else F.linear(x, gate_up)
    x_in = dropout(x) if dropout is not None and factors else x
    for f in factors:
        h = add_lora(h, x_in, f.gate_up_A, f.gate_up_B, f.scale)
    gate, up = h.chunk(2, dim=-1)
    mid = act(gate) * up
    out = down(mid) if callable(down) else F.linear(mid, down)
    mid_in = dropout(mid) if dropout is not None and factors else mid
    for f in factors:
        out = add_lora(out, mid_in, f.down_A, f.down_B, f.scale)
    return out


def group_by_expert(top_k_index: torch.Tensor, num_experts: int) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """[(expert, token positions, top-k slot)] for every expert that received at least one token."""
    flat = top_k_index.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=num_experts).tolist()
    k = top_k_index.shape[-1]
    groups, start = [], 0
    for expert, count in enumerate(counts[:num_experts]):
        if count:
            chosen = order[start : start + count]
            groups.append((expert, chosen // k, chosen % k))
        start += count
    return groups


def routed_experts(
    hidden: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
    weights_of: Callable[[int], tuple[torch.Tensor | Linear, torch.Tensor | Linear]],
    num_experts: int,
    act: Callable[[torch.Tensor], torch.Tensor],
    factors_of: Callable[[int], Sequence[ExpertFactors]] = lambda _e: (),
    dropout: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """The fused-experts forward [T, H] -> [T, H] with routed LoRA.

    `weights_of(e)` gives expert e's (gate_up, down) weights or linear maps; `factors_of(e)` its adapters.
    """
    out = torch.zeros_like(hidden)
    for expert, tokens, slot in group_by_expert(top_k_index, num_experts):
        gate_up, down = weights_of(expert)
        y = expert_mlp(hidden[tokens], gate_up, down, act, factors_of(expert), dropout)
        y = y * top_k_weights[tokens, slot, None]
        out.index_add_(0, tokens, y.to(out.dtype))
    return out
