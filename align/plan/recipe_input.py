"""From a Recipe to the planner's inputs: model shape, adapters, micro-batch of each stage."""

from __future__ import annotations

import json
from pathlib import Path

from align.config.schema import LoraSection, Recipe
from align.errors import RecipeError
from align.moe.placement import assign_ranks, select_experts
from align.plan.activations import Workload
from align.plan.estimate import Parallel, Quant, StageInput
from align.plan.known_configs import ModelShape, load_model_shape
from align.plan.params import LoraShape, module_dims

# TRL 1.16 / transformers 5.24 defaults for keys a recipe may leave out.
TRL_DEFAULTS = {
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 8,
    "max_length": 1024,
    "gradient_checkpointing": True,
}
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def _routing_shares(section: LoraSection, m: ModelShape) -> list[list[float]] | None:
    """Per-layer token shares from lora.routing_profile, when that file exists and matches the model."""
    if not section.routing_profile or not Path(section.routing_profile).is_file():
        return None
    try:
        data = json.loads(Path(section.routing_profile).read_text(encoding="utf-8"))
        shares = [list(layer["token_share"]) for layer in data["layers"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise RecipeError(f"lora.routing_profile {section.routing_profile}: unreadable: {err}") from None
    if len(shares) != m.layers or any(len(row) != m.experts for row in shares):
        raise RecipeError(f"lora.routing_profile {section.routing_profile}: not a {m.layers} x {m.experts} profile")
    return shares


def expert_plan_summary(section: LoraSection, m: ModelShape) -> tuple[int, float, str]:
    """(sum of expert ranks, share of routed tokens reaching adapted experts, note) for the lora.experts policy."""
    policy = section.policy()
    shares = _routing_shares(section, m)
    by_routing = isinstance(policy, dict) and ("top_p" in policy or "top_k_per_layer" in policy)
    guessed = shares is None and (by_routing or section.rank_by_load)
    note, busy = "", 1.0
    if guessed:  # no profile: uniform routing, rank r everywhere
        shares = [[1.0 / m.experts] * m.experts for _ in range(m.layers)]
        if isinstance(policy, dict) and "top_p" in policy:
            policy, note = "all", "lora.experts top_p needs a routing profile: planned as every expert (upper bound)"
        elif isinstance(policy, dict) and "top_k_per_layer" in policy:
            busy, note = 1.5, "top_k_per_layer without a routing profile: the kept experts take 1.5x a uniform share"
        if section.rank_by_load:
            note = (note + "; " if note else "") + "rank_by_load without a profile: planned at the mean rank r"
    try:
        selected = select_experts(policy, shares, m.layers, m.experts)
    except ValueError as err:
        raise RecipeError(f"lora.experts: {err}") from None
    by_load = section.rank_by_load and not guessed
    plan = assign_ranks(selected, shares, section.r, by_load, section.min_rank, section.max_rank)
    rank_sum = sum(rank for experts in plan.values() for rank in experts.values())
    if shares is not None and not guessed:
        share = sum(sum(shares[layer][e] for e in experts) for layer, experts in plan.items()) / m.layers
    else:
        share = min(1.0, busy * sum(len(experts) for experts in plan.values()) / (m.layers * m.experts))
    return rank_sum, share, note


def lora_shape(section: LoraSection, m: ModelShape) -> tuple[LoraShape, list[str]]:
    """The LoraShape of a recipe's lora section and the notes it needs."""
    known = module_dims(m)
    modules = tuple(name for name in section.target_modules if name in known)
    notes = [
        f"lora.target_modules {name!r} matches no Mixtral module: not counted"
        for name in section.target_modules
        if name not in known
    ]
    rank_sum, share, note = expert_plan_summary(section, m) if section.experts != "none" else (0, 0.0, "")
    if note:
        notes.append(note)
    shape = LoraShape(section.r, modules, rank_sum, share, section.implementation, section.router)
    return shape, notes


def _trainer_value(recipe: Recipe, stage: str, key: str):
    value = recipe.stage_section(stage).trainer.get(key, TRL_DEFAULTS[key])
    if value is None:
        raise RecipeError(f"{stage}.{key} is null: the planner needs a value")
    return value


def _eval_sequences(recipe: Recipe, stage: str) -> int:
    """Sequences per held-out forward (align evaluates before and after a stage when it has eval data)."""
    data = recipe.stage_data(stage)
    if not (data.eval or data.eval_fraction > 0):
        return 0
    return int(_trainer_value(recipe, stage, "per_device_eval_batch_size"))


def _continues_sft(recipe: Recipe) -> bool:
    """DPO starts from an SFT adapter (this run's, OUTPUT_DIR/sft, or model.adapter_path): TRL copies it as 'ref'."""
    sft_dir = Path(recipe.output_dir) / "sft"
    return "sft" in recipe.stages or recipe.model.adapter_path is not None or sft_dir.is_dir()


def stage_inputs(recipe: Recipe, parallel: Parallel, device: str = "cuda") -> tuple[list[StageInput], list[str]]:
    """One StageInput per stage of the recipe, and notes on assumptions made."""
    m = load_model_shape(recipe.model.name_or_path, recipe.model.create_tiny_if_missing)
    lora, notes = lora_shape(recipe.lora, m)
    compute = _DTYPE_BYTES.get(recipe.model.dtype, 2 if device == "cuda" else 4)
    if parallel.kind == "zero" and parallel.bf16_master:
        compute = 2  # DeepSpeed bf16 casts the whole model
    q = recipe.quantization
    quant = Quant(double_quant=q.bnb_4bit_use_double_quant) if q.load_in_4bit else None
    out = []
    for stage in recipe.stages:
        batch = int(_trainer_value(recipe, stage, "per_device_train_batch_size"))
        seq = int(_trainer_value(recipe, stage, "max_length"))
        if batch < 1 or seq < 2:
            raise RecipeError(f"{stage}: per_device_train_batch_size and max_length must be positive")
        dpo = stage == "dpo"
        # align precomputes the reference log-probs by default (align/stages/args.py DEFAULTS)
        ref = dpo and not recipe.stage_section(stage).trainer.get("precompute_ref_log_probs", True)
        work = Workload(
            sequences=2 * batch if dpo else batch,
            seq_len=seq,
            gradient_checkpointing=bool(_trainer_value(recipe, stage, "gradient_checkpointing")),
            compute_bytes=compute,
            device=device,
            reference_forward=ref,
            quantized_experts=quant is not None,
            eval_sequences=_eval_sequences(recipe, stage),
        )
        copy = dpo and _continues_sft(recipe)
        if dpo and not copy:
            notes.append("dpo: no SFT adapter to continue, the reference is the base model (adapter disabled)")
        out.append(StageInput(stage, m, lora, work, parallel, compute, quant, copy))
    return out, notes
