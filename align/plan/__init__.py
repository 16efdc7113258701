"""`align plan`: per-GPU memory of each stage of a recipe, from the model's config.json only (no weights).

Pure arithmetic on dataclasses (`estimate.StageInput` in, `estimate.Estimate` out); formulas, assumptions and the
CPU validation are in docs/memory.md.
"""

from __future__ import annotations

from align.config.schema import Recipe
from align.plan.activations import Activations, Workload, activations
from align.plan.estimate import Estimate, Parallel, Quant, StageInput, estimate
from align.plan.known_configs import KNOWN_CONFIGS, ModelShape, load_model_shape, shape_from_config
from align.plan.params import LoraShape, active_params, lora_params, param_counts
from align.plan.report import render


def plan_command(recipe: Recipe, accelerate_config: str | None, gpus: int | None, gpu_mem: str | None) -> str:
    """The report `align plan` prints; RecipeError for a bad model, accelerate config, --gpus or --gpu-mem."""
    return render(recipe, accelerate_config, gpus, gpu_mem)


__all__ = [
    "KNOWN_CONFIGS",
    "Activations",
    "Estimate",
    "LoraShape",
    "ModelShape",
    "Parallel",
    "Quant",
    "StageInput",
    "Workload",
    "activations",
    "active_params",
    "estimate",
    "load_model_shape",
    "lora_params",
    "param_counts",
    "plan_command",
    "shape_from_config",
]
