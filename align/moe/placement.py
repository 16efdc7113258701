"""Which experts get an adapter, at which rank: a pure function of the policy and the routing profile.

ESFT (arXiv 2407.01906) trains only the experts a task routes to; MoLA gives more capacity where it is
used. `top_p` keeps, per layer, the most-used experts until their routed-token share reaches p;
`rank_by_load` gives each selected expert a rank proportional to its share (mean rank = lora.r).
"""

from __future__ import annotations

Plan = dict[int, dict[int, int]]  # layer -> {expert: rank}


def select_experts(policy, shares: list[list[float]] | None, num_layers: int, num_experts: int) -> dict[int, list[int]]:
    """Layer -> selected experts for `policy`: "all", "none", {"top_p": p}, {"top_k_per_layer": k} or {layer: [e]}."""
    if policy == "all":
        return {layer: list(range(num_experts)) for layer in range(num_layers)}
    if policy == "none":
        return {}
    if isinstance(policy, dict) and ("top_p" in policy or "top_k_per_layer" in policy):
        if shares is None:
            raise ValueError("expert selection by routing needs a routing profile")
        picked = {}
        for layer, row in enumerate(shares):
            order = sorted(range(num_experts), key=lambda e: (-row[e], e))
            if "top_k_per_layer" in policy:
                picked[layer] = sorted(order[: policy["top_k_per_layer"]])
                continue
            chosen, total = [], 0.0
            for expert in order:
                chosen.append(expert)
                total += row[expert]
                if total >= policy["top_p"] - 1e-9:
                    break
            picked[layer] = sorted(chosen)
        return picked
    explicit = {int(layer): sorted({int(e) for e in experts}) for layer, experts in dict(policy).items()}
    bad = [(layer, e) for layer, es in explicit.items() for e in es if not 0 <= e < num_experts]
    if bad or any(not 0 <= layer < num_layers for layer in explicit):
        raise ValueError(f"explicit expert selection out of range (layers < {num_layers}, experts < {num_experts})")
    return explicit


def assign_ranks(
    selected: dict[int, list[int]],
    shares: list[list[float]] | None,
    r: int,
    rank_by_load: bool = False,
    min_rank: int = 1,
    max_rank: int | None = None,
) -> Plan:
    """Uniform rank r, or rank proportional to each selected expert's share within its layer (clamped)."""
    top = max_rank or 4 * r
    plan: Plan = {}
    for layer, experts in selected.items():
        if not experts:
            continue
        if not rank_by_load:
            plan[layer] = dict.fromkeys(experts, r)
            continue
        if shares is None:
            raise ValueError("rank_by_load needs a routing profile")
        mean = sum(shares[layer][e] for e in experts) / len(experts)
        plan[layer] = {
            e: max(min_rank, min(top, round(r * shares[layer][e] / mean) if mean > 0 else r)) for e in experts
        }
    return plan


def plan_size(plan: Plan, hidden: int, intermediate: int) -> int:
    """Trainable expert-LoRA parameters of a plan (gate_up: r(H + 2I), down: r(I + H))."""
    per_rank = (hidden + 2 * intermediate) + (intermediate + hidden)
    return sum(rank * per_rank for experts in plan.values() for rank in experts.values())
