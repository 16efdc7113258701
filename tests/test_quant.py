"""4-bit experts: the fused experts really shrink, logits stay close, LoRA trains, adapters move to 16 bit."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, PeftModel
from transformers import MixtralConfig, MixtralForCausalLM

pytest.importorskip("bitsandbytes")

from align.moe.adapters import export_stock, wrap  # noqa: E402
from align.moe.quant import QuantizedExperts, quantize_experts  # noqa: E402


def mixtral(hidden: int = 64, inter: int = 128, seed: int = 0) -> MixtralForCausalLM:
    torch.manual_seed(seed)
    cfg = MixtralConfig(
        vocab_size=256,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
    )
    return MixtralForCausalLM(cfg).float().eval()


def expert_bytes(model) -> tuple[int, int]:
    """(bytes of expert storage incl. quantization constants, expert parameters represented)."""
    stored = params = 0
    for module in model.modules():
        if isinstance(module, QuantizedExperts):
            stored += sum(b.numel() * b.element_size() for b in module.parameters())
            for states in module.states.values():
                for s in states:
                    stored += s.absmax.numel() * s.absmax.element_size()
                    if s.state2 is not None:
                        stored += s.state2.absmax.numel() * s.state2.absmax.element_size() + s.code.numel() * 4
            params += module.num_experts * 3 * module.hidden_dim * module.intermediate_dim
    return stored, params


@pytest.mark.parametrize(("hidden", "inter"), [(64, 128), (256, 512)])
def test_logits_stay_close_and_experts_shrink(hidden, inter):
    ref = mixtral(hidden, inter)
    ids = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        want = ref(input_ids=ids).logits
    quantized = mixtral(hidden, inter)
    assert quantize_experts(quantized) == 2
    with torch.no_grad():
        got = quantized(input_ids=ids).logits
    rel = ((got - want).norm() / want.norm()).item()
    assert rel < 0.1, rel  # NF4 on random N(0, 0.02) weights: measured 2-6% relative logit error
    stored, params = expert_bytes(quantized)
    assert stored / params < 0.6  # vs 2 bytes/param in bf16, 4 in fp32
    experts = {n: p for n, p in quantized.named_parameters() if ".experts." in n}
    assert not [n for n in experts if n.endswith(("gate_up_proj", "down_proj"))]  # no 16-bit expert weights left
    # the packed 4-bit bytes are frozen parameters (so ZeRO-3 partitions them), in the model's dtype
    assert experts and all(not p.requires_grad and p.dtype == torch.float32 for p in experts.values())


def test_dtype_casts_leave_the_packed_experts_intact():
    """`model.bfloat16()` (DeepSpeed's bf16 engine does it) must not cast 4-bit codes stored as floats."""
    model = mixtral()
    quantize_experts(model)
    experts = model.model.layers[0].mlp.experts
    x = torch.randn(6, experts.hidden_dim)
    idx, weights = torch.tensor([[0, 1]] * 6), torch.full((6, 2), 0.5)
    with torch.no_grad():
        want = experts(x, idx, weights)
        packed = experts.gate_up_0.detach().clone()
        model.bfloat16()
        assert experts.gate_up_0.dtype == torch.float32  # bytes compared as bytes (some are NaN floats)
        assert torch.equal(experts.gate_up_0.view(torch.uint8), packed.view(torch.uint8))
        got = experts(x.bfloat16(), idx, weights.bfloat16())
    assert got.dtype == torch.bfloat16
    assert ((got.float() - want).norm() / want.norm()).item() < 0.02  # bf16 activations only


def test_routed_lora_trains_on_4bit_experts_and_the_adapter_loads_on_16bit(tmp_path):
    model = mixtral()
    quantize_experts(model)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    peft_model = wrap(model, config, plan={0: {0: 4, 1: 4}, 1: {2: 4}})
    peft_model.train()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    ids = torch.randint(0, 256, (4, 24))
    losses = []
    for _ in range(8):
        loss = peft_model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses
    peft_model.save_pretrained(tmp_path)
    export_stock(peft_model, tmp_path)
    # the usual QLoRA deployment path: the adapter on the 16-bit base
    full = PeftModel.from_pretrained(mixtral(), tmp_path).eval()
    peft_model.eval()
    with torch.no_grad():
        a, b = peft_model(input_ids=ids).logits, full(input_ids=ids).logits
    assert ((a - b).norm() / b.norm()).item() < 0.1  # differs by the 4-bit rounding of the base only


def test_quantized_recipe_runs_sft_then_dpo(tmp_path, tiny_dir):
    """4-bit attention + experts, routed expert LoRA, gradient checkpointing in SFT: the real CPU QLoRA path."""
    import json

    from align.cli import main

    code = main(
        [
            "run",
            "recipes/tiny-mixtral/pipeline.yaml",
            f"output_dir={tmp_path}",
            f"model.name_or_path={tiny_dir}",
            "quantization.load_in_4bit=true",
            "sft.gradient_checkpointing=true",
            "sft.max_steps=4",
            "dpo.max_steps=4",
            "sft.eval_samples=8",
            "dpo.eval_samples=8",
        ]
    )
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stages"]["sft"]["eval_loss_after"] < summary["stages"]["sft"]["eval_loss_before"]
    assert summary["stages"]["dpo"]["reward_accuracy_after"] > 0.5
    assert (tmp_path / "dpo" / "align_experts.json").exists()
