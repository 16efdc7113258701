"""Stock PEFT format for routed expert adapters: save as `target_parameters` LoRA, load back as routed.

PEFT 0.21 stores a LoRA on a 3-D expert parameter [E, out, in] as
  lora_A.weight [E*r, in]   (rows e*r .. e*r+r-1 belong to expert e)
  lora_B.weight [out, r*E]  (column j*E + e is expert e's rank-j column)
with scaling alpha/r for all experts. gate_up_proj is wrapped first (its keys sit under `.base_layer.`),
down_proj second. Unselected experts are written as zeros, smaller ranks are zero-padded to the largest,
and each expert's own scale is folded into its B so the stock model computes the same update.
"""

from __future__ import annotations

import re

import torch

EXPERT_TARGETS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
# our saved keys: <prefix>.mlp.experts.lora_<proj>_<A|B>.<expert>
ROUTED_KEY = re.compile(r"^(?P<prefix>.*\.mlp\.experts)\.lora_(?P<proj>gate_up|down)_(?P<ab>[AB])\.(?P<expert>\d+)$")
# stock keys: gate_up under base_layer (wrapped first), down on the outer wrapper
STOCK_KEY = {"gate_up": "{prefix}.base_layer.lora_{ab}.weight", "down": "{prefix}.lora_{ab}.weight"}
STOCK_PATTERN = re.compile(r"^(?P<prefix>.*\.mlp\.experts)(?P<inner>\.base_layer)?\.lora_(?P<ab>[AB])\.weight$")


def pack(factors: dict[int, tuple[torch.Tensor, torch.Tensor, float]], num_experts: int, rank: int, scale: float):
    """Per-expert (A [r_e, in], B [out, r_e], scale_e) -> stock (lora_A [E*rank, in], lora_B [out, rank*E])."""
    some_a, some_b, _ = next(iter(factors.values()))
    a = torch.zeros(num_experts, rank, some_a.shape[1], dtype=some_a.dtype)
    b = torch.zeros(some_b.shape[0], rank, num_experts, dtype=some_b.dtype)
    for expert, (fa, fb, fscale) in factors.items():
        k = fa.shape[0]
        a[expert, :k] = fa
        b[:, :k, expert] = fb * (fscale / scale)
    return a.reshape(num_experts * rank, -1), b.reshape(b.shape[0], rank * num_experts)


def unpack(
    lora_a: torch.Tensor, lora_b: torch.Tensor, num_experts: int
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Stock tensors -> {expert: (A [r_e, in], B [out, r_e])} for experts with a non-zero update.

    An expert's rank is the number of leading rank slots used by A and B; trailing all-zero slots are padding.
    """
    rank = lora_a.shape[0] // num_experts
    a = lora_a.reshape(num_experts, rank, -1)
    b = lora_b.reshape(lora_b.shape[0], rank, num_experts)
    out = {}
    for expert in range(num_experts):
        used = (a[expert].abs().sum(-1) > 0) & (b[:, :, expert].abs().sum(0) > 0)
        if not bool(used.any()):
            continue
        k = int(used.nonzero().max()) + 1
        out[expert] = (a[expert, :k].clone(), b[:, :k, expert].clone())
    return out


def routed_to_stock(
    state: dict[str, torch.Tensor], num_experts: int, rank: int, scale: float, scales: dict[str, dict[int, float]]
) -> dict[str, torch.Tensor]:
    """Replace routed expert keys in an adapter state dict by stock `target_parameters` keys.

    `scales[prefix][expert]` is each expert's own LoRA scale; `scale` is the stock one (alpha / rank).
    """
    grouped: dict[tuple[str, str], dict[int, dict[str, torch.Tensor]]] = {}
    out = {}
    for key, value in state.items():
        m = ROUTED_KEY.match(key)
        if not m:
            out[key] = value
            continue
        slot = grouped.setdefault((m["prefix"], m["proj"]), {}).setdefault(int(m["expert"]), {})
        slot[m["ab"]] = value
    for (prefix, proj), experts in grouped.items():
        factors = {e: (t["A"], t["B"], scales[prefix][e]) for e, t in experts.items()}
        lora_a, lora_b = pack(factors, num_experts, rank, scale)
        out[STOCK_KEY[proj].format(prefix=prefix, ab="A")] = lora_a.contiguous()
        out[STOCK_KEY[proj].format(prefix=prefix, ab="B")] = lora_b.contiguous()
    return out


def stock_to_routed(
    state: dict[str, torch.Tensor], num_experts: int
) -> tuple[dict[str, torch.Tensor], dict[str, dict[int, int]]]:
    """Stock expert keys -> routed keys, plus the plan {experts prefix: {expert: rank}} they imply."""
    pairs: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    out = {}
    for key, value in state.items():
        m = STOCK_PATTERN.match(key)
        if not m:
            out[key] = value
            continue
        proj = "gate_up" if m["inner"] else "down"
        pairs.setdefault((m["prefix"], proj), {})[m["ab"]] = value
    plans: dict[str, dict[int, int]] = {}
    for (prefix, proj), tensors in pairs.items():
        for expert, (a, b) in unpack(tensors["A"], tensors["B"], num_experts).items():
            out[f"{prefix}.lora_{proj}_A.{expert}"] = a
            out[f"{prefix}.lora_{proj}_B.{expert}"] = b
            plan = plans.setdefault(prefix, {})
            plan[expert] = max(plan.get(expert, 0), a.shape[0])
    return out, plans
