"""The memory planner: exact parameter counts, how each setting moves the estimate, and the report (no weights)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from align.config.schema import LoraSection, Recipe, StageSection
from align.errors import RecipeError
from align.plan import (
    LoraShape,
    Parallel,
    Quant,
    StageInput,
    Workload,
    activations,
    active_params,
    estimate,
    load_model_shape,
    param_counts,
    plan_command,
    shape_from_config,
)
from align.plan.distributed import parallel_from
from align.plan.levers import levers
from align.plan.recipe_input import expert_plan_summary, stage_inputs
from align.plan.units import GIB, parse_size

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "mixtral-8x7b" / "pipeline_qlora.yaml"
MULTI_GPU = str(ROOT / "accelerate_configs" / "multi_gpu.yaml")
ZERO3 = str(ROOT / "accelerate_configs" / "deepspeed_zero3.yaml")
MIXTRAL = "mistralai/Mixtral-8x7B-v0.1"
TINY = {
    "model_type": "mixtral",
    "vocab_size": 32000,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_local_experts": 8,
    "num_experts_per_tok": 2,
}


def fast_recipe(path: Path = RECIPE, **changes) -> Recipe:
    """A shipped recipe as a Recipe without the TRL import (trainer keys moved as the loader moves them)."""
    raw = yaml.safe_load(path.read_text())
    own = set(StageSection.model_fields) - {"trainer"}
    for stage in ("sft", "dpo"):
        section = raw.get(stage) or {}
        trainer = {k: v for k, v in section.items() if k not in own}
        raw[stage] = {**{k: v for k, v in section.items() if k in own}, "trainer": trainer}
    for dotted, value in changes.items():
        node = raw
        *parents, last = dotted.split("__")
        for part in parents:
            node = node[part]
        node[last] = value
    return Recipe.model_validate(raw)


def stage(quant: bool = False, parallel: Parallel | None = None, **work) -> StageInput:
    """The 8x7B SFT stage of the shipped recipe, with overrides."""
    m = load_model_shape(MIXTRAL)
    lora = LoraShape(32, expert_rank_sum=m.layers * m.experts * 32)
    base = {"sequences": 2, "seq_len": 2048, "gradient_checkpointing": True}
    w = Workload(**{**base, **work}, quantized_experts=quant)
    return StageInput("sft", m, lora, w, parallel or Parallel(), 2, Quant() if quant else None)


def row(est, name: str):
    return next(r for r in est.rows if r.name == name)


def test_mixtral_8x7b_parameter_count_is_exact():
    m = load_model_shape(MIXTRAL)
    assert param_counts(m).total == 46_702_792_704
    assert abs(param_counts(m).total / 46.7e9 - 1) < 0.005
    assert abs(active_params(m) / 12.9e9 - 1) < 0.005
    assert replace(load_model_shape("mistralai/Mixtral-8x7B-Instruct-v0.1"), name="") == replace(m, name="")
    assert abs(param_counts(load_model_shape("mistralai/Mixtral-8x22B-v0.1")).total / 141e9 - 1) < 0.005


def test_tiny_config_count_matches_transformers(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    # sum(p.numel()) of MixtralForCausalLM(align.tiny.tiny_config()), computed once with transformers 5.24
    assert param_counts(load_model_shape(str(tmp_path))).total == 4_515_136


def test_config_errors():
    with pytest.raises(RecipeError, match="not a hub id the planner knows"):
        load_model_shape("someone/unknown-model")
    with pytest.raises(RecipeError, match="model_type"):
        shape_from_config({**TINY, "model_type": "llama"})
    with pytest.raises(RecipeError, match="lacks"):
        shape_from_config({k: v for k, v in TINY.items() if k != "hidden_size"})


def test_four_bit_shrinks_the_experts():
    full, quant = estimate(stage()), estimate(stage(quant=True))
    assert row(quant, "experts").gpu / row(full, "experts").gpu == pytest.approx(Quant().bytes_per_param / 2)
    assert row(quant, "embeddings").gpu == row(full, "embeddings").gpu  # stays 16-bit
    assert 0.5 < Quant().bytes_per_param < 0.52 < Quant(double_quant=False).bytes_per_param


def test_zero3_divides_sharded_parts_by_gpus():
    one = estimate(stage(parallel=Parallel("zero", 1, 1, 3)))
    eight = estimate(stage(parallel=Parallel("zero", 8, 8, 3)))
    for name in ("experts", "attention", "LoRA (trainable)", "gradients", "optimizer states"):
        assert row(eight, name).gpu == pytest.approx(row(one, name).gpu / 8)
    assert row(eight, "saved for backward").gpu == row(one, "saved for backward").gpu
    ddp = estimate(stage(parallel=Parallel("ddp", 8, 8)))
    assert row(ddp, "experts").gpu == row(one, "experts").gpu  # full replica


def test_offload_moves_optimizer_to_cpu():
    on_gpu = estimate(stage(parallel=Parallel("zero", 8, 8, 3)))
    offloaded = estimate(stage(parallel=Parallel("zero", 8, 8, 3, offload_optimizer=True)))
    assert row(offloaded, "optimizer states").gpu == 0
    assert offloaded.cpu_total == pytest.approx(8 * row(on_gpu, "optimizer states").gpu)  # 8 GPUs per node


def test_gradient_checkpointing_lowers_activations():
    on, off = estimate(stage(gradient_checkpointing=True)), estimate(stage(gradient_checkpointing=False))
    assert on.acts.peak < off.acts.peak / 5
    assert on.acts_other == off.acts


def test_dpo_needs_more_than_sft_for_the_same_batch():
    recipe = fast_recipe(sft__trainer__max_length=1024, sft__trainer__per_device_train_batch_size=1)
    inputs, _ = stage_inputs(recipe, Parallel())
    sft, dpo = (estimate(s) for s in inputs)
    assert (sft.stage.work.seq_len, dpo.stage.work.seq_len) == (1024, 1024)
    assert dpo.stage.work.sequences == 2 * sft.stage.work.sequences
    assert dpo.acts.peak > 1.5 * sft.acts.peak
    assert dpo.gpu_total > sft.gpu_total


def test_activation_formula_parts():
    m = shape_from_config(TINY)
    lora = LoraShape(16, expert_rank_sum=2 * 8 * 16)
    cpu = Workload(4, 512, False, 4, 4, "cpu")
    assert activations(m, lora, cpu).peak > activations(m, lora, replace(cpu, device="cuda")).peak  # torch tiles
    no_experts = replace(lora, expert_rank_sum=0)
    assert activations(m, no_experts, cpu).per_layer < activations(m, lora, cpu).per_layer


def test_expert_policies():
    m = load_model_shape(MIXTRAL)
    assert expert_plan_summary(LoraSection(r=8), m)[:2] == (32 * 8 * 8, 1.0)
    assert expert_plan_summary(LoraSection(r=8, experts={"top_k_per_layer": 2}), m)[:2] == (32 * 2 * 8, 0.375)
    assert expert_plan_summary(LoraSection(r=8, experts={0: [1, 2]}), m)[0] == 2 * 8
    ranks, _, note = expert_plan_summary(LoraSection(r=8, experts={"top_p": 0.5}), m)
    assert ranks == 32 * 8 * 8 and "routing profile" in note


def test_routing_profile_sizes_top_p(tmp_path):
    m = shape_from_config(TINY)
    row = [0.4, 0.3, 0.1, 0.1, 0.05, 0.05, 0.0, 0.0]
    profile = tmp_path / "routing.json"
    profile.write_text(json.dumps({"num_experts": 8, "top_k": 2, "tokens": 10, "layers": [{"token_share": row}] * 2}))
    section = LoraSection(r=8, experts={"top_p": 0.6}, routing_profile=str(profile))
    assert expert_plan_summary(section, m) == (2 * 2 * 8, pytest.approx(0.7), "")
    profile.write_text(json.dumps({"layers": [{"token_share": row}]}))
    with pytest.raises(RecipeError, match="profile"):
        expert_plan_summary(section, m)


def test_verdict_flips_and_names_a_lever():
    recipe = fast_recipe()
    assert "OVERALL: FITS" in plan_command(recipe, MULTI_GPU, None, "80GiB")
    small = plan_command(recipe, MULTI_GPU, None, "24GiB")
    assert "OVERALL: DOES NOT FIT" in small and "BIGGEST LEVER: " in small
    bf16 = fast_recipe(quantization__load_in_4bit=False)
    report = plan_command(bf16, None, None, "80GiB")
    assert "DOES NOT FIT" in report and "BIGGEST LEVER: 4-bit experts" in report
    no_gc = stage(quant=True, gradient_checkpointing=False)
    assert levers(no_gc, 40 * GIB)[0].action.startswith("turn on gradient checkpointing")


def test_large_eval_batch_is_the_peak():
    recipe = fast_recipe(sft__trainer__per_device_eval_batch_size=32)
    report = plan_command(recipe, MULTI_GPU, None, "40GiB")
    assert "(the stage's peak)" in report and "DOES NOT FIT" in report
    assert "lower sft.per_device_eval_batch_size to 8" in report
    assert "DOES NOT FIT" not in plan_command(fast_recipe(), MULTI_GPU, None, "40GiB")


def test_shipped_recipe_with_shipped_accelerate_configs():
    recipe = fast_recipe()
    for config, layout in ((MULTI_GPU, "8 GPUs, DDP"), (ZERO3, "8 GPUs, DeepSpeed ZeRO-3"), (None, "1 GPU")):
        report = plan_command(recipe, config, None, None)
        assert layout in report and "== SFT" in report and "== DPO" in report and "GPU memory 80 GiB" in report
    assert "ZeRO-3 gathered layers" in plan_command(recipe, ZERO3, None, None)


def test_layout_and_size_inputs(tmp_path):
    cpu_zero3 = parallel_from(str(ROOT / "accelerate_configs" / "cpu_zero3.yaml"), None)
    assert (cpu_zero3.kind, cpu_zero3.zero_stage, cpu_zero3.gpus, cpu_zero3.bf16_master) == ("zero", 3, 2, False)
    assert parallel_from(MULTI_GPU, 4).gpus == 4
    assert parallel_from(None, None).kind == "single"
    assert parse_size("80GiB") == 80 * GIB and parse_size("40GB") == 40e9 and parse_size("141 GiB") == 141 * GIB
    for bad in ("eighty", "80XB", "0GiB"):
        with pytest.raises(RecipeError):
            parse_size(bad)
    with pytest.raises(RecipeError):
        parallel_from(None, 0)
    with pytest.raises(RecipeError, match="not found"):
        parallel_from(str(tmp_path / "missing.yaml"), None)
    with pytest.raises(RecipeError, match="not a hub id"):
        plan_command(fast_recipe(model__name_or_path="someone/unknown-model"), None, None, None)
