"""Read a saved stock PEFT LoRA adapter as per-weight updates in transformers-5 (model-space) names.

Keys look like `base_model.model.<module>[.base_layer]*.lora_{A,B}.weight` (LoRA) or
`base_model.model.<module>.weight` (modules_to_save: a full replacement). On fused Mixtral experts PEFT
nests one ParamWrapper per targeted parameter, so the `.base_layer` depth does not name the parameter;
the factor shapes do (gate_up_proj: in=hidden, out=2*intermediate; down_proj: in=intermediate, out=hidden).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from align.errors import ModelError
from align.export.merge_math import lora_scale

PREFIX = "base_model.model."
LORA_KEY = re.compile(r"^(?P<module>.+?)(?:\.base_layer)*\.lora_(?P<ab>[AB])\.weight$")
EXPERT_PARAMS = ("gate_up_proj", "down_proj")


@dataclass
class Factors:
    """One LoRA update: A, B and the scale; `experts` > 1 for a fused 3-D expert parameter."""

    lora_a: torch.Tensor
    lora_b: torch.Tensor
    scale: float
    experts: int = 1


@dataclass
class AdapterUpdates:
    """Model-space parameter name -> LoRA factors, or -> full replacement tensor (modules_to_save)."""

    factors: dict[str, Factors]
    replacements: dict[str, torch.Tensor]

    def names(self) -> set[str]:
        return set(self.factors) | set(self.replacements)


def _check_supported(config: dict, where: Path) -> None:
    if config.get("peft_type") != "LORA":
        raise ModelError(f"{where}: only LoRA adapters can be merged (peft_type {config.get('peft_type')})")
    for key in ("use_dora", "lora_bias", "fan_in_fan_out"):
        if config.get(key):
            raise ModelError(f"{where}: merging an adapter with {key}=true is not supported by align export")
    if config.get("trainable_token_indices"):
        raise ModelError(f"{where}: merging trainable_token_indices is not supported by align export")


def _expert_param(module: str, lora_a: torch.Tensor, lora_b: torch.Tensor, hidden: int, inter: int) -> str:
    """Which fused expert parameter a nested ParamWrapper adapts, from its factor shapes."""
    shapes = {"gate_up_proj": (hidden, 2 * inter), "down_proj": (inter, hidden)}
    for name, (fan_in, fan_out) in shapes.items():
        if lora_a.shape[1] == fan_in and lora_b.shape[0] == fan_out:
            return f"{module}.{name}"
    raise ModelError(f"LoRA factors on {module} fit neither expert parameter: A {tuple(lora_a.shape)}")


def read_adapter(adapter_dir: str | Path, hidden: int, intermediate: int, num_experts: int) -> AdapterUpdates:
    """Parse adapter_config.json + adapter_model.safetensors into updates keyed by model parameter name."""
    adapter_dir = Path(adapter_dir)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    _check_supported(config, adapter_dir)
    state = load_file(adapter_dir / "adapter_model.safetensors")
    pairs: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
    replacements: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not key.startswith(PREFIX):
            raise ModelError(f"{adapter_dir}: unexpected adapter key {key}")
        name = key[len(PREFIX) :]
        match = LORA_KEY.match(name)
        if match:
            depth = name.count(".base_layer")
            pairs.setdefault((match["module"], depth), {})[match["ab"]] = value
        elif ".lora_" in name or "trainable_tokens" in name:
            raise ModelError(f"{adapter_dir}: {key} is not a LoRA A/B weight align export can merge")
        else:
            replacements[name] = value
    alpha_pattern = config.get("alpha_pattern") or {}
    factors: dict[str, Factors] = {}
    for (module, _depth), ab in pairs.items():
        lora_a, lora_b = ab["A"], ab["B"]
        experts = num_experts if module.endswith(".experts") else 1
        param = _expert_param(module, lora_a, lora_b, hidden, intermediate) if experts > 1 else f"{module}.weight"
        alpha = config["lora_alpha"]
        for pattern, value in alpha_pattern.items():  # PEFT's get_pattern_key: a suffix match on the module
            if re.match(rf"(.*\.)?({pattern})$", module):
                alpha = value
                break
        rank = lora_a.shape[0] // experts
        factors[param] = Factors(lora_a, lora_b, lora_scale(alpha, rank, config.get("use_rslora", False)), experts)
    return AdapterUpdates(factors, replacements)
