"""`align profile-experts`: profile a stage's training data through the base model's routers."""

from __future__ import annotations

from pathlib import Path

from accelerate import PartialState

from align.chat import template_allows_system
from align.config import Recipe, Stage
from align.data import load_stage
from align.model import load_model, load_tokenizer
from align.moe.routing import profile_rows, write_profile
from align.runtime import resolve_runtime
from align.stages.setup import ensure_backbone


def profile_experts(recipe: Recipe, stage: Stage, max_tokens: int, out: str | None) -> str:
    """Write routing.json + routing.png for `stage`'s training data; return a text summary."""
    runtime = resolve_runtime(recipe.model.dtype)
    ensure_backbone(recipe, PartialState(cpu=runtime.cpu_process_group))
    tokenizer = load_tokenizer(recipe.model)
    data = load_stage(
        recipe.stage_data(stage),
        "sft" if stage == "sft" else "preference",
        seed=recipe.seed,
        allow_system=template_allows_system(tokenizer),
        log=lambda _m: None,
    )
    model = load_model(recipe.model, recipe.quantization, runtime)
    profile = profile_rows(model, tokenizer, data.train, max_tokens)
    out_dir = Path(out) if out else Path(recipe.output_dir) / "routing"
    json_path, png_path = write_profile(profile, out_dir, f"routing profile: {stage} data, {recipe.model.name_or_path}")
    lines = [
        f"{profile.tokens} tokens profiled -> {json_path}, {png_path}",
        "layer  imbalance  entropy/max  token share per expert (%)",
    ]
    for layer in profile.layers:
        shares = " ".join(f"{100 * s:5.1f}" for s in layer["token_share"])
        lines.append(
            f"{layer['layer']:5d}  {layer['imbalance']:9.2f}  {layer['entropy'] / layer['max_entropy']:11.2f}  {shares}"
        )
    return "\n".join(lines)
