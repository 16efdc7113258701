"""A routed expert adapter in which no token reached some expert still reloads (its update is zero)."""

from __future__ import annotations

import torch
from peft import LoraConfig
from transformers import MixtralConfig, MixtralForCausalLM

from align.moe.adapters import export_stock, load_routed, routed_layers, wrap


def tiny_mixtral() -> MixtralForCausalLM:
    torch.manual_seed(0)
    config = MixtralConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
    )
    return MixtralForCausalLM(config).float()


def lora() -> LoraConfig:
    experts = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
    return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], target_parameters=experts)


def test_expert_without_an_update_reloads_as_a_zero_update(tmp_path):
    plan = {0: {0: 4, 1: 4, 2: 4}, 1: {0: 4, 3: 4}}
    model = wrap(tiny_mixtral(), lora(), plan)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
            # layer 0's expert 1 got no token in training: its B is still the initial 0
            if "layers.0." in name and name.endswith(("lora_gate_up_B.default.1", "lora_down_B.default.1")):
                p.zero_()
    model.save_pretrained(tmp_path)
    export_stock(model, tmp_path)
    again = load_routed(tiny_mixtral(), tmp_path, is_trainable=True)
    layers = {int(n.split(".layers.")[1][0]): layer for n, layer in routed_layers(again).items()}
    assert layers[0].expert_ranks["default"] == plan[0]  # the plan is kept: expert 1 can still learn in DPO
    ids = torch.randint(0, 128, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
