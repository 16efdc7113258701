"""The smol-moe recipe's whole command sequence (recipes/smol-moe/run.sh) on a tiny dense Llama with a
SmolLM2-style ChatML template: upcycle -> make-prefs -> sft -> make-prefs --model -> dpo -> eval."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from align.chatml import SMOLLM2_TEMPLATE
from align.cli import main

RECIPE = "recipes/smol-moe/pipeline.yaml"
SHAPE = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


@pytest.mark.slow
def test_smol_moe_sequence_on_a_tiny_dense_llama(tmp_path, tokenizer):
    dense, base, data, out = (tmp_path / name for name in ("dense", "base", "data", "run"))
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), tie_word_embeddings=True, **SHAPE)).save_pretrained(dense)
    tokenizer.chat_template = SMOLLM2_TEMPLATE  # a session-wide fixture: restored below
    try:
        tokenizer.save_pretrained(dense)
    finally:
        from align.chat import MIXTRAL_CHAT_TEMPLATE

        tokenizer.chat_template = MIXTRAL_CHAT_TEMPLATE
    assert main(["upcycle", str(dense), "--experts", "4", "--top-k", "2", "--out", str(base)]) == 0
    assert main(["make-prefs", str(data), "--train", "8", "--eval", "4"]) == 0
    overrides = [
        f"model.name_or_path={base}",
        f"output_dir={out}",
        f"data.sft.train=[{{path: {data}/sft_train.jsonl}}]",
        f"data.sft.eval=[{{path: {data}/sft_eval.jsonl}}]",
        f"data.dpo.train=[{{path: {data}/prefs_train.jsonl}}]",
        f"data.dpo.eval=[{{path: {data}/prefs_eval.jsonl}}]",
        "sft.max_steps=2",
        "dpo.max_steps=2",
        "lora.profile_max_tokens=500",
    ]
    assert main(["sft", RECIPE, *overrides]) == 0
    sampling = ["--train", "8", "--eval", "4", "--model", str(out / "sft"), "--samples", "2"]
    assert main(["make-prefs", str(data), *sampling]) == 0
    stats = json.loads((data / "prefs_stats.json").read_text())
    assert stats["prefs_train"]["pairs"] == 8  # a random model is never right: chosen = gold, rejected = its reply
    assert main(["dpo", RECIPE, *overrides]) == 0
    held_out = ["--data", f"{data}/prefs_eval.jsonl", "--sft-data", f"{data}/sft_eval.jsonl"]
    held_out += ["--tasks", f"{data}/tasks_eval.jsonl", "--max-new-tokens", "4"]
    assert main(["eval", str(out), *held_out]) == 0
    result = json.loads((out / "eval" / "dpo" / "eval.json").read_text())
    assert result["reference"] == str(out / "sft") and result["preference"]["pairs"] == 4
    assert result["tasks"]["task_count"] == 4 and (out / "eval" / "dpo" / "curves_dpo.png").exists()
    assert "{% generation %}" in (out / "dpo" / "chat_template.jinja").read_text()  # ChatML kept, marked
