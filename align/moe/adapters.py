"""Build, save and load align's expert-aware adapters (attention LoRA + routed expert LoRA) via PEFT.

Saved adapters are always stock PEFT: `export_stock` rewrites what `PeftModel.save_pretrained` wrote
into a `target_parameters` LoRA that an unmodified transformers + PEFT loads with identical logits;
`align_experts.json` beside it records the plan, so align restores the routed layer on load.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from transformers.models.mixtral.modeling_mixtral import MixtralExperts

from align.moe.peft_format import EXPERT_TARGETS, routed_to_stock, stock_to_routed
from align.moe.routed_lora import RoutedLoraExperts, attach_plan

PLAN_FILE = "align_experts.json"
Plan = dict[int, dict[int, int]]  # layer index -> {expert index: rank}


def routed_config(config: LoraConfig) -> LoraConfig:
    """A copy of `config` whose experts are adapted by RoutedLoraExperts (target module `experts`)."""
    fields = config.to_dict()
    fields.pop("peft_type", None)
    fields["target_modules"] = sorted(set(config.target_modules or []) | {"experts"})
    fields["target_parameters"] = [p for p in (config.target_parameters or []) if p not in EXPERT_TARGETS] or None
    routed = LoraConfig(**fields)
    routed._register_custom_module({MixtralExperts: RoutedLoraExperts})
    return routed


def experts_modules(model: torch.nn.Module) -> dict[int, torch.nn.Module]:
    """Layer index -> the layer's fused experts module (unwrapped)."""
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, MixtralExperts) and ".layers." in name:
            found[int(name.split(".layers.")[1].split(".")[0])] = module
    return found


def attach_plans(model: torch.nn.Module, plan: Plan) -> None:
    """Attach each layer's {expert: rank} to its experts module; layers absent from `plan` get none."""
    for layer, experts in experts_modules(model).items():
        attach_plan(experts, plan.get(layer, {}))


def wrap(model: torch.nn.Module, config: LoraConfig, plan: Plan) -> PeftModel:
    """get_peft_model with routed expert LoRA placed by `plan`."""
    attach_plans(model, plan)
    return get_peft_model(model, routed_config(config))


def routed_layers(model: torch.nn.Module) -> dict[str, RoutedLoraExperts]:
    return {name: m for name, m in model.named_modules() if isinstance(m, RoutedLoraExperts)}


def stock_rank(layers: dict[str, RoutedLoraExperts], adapter: str) -> int:
    """The single rank of the stock export: the largest expert rank of any layer (others are zero-padded)."""
    return max(max(layer.expert_ranks[adapter].values(), default=1) for layer in layers.values())


def copy_stock_experts(stock: torch.nn.Module, routed: torch.nn.Module, num_experts: int, adapter: str = "default"):
    """Copy a live PEFT `target_parameters` model's expert A/B into a routed model of the same rank and alpha."""
    stock_params = {n: p for n, p in stock.named_parameters() if ".mlp.experts." in n and "lora_" in n}
    routed_params = dict(routed.named_parameters())
    state = {n.replace(f".{adapter}.", "."): p.detach() for n, p in stock_params.items()}
    converted, _ = stock_to_routed(state, num_experts)
    with torch.no_grad():
        for key, value in converted.items():
            prefix, factor, expert = key.rsplit(".", 2)
            routed_params[f"{prefix}.{factor}.{adapter}.{expert}"].copy_(value)


def export_stock(model: torch.nn.Module, adapter_dir: str | Path, adapter: str = "default") -> None:
    """Rewrite a saved routed adapter dir as a stock PEFT `target_parameters` adapter (+ the plan file)."""
    layers = routed_layers(model)
    if not layers:
        return
    adapter_dir = Path(adapter_dir)
    weights = adapter_dir / "adapter_model.safetensors"
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    num_experts = next(iter(layers.values())).experts.num_experts
    rank = stock_rank(layers, adapter)
    alpha = config["lora_alpha"]
    # PEFT writes keys prefixed by the module name in the PeftModel (it only drops the adapter name)
    scales = {name: layer.scaling[adapter] for name, layer in layers.items()}
    state = routed_to_stock(load_file(weights), num_experts, rank, alpha / rank, scales)
    save_file(state, weights, metadata={"format": "pt"})
    config["target_modules"] = sorted(set(config["target_modules"]) - {"experts"})
    config["target_parameters"] = EXPERT_TARGETS + [
        p for p in config.get("target_parameters") or [] if p not in EXPERT_TARGETS
    ]
    config["rank_pattern"] = {**(config.get("rank_pattern") or {}), "mlp.experts": rank}
    (adapter_dir / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    plan = {
        str(_layer_of(name)): {str(e): k for e, k in layer.expert_ranks[adapter].items()}
        for name, layer in layers.items()
    }
    (adapter_dir / PLAN_FILE).write_text(json.dumps({"num_experts": num_experts, "layers": plan}, indent=2) + "\n")


def _layer_of(name: str) -> int:
    return int(name.split(".layers.")[1].split(".")[0])


def is_routed_adapter(adapter_dir: str | Path) -> bool:
    return (Path(adapter_dir) / PLAN_FILE).is_file()


def load_routed(model: torch.nn.Module, adapter_dir: str | Path, is_trainable: bool = True) -> PeftModel:
    """Load a stock-format expert adapter back into align's routed layer (the plan file says where)."""
    adapter_dir = Path(adapter_dir)
    meta = json.loads((adapter_dir / PLAN_FILE).read_text())
    plan = {int(layer): {int(e): k for e, k in experts.items()} for layer, experts in meta["layers"].items()}
    config = LoraConfig.from_pretrained(str(adapter_dir))
    config.inference_mode = not is_trainable
    config.rank_pattern = {k: v for k, v in (config.rank_pattern or {}).items() if k != "mlp.experts"}
    peft_model = wrap(model, config, plan)
    state, in_file = stock_to_routed(load_file(adapter_dir / "adapter_model.safetensors"), meta["num_experts"])
    state = _fold_scales_back(peft_model, state, config)
    result = set_peft_model_state_dict(peft_model, state)
    missing = [k for k in result.missing_keys if ".lora_" in k and not _zero_update(k, in_file)]
    if missing:
        raise ValueError(f"{adapter_dir}: adapter is missing {len(missing)} tensors, e.g. {missing[0]}")
    if not is_trainable:
        peft_model.eval()
    return peft_model


def _zero_update(key: str, in_file: dict[str, dict[int, int]]) -> bool:
    """A planned expert with no slots in the file: no token reached it in training, so B stayed 0 and the
    export dropped it (a zero update); its fresh factors here (B = 0) give the same update."""
    m = re.match(r"(?P<prefix>.+)\.lora_(gate_up|down)_[AB]\.[^.]+\.(?P<expert>\d+)$", key)
    return m is not None and int(m["expert"]) not in in_file.get(m["prefix"], {})


def _fold_scales_back(model: PeftModel, state: dict[str, torch.Tensor], config: LoraConfig) -> dict[str, torch.Tensor]:
    """Undo the export's B scaling (stock scale alpha/rank_max -> each expert's own alpha/r_e)."""
    layers = routed_layers(model)
    rank = stock_rank(layers, "default")
    stock_scale = config.lora_alpha / rank
    out = dict(state)
    for name, layer in layers.items():
        for expert, own in layer.scaling["default"].items():
            for proj in ("gate_up", "down"):
                key = f"{name}.lora_{proj}_B.{expert}"
                if key in out:
                    out[key] = out[key] * (stock_scale / own)
    return out
