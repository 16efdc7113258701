"""Launched by tests/test_zero3_moe.py on 2 ranks: DeepSpeed ZeRO-3 + routed expert LoRA, ranks forced to route
to DISJOINT experts, optionally with align's 4-bit experts. Writes one JSON per rank with what it measured.

    python -m torch.distributed.run --nproc_per_node 2 tests/dist/zero3_moe.py TINY_DIR OUT_DIR {16bit,4bit}

Without align's MoE leaf registration the ranks would fetch different expert parameters and DeepSpeed's
collectives would disagree (hang or "Detected a disagreement on list contents"): finishing is the test.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import deepspeed
import torch
from transformers.integrations import HfDeepSpeedConfig

from align.config.schema import LoraSection, ModelSection, QuantizationSection
from align.lora import lora_config
from align.model import load_model
from align.moe.adapters import wrap
from align.moe.quant import QuantizedExperts
from align.moe.zero3 import register_moe_leaves
from align.runtime import resolve_runtime

DS_CONFIG = {
    "train_micro_batch_size_per_gpu": 2,
    "gradient_accumulation_steps": 1,
    "zero_optimization": {"stage": 3, "overlap_comm": False, "contiguous_gradients": True},
    "bf16": {"enabled": False},
    "zero_allow_untested_optimizer": True,
}
# rank -> the only experts its tokens go to (in every layer); experts 2..5 get no token anywhere
ROUTES = {0: (0, 1), 1: (6, 7)}


def force_routes(model, rank: int) -> None:
    """Rewrite every router's top-k choice so this rank's tokens use only ROUTES[rank]."""

    def hook(module, args, output):
        logits, scores, index = output
        forced = torch.tensor(ROUTES[rank], device=index.device).expand_as(index)
        return logits, scores, forced

    for name, module in model.named_modules():
        if name.endswith("mlp.gate"):
            module.register_forward_hook(hook)


def main(tiny_dir: str, out_dir: str, mode: str) -> None:
    deepspeed.init_distributed(dist_backend="gloo")
    rank = torch.distributed.get_rank()
    keep = HfDeepSpeedConfig(DS_CONFIG)  # noqa: F841  (ZeRO-3 is "enabled" while this object lives)
    runtime = resolve_runtime("auto")
    model = load_model(ModelSection(name_or_path=tiny_dir), QuantizationSection(load_in_4bit=mode == "4bit"), runtime)
    every_expert = {layer: dict.fromkeys(range(model.config.num_local_experts), 4)
                    for layer in range(model.config.num_hidden_layers)}  # fmt: skip
    model = wrap(model, lora_config(LoraSection(r=4, alpha=8, target_modules=["q_proj"]), moe=True), every_expert)
    assert register_moe_leaves(model)
    force_routes(model, rank)
    weights = [(n, p) for n, p in model.named_parameters() if ".experts." in n and "lora_" not in n]
    packed = dict(weights)  # the experts' own weights: 16-bit stacks, or 4-bit packed bytes
    params = [p for p in model.parameters() if p.requires_grad]
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(params, lr=1e-2), config=DS_CONFIG)
    torch.manual_seed(rank)
    ids = torch.randint(1, 32000, (2, 24))
    losses = []
    for _ in range(3):
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    trained = {}
    for name, p in model.named_parameters():
        if "lora_gate_up_B" in name or "lora_down_B" in name:
            with deepspeed.zero.GatheredParameters([p]):
                trained[name] = p.abs().sum().item()
    quantized = [m for m in model.modules() if isinstance(m, QuantizedExperts)]
    result = {
        "rank": rank,
        "losses": losses,
        "lora_abs_sum": trained,
        "quantized_layers": len(quantized),
        "packed": {n: {"numel": int(p.ds_numel), "local": int(p.ds_tensor.numel())} for n, p in packed.items()},
    }
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:4])
