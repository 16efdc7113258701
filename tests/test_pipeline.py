"""End to end: the real `align run` on the shipped tiny recipe, as a user runs it (a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.slow

RECIPE = "recipes/tiny-mixtral/pipeline.yaml"


@pytest.fixture(scope="module")
def run(tmp_path_factory, repo_root):
    """One default pipeline run (builds its own tiny backbone), shared by the tests below."""
    out = tmp_path_factory.mktemp("pipeline")
    cmd = [sys.executable, "-m", "align", "run", RECIPE, f"output_dir={out}", f"model.name_or_path={out}/tiny-base"]
    proc = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, proc


def read_json(path):
    return json.loads(path.read_text())


def test_outputs_have_the_documented_layout(run):
    out, proc = run
    for stage in ("sft", "dpo"):
        names = {p.name for p in (out / stage).iterdir()}
        assert {
            "adapter_config.json",
            "adapter_model.safetensors",
            "tokenizer_config.json",
            "chat_template.jinja",
            "recipe.yaml",
            "metrics.jsonl",
            "eval.json",
        } <= names
        assert "training_args.bin" not in names and "ref" not in names  # no pickles, no reference copy
    assert not list(out.glob(".*.tmp"))
    assert f"outputs: {out}" in proc.stdout and "held-out reward accuracy" in proc.stdout


def test_sft_held_out_loss_falls(run):
    ev = read_json(run[0] / "sft" / "eval.json")
    assert ev["eval_loss_after"] < ev["eval_loss_before"] - 0.1, ev
    assert ev["steps"] == 50  # 400 rows / batch 8, one epoch


def test_dpo_held_out_reward_accuracy_rises_to_at_least_0_8(run):
    ev = read_json(run[0] / "dpo" / "eval.json")
    assert ev["reward_accuracy_before"] == 0.5  # policy == reference (frozen SFT adapter) before DPO
    assert ev["reward_accuracy_after"] > ev["reward_accuracy_before"]
    assert ev["reward_accuracy_after"] >= 0.8, ev
    assert ev["reward_margin_after"] > 0 and ev["reference"] == "sft adapter (frozen)"


def test_metrics_jsonl_has_one_record_per_logging_step(run):
    for stage, keys in (("sft", {"loss", "aux_loss"}), ("dpo", {"loss", "aux_loss", "rewards/accuracies"})):
        records = [json.loads(x) for x in (run[0] / stage / "metrics.jsonl").read_text().splitlines()]
        steps = [r for r in records if "loss" in r]
        assert len(steps) == read_json(run[0] / stage / "eval.json")["steps"]
        assert all(keys | {"learning_rate", "tokens_per_second", "step"} <= set(r) for r in steps)
        assert all(r["tokens_per_second"] > 0 for r in steps)


def test_adapter_loads_with_stock_peft_and_changes_the_model(run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = run[0]
    base = AutoModelForCausalLM.from_pretrained(out / "tiny-base", dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(out / "dpo")
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 3?"}],
        return_tensors="pt",
        add_generation_prompt=True,
        return_dict=True,
    )["input_ids"]
    with torch.no_grad():
        before = base(ids).logits
        model = PeftModel.from_pretrained(base, out / "dpo")
        after = model(ids).logits
    assert (after - before).abs().max() > 1e-3
    config = read_json(out / "dpo" / "adapter_config.json")
    assert set(config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert set(config["target_parameters"]) == {"mlp.experts.gate_up_proj", "mlp.experts.down_proj"}


def test_saved_recipe_reloads(run):
    from align.config import load_recipe

    recipe = load_recipe(run[0] / "dpo" / "recipe.yaml")
    assert recipe.dpo.trainer["beta"] == 0.1 and recipe.output_dir == str(run[0])
