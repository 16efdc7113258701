"""Routed expert LoRA: equals PEFT target_parameters LoRA, exports to stock PEFT, reloads as routed."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import MixtralConfig, MixtralForCausalLM

from align.moe.adapters import copy_stock_experts, export_stock, is_routed_adapter, load_routed, routed_layers, wrap
from align.moe.peft_format import pack, unpack
from align.moe.routed_math import group_by_expert

E = 4


def tiny_mixtral(seed: int = 0, layers: int = 2) -> MixtralForCausalLM:
    torch.manual_seed(seed)
    cfg = MixtralConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=E,
        num_experts_per_tok=2,
    )
    return MixtralForCausalLM(cfg).float()


def stock_config(r: int = 4) -> LoraConfig:
    return LoraConfig(
        r=r,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj"],
        target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"],
    )


def randomize_adapters(model: torch.nn.Module, seed: int = 1) -> None:
    """Non-zero B everywhere, so the update is visible (fresh LoRA has B = 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def copy_stock_into_routed(stock: PeftModel, routed: PeftModel) -> None:
    """Give the routed model exactly the stock model's A/B (attention copied, experts unpacked)."""
    stock_state = {n: p for n, p in stock.named_parameters() if "lora_" in n}
    routed_params = dict(routed.named_parameters())
    with torch.no_grad():
        for name, p in stock_state.items():
            if ".mlp.experts." not in name:
                routed_params[name].copy_(p)
    copy_stock_experts(stock, routed, E)


def test_pack_unpack_round_trip_with_mixed_ranks_and_unselected_experts():
    torch.manual_seed(0)
    factors = {0: (torch.randn(2, 5), torch.randn(7, 2), 4.0), 2: (torch.randn(4, 5), torch.randn(7, 4), 2.0)}
    a, b = pack(factors, num_experts=3, rank=4, scale=2.0)
    assert a.shape == (12, 5) and b.shape == (7, 12)
    back = unpack(a, b, 3)
    assert sorted(back) == [0, 2]  # expert 1 was not selected: all zeros
    assert torch.equal(back[0][0], factors[0][0]) and torch.allclose(back[0][1], factors[0][1] * 2.0)
    assert torch.equal(back[2][0], factors[2][0]) and torch.allclose(back[2][1], factors[2][1])


def test_group_by_expert_covers_every_routed_slot():
    idx = torch.tensor([[0, 2], [2, 1], [0, 1]])
    groups = {e: (t.tolist(), s.tolist()) for e, t, s in group_by_expert(idx, 3)}
    assert groups == {0: ([0, 2], [0, 0]), 1: ([1, 2], [1, 1]), 2: ([0, 1], [1, 0])}


def test_routed_equals_peft_target_parameters_forward_and_backward():
    stock = get_peft_model(tiny_mixtral(), stock_config())
    randomize_adapters(stock)
    routed = wrap(tiny_mixtral(), stock_config(), plan={layer: dict.fromkeys(range(E), 4) for layer in range(2)})
    copy_stock_into_routed(stock, routed)
    ids = torch.randint(0, 128, (3, 11))
    out_s = stock(input_ids=ids, labels=ids)
    out_r = routed(input_ids=ids, labels=ids)
    assert torch.allclose(out_s.logits, out_r.logits, atol=1e-5)
    out_s.loss.backward()
    out_r.loss.backward()
    s_grads = {n: p.grad for n, p in stock.named_parameters() if p.grad is not None}
    r_grads = {n: p.grad for n, p in routed.named_parameters() if p.grad is not None}
    for layer in range(2):
        prefix = f"base_model.model.model.layers.{layer}.mlp.experts"
        for proj, inner in (("gate_up", ".base_layer"), ("down", "")):
            ga = s_grads[f"{prefix}{inner}.lora_A.default.weight"].reshape(E, 4, -1)
            gb = s_grads[f"{prefix}{inner}.lora_B.default.weight"].reshape(-1, 4, E)
            for expert in range(E):
                assert torch.allclose(ga[expert], r_grads[f"{prefix}.lora_{proj}_A.default.{expert}"], atol=1e-5)
                assert torch.allclose(gb[:, :, expert], r_grads[f"{prefix}.lora_{proj}_B.default.{expert}"], atol=1e-5)
    q = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"
    assert torch.allclose(s_grads[q], r_grads[q], atol=1e-5)


@pytest.fixture
def trained_routed(tmp_path):
    """A routed adapter with mixed ranks and unselected experts, saved the align way."""
    plan = {0: {0: 4, 2: 2}, 1: {1: 3}}
    model = wrap(tiny_mixtral(), stock_config(), plan)
    randomize_adapters(model)
    model.save_pretrained(tmp_path)
    export_stock(model, tmp_path)
    return model, tmp_path, plan


def test_export_loads_in_stock_peft_with_identical_logits(trained_routed):
    model, path, _ = trained_routed
    ids = torch.randint(0, 128, (2, 9))
    with torch.no_grad():
        ours = model(input_ids=ids).logits
        stock = PeftModel.from_pretrained(tiny_mixtral(), path)  # unmodified transformers + PEFT
        theirs = stock(input_ids=ids).logits
        base = tiny_mixtral()(input_ids=ids).logits
    assert (ours - base).abs().max() > 1e-2  # the adapter does something
    assert torch.allclose(ours, theirs, atol=1e-4)


def test_reload_restores_the_routed_layer_and_plan(trained_routed):
    model, path, plan = trained_routed
    assert is_routed_adapter(path)
    again = load_routed(tiny_mixtral(), path, is_trainable=True)
    layers = routed_layers(again)
    assert {int(n.split(".layers.")[1][0]): layer.expert_ranks["default"] for n, layer in layers.items()} == plan
    ids = torch.randint(0, 128, (2, 9))
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, again(input_ids=ids).logits, atol=1e-5)
    assert any(p.requires_grad for n, p in again.named_parameters() if "lora_gate_up_A" in n)


def test_unselected_experts_get_no_update_and_no_parameters():
    model = wrap(tiny_mixtral(), stock_config(), plan={0: {1: 4}, 1: {}})
    names = [n for n, p in model.named_parameters() if p.requires_grad and ".experts." in n]
    assert names and all(".layers.0." in n and n.endswith(".1") for n in names)


def test_experts_no_token_reached_still_get_a_zero_gradient():
    """DDP (find_unused_parameters=False) waits for every trainable parameter's gradient: an adapted expert
    that got no token on this rank must still produce one, equal to zero."""
    model = wrap(tiny_mixtral(), stock_config(), plan={0: dict.fromkeys(range(E), 4), 1: {}})
    randomize_adapters(model)
    experts = routed_layers(model)
    layer = next(iter(experts.values()))
    hidden = torch.randn(6, 32)
    index = torch.tensor([[0, 1]] * 6)  # experts 2 and 3 get no token
    out = layer(hidden, index, torch.full((6, 2), 0.5))
    out.sum().backward()
    for name in ("lora_gate_up_A", "lora_gate_up_B", "lora_down_A", "lora_down_B"):
        for expert, param in getattr(layer, name)["default"].items():
            assert param.grad is not None, (name, expert)
            assert (param.grad.abs().sum() > 0) == (int(expert) in (0, 1)), (name, expert)
