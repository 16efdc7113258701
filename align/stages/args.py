"""TRL training arguments for a stage: align's defaults < runtime flags < the recipe's own keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from align.config.schema import Recipe, Stage
from align.config.trl_fields import trl_config_class
from align.errors import RecipeError
from align.runtime import Runtime

# align's defaults, in one place. TRL's own defaults (bf16=True, gradient checkpointing on) are
# wrong for CPU runs; the runtime flags fix dtype, and recipes state gradient_checkpointing.
DEFAULTS: dict[str, dict[str, Any]] = {
    "common": {
        "report_to": "none",
        "logging_steps": 1,
        "save_strategy": "no",
        "eval_strategy": "no",
        "dataloader_num_workers": 0,
        "ddp_find_unused_parameters": False,
        "disable_tqdm": True,
    },
    "sft": {"assistant_only_loss": True},
    # The reference is frozen: its log-probs are computed once, before training, and cached on disk
    # (align/stages/ref_cache.py), instead of a reference forward in every step.
    "dpo": {"precompute_ref_log_probs": True},
}


def training_args(recipe: Recipe, stage: Stage, runtime: Runtime, work_dir: Path):
    """The SFTConfig/DPOConfig for `stage`, built from the recipe."""
    values: dict[str, Any] = {**DEFAULTS["common"], **DEFAULTS[stage], **runtime.trainer_flags()}
    if recipe.model.router_aux_loss_coef is not None:
        values["router_aux_loss_coef"] = recipe.model.router_aux_loss_coef
    values.update(recipe.stage_section(stage).trainer)
    values["output_dir"] = str(work_dir)
    values["seed"] = recipe.seed
    values["data_seed"] = recipe.seed
    try:
        return trl_config_class(stage)(**values)
    except ValueError as err:  # TrainingArguments.__post_init__ checks combinations of keys (transformers 5.24)
        reason = " ".join(str(err).split())[:400]
        raise RecipeError(f"the {stage}: section's trainer keys do not fit together: {reason}") from None
