"""Profile a stage's training data through the router, and turn the recipe's policy into a plan."""

from __future__ import annotations

import logging
from pathlib import Path

from align.config.schema import LoraSection
from align.errors import RecipeError
from align.moe.placement import Plan, assign_ranks, plan_size, select_experts
from align.moe.plot import routing_heatmap
from align.moe.profile import RoutingProfile, batches_from_conversations, conversations_from_rows, profile_model
from align.moe.zero3 import gathered_layers

log = logging.getLogger("align")


def profile_rows(model, tokenizer, rows, max_tokens: int, max_length: int = 1024, batch_size: int = 8):
    """Routing profile of `rows` (SFT or preference rows) through `model`'s routers, no grad."""
    conversations = conversations_from_rows(rows)
    batches = batches_from_conversations(tokenizer, conversations, batch_size=batch_size, max_length=max_length)
    with gathered_layers(model):  # ZeRO-3 before the engine: gather block by block
        return profile_model(model, batches, max_tokens=max_tokens)


def write_profile(profile: RoutingProfile, out_dir: Path, title: str) -> tuple[Path, Path]:
    """routing.json + routing.png in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return profile.to_json(out_dir / "routing.json"), routing_heatmap(profile, out_dir / "routing.png", title=title)


def load_or_profile(section: LoraSection, model, tokenizer, rows, out_dir: Path, is_main: bool) -> RoutingProfile:
    """The recipe's routing profile file, or a fresh profile of the training data (written on the main process)."""
    if section.routing_profile:
        return RoutingProfile.from_json(section.routing_profile)
    profile = profile_rows(model, tokenizer, rows, section.profile_max_tokens)
    if is_main:
        json_path, _ = write_profile(profile, out_dir, "routing profile of the training data")
        log.info("routing profile of %d tokens written to %s (+ routing.png)", profile.tokens, json_path)
    return profile


def expert_plan(section: LoraSection, model, tokenizer, rows, out_dir: Path, is_main: bool) -> Plan:
    """The layer -> {expert: rank} plan for the recipe's lora section.

    The routing profile of the training data is always taken (OUTPUT_DIR/routing/), so every run shows how
    its data uses the experts; selection policies and rank_by_load are computed from it.
    """
    config = model.config
    layers, experts = config.num_hidden_layers, config.num_local_experts
    profile = load_or_profile(section, model, tokenizer, rows, out_dir, is_main)
    if (len(profile.layers), profile.num_experts) != (layers, experts):
        raise RecipeError(
            f"lora.routing_profile has {len(profile.layers)} layers x {profile.num_experts} experts, "
            f"the model {layers} x {experts}"
        )
    shares = profile.token_share_matrix()
    try:
        selected = select_experts(section.policy(), shares, layers, experts)
    except ValueError as err:
        raise RecipeError(f"lora.experts: {err}") from None
    plan = assign_ranks(selected, shares, section.r, section.rank_by_load, section.min_rank, section.max_rank)
    adapted = sum(len(v) for v in plan.values())
    full = plan_size(
        {i: dict.fromkeys(range(experts), section.r) for i in range(layers)},
        config.hidden_size,
        config.intermediate_size,
    )
    ours = plan_size(plan, config.hidden_size, config.intermediate_size)
    log.info(
        "expert LoRA: %d of %d experts adapted, %s expert parameters (%.0f%% of all experts at r=%d)",
        adapted,
        layers * experts,
        f"{ours:,}",
        100.0 * ours / max(full, 1),
        section.r,
    )
    return plan
