"""The PEFT LoRA config a recipe's `lora:` section describes."""

from __future__ import annotations

from peft import LoraConfig

from align.config.schema import LoraSection

# transformers 5 fused-expert parameter names (Mixtral): gate and up concatenated, then down.
EXPERT_PARAMETERS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
ROUTER_PARAMETER = "mlp.gate.weight"


def lora_config(section: LoraSection, moe: bool = True) -> LoraConfig:
    """LoRA on the attention modules, and (MoE models) on the fused experts and router as asked."""
    target_parameters: list[str] = []
    modules_to_save: list[str] | None = None
    if moe and section.experts != "none":  # routed: align.moe.adapters.wrap swaps these for its own layer
        target_parameters += EXPERT_PARAMETERS
    if moe and section.router == "lora":
        target_parameters.append(ROUTER_PARAMETER)
    if moe and section.router == "full":
        modules_to_save = ["gate"]
    return LoraConfig(
        r=section.r,
        lora_alpha=section.alpha,
        lora_dropout=section.dropout,
        target_modules=list(section.target_modules),
        target_parameters=target_parameters or None,
        modules_to_save=modules_to_save,
        bias="none",
        task_type="CAUSAL_LM",
    )
