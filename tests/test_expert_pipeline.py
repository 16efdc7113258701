"""Expert-aware LoRA through the real pipeline: selection from the routing profile, stock export, metrics."""

from __future__ import annotations

import json

import pytest
import torch

from align.cli import main
from align.config.schema import LoraSection
from align.lora import lora_config
from align.moe.adapters import wrap


@pytest.fixture(scope="module")
def top_p_run(tmp_path_factory, tiny_dir):
    out = tmp_path_factory.mktemp("experts")
    code = main(
        [
            "run",
            "recipes/tiny-mixtral/pipeline.yaml",
            f"output_dir={out}",
            f"model.name_or_path={tiny_dir}",
            "lora.experts={top_p: 0.5}",
            "sft.max_steps=4",
            "dpo.max_steps=4",
            "sft.eval_samples=8",
            "dpo.eval_samples=8",
        ]
    )
    assert code == 0
    return out


def test_profile_written_and_selection_follows_it(top_p_run):
    profile = json.loads((top_p_run / "routing" / "routing.json").read_text())
    assert (top_p_run / "routing" / "routing.png").read_bytes()[:4] == b"\x89PNG"
    plan = json.loads((top_p_run / "sft" / "align_experts.json").read_text())["layers"]
    for layer in profile["layers"]:
        chosen = [int(e) for e in plan[str(layer["layer"])]]
        shares = layer["token_share"]
        assert sum(shares[e] for e in chosen) >= 0.5  # covers top_p
        dropped = [e for e in range(len(shares)) if e not in chosen]
        assert all(shares[d] <= min(shares[c] for c in chosen) for d in dropped)  # the most-used ones
        assert len(chosen) < len(shares)


def test_dpo_continues_the_sft_plan_and_exports_stock_format(top_p_run, tiny_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    sft_plan = json.loads((top_p_run / "sft" / "align_experts.json").read_text())
    dpo_plan = json.loads((top_p_run / "dpo" / "align_experts.json").read_text())
    assert sft_plan == dpo_plan
    config = json.loads((top_p_run / "dpo" / "adapter_config.json").read_text())
    assert "experts" not in config["target_modules"]
    stock = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), top_p_run / "dpo")
    ids = torch.tensor([[1, 733, 16289, 28793, 6312, 733, 28748, 16289, 28793]])
    from align.config.schema import ModelSection, QuantizationSection
    from align.model import load_model
    from align.moe.adapters import load_routed
    from align.runtime import Runtime

    ours = load_routed(
        load_model(ModelSection(name_or_path=str(tiny_dir)), QuantizationSection(), Runtime("cpu", torch.float32)),
        top_p_run / "dpo",
        is_trainable=False,
    )
    with torch.no_grad():
        assert torch.allclose(stock(input_ids=ids).logits, ours(input_ids=ids).logits, atol=1e-4)


def test_routing_metrics_are_logged(top_p_run):
    for stage in ("sft", "dpo"):
        records = [json.loads(x) for x in (top_p_run / stage / "metrics.jsonl").read_text().splitlines()]
        steps = [r for r in records if "loss" in r]
        assert steps and all({"routing/imbalance", "routing/entropy", "routing/drift"} <= set(r) for r in steps)
        assert all(0.0 <= r["routing/drift"] <= 1.0 and r["routing/imbalance"] >= 1.0 for r in steps)


def tiny_moe(tiny_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_dir)


@pytest.mark.parametrize(("router", "trained_name"), [("lora", "mlp.gate.lora_A"), ("full", "modules_to_save")])
def test_router_modes(tiny_dir, router, trained_name):
    section = LoraSection(router=router)
    model = wrap(tiny_moe(tiny_dir), lora_config(section), plan={0: {0: 4}})
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any(trained_name in n for n in trainable), trainable[:6]
    assert any("lora_gate_up_A" in n for n in trainable)


def test_frozen_router_has_no_trainable_router_parameters(tiny_dir):
    model = wrap(tiny_moe(tiny_dir), lora_config(LoraSection()), plan={0: {0: 4}})
    assert not [n for n, p in model.named_parameters() if p.requires_grad and ".gate." in n]


def test_profile_experts_command(tmp_path, tiny_dir, capsys):
    code = main(
        [
            "profile-experts",
            "recipes/tiny-mixtral/pipeline.yaml",
            f"model.name_or_path={tiny_dir}",
            "--stage",
            "dpo",
            "--max-tokens",
            "1500",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    profile = json.loads((tmp_path / "routing.json").read_text())
    assert 1500 <= profile["tokens"] < 1500 + 8 * 256 and len(profile["layers"]) == 2
    assert all(abs(sum(layer["token_share"]) - 1) < 1e-6 for layer in profile["layers"])
    assert (tmp_path / "routing.png").exists() and "imbalance" in out


def test_dpo_reference_is_a_frozen_copy_of_the_routed_sft_adapter(top_p_run, tiny_dir, tmp_path):
    from trl import DPOConfig, DPOTrainer

    from align.config.schema import ModelSection, QuantizationSection
    from align.data import DataSource, StageData, load_stage
    from align.model import load_model, load_tokenizer
    from align.moe.adapters import load_routed
    from align.runtime import Runtime

    section = ModelSection(name_or_path=str(tiny_dir))
    model = load_routed(load_model(section, QuantizationSection(), Runtime("cpu", torch.float32)), top_p_run / "sft")
    data = load_stage(
        StageData(train=[DataSource(path="data/prefs/train.jsonl", max_rows=8)]),
        "preference",
        seed=0,
        allow_system=False,
        log=lambda _m: None,
    )
    args = DPOConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        bf16=False,
        max_steps=1,
        report_to="none",
        per_device_train_batch_size=4,
        gradient_checkpointing=True,
    )
    trainer = DPOTrainer(model=model, args=args, train_dataset=data.train, processing_class=load_tokenizer(section))
    params = dict(trainer.model.named_parameters())
    routed = [n for n in params if "lora_gate_up_A.default." in n]
    assert routed
    for name in routed:
        ref = params[name.replace(".default.", ".ref.")]
        assert torch.equal(ref, params[name]) and not ref.requires_grad
    trainer.train()  # one step with gradient checkpointing through the routed layer
    for name in routed:
        assert not torch.equal(params[name.replace(".default.", ".ref.")], params[name])  # policy moved, ref did not


def test_explicit_selection_out_of_range_is_a_user_error(tmp_path, tiny_dir, capsys):
    code = main(
        [
            "sft",
            "recipes/tiny-mixtral/sft.yaml",
            f"output_dir={tmp_path}",
            f"model.name_or_path={tiny_dir}",
            "lora.experts={0: [9]}",
            "sft.max_steps=1",
        ]
    )
    assert code == 2
    assert "lora.experts: explicit expert selection out of range" in capsys.readouterr().err
