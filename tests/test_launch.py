"""`accelerate launch` with 2 CPU processes really runs 2 synchronised ranks (DDP over gloo)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.slow

SMALL_DATA = [
    "data.sft.train=[{path: data/sft/train.jsonl, max_rows: 64}]",
    "data.sft.eval=[{path: data/sft/eval.jsonl, max_rows: 16}]",
    "data.dpo.train=[{path: data/prefs/train.jsonl, max_rows: 64}]",
    "data.dpo.eval=[{path: data/prefs/eval.jsonl, max_rows: 16}]",
    "sft.ddp_timeout=300",
    "dpo.ddp_timeout=300",
]


def launch(config: str, port: int, tmp_path, repo_root, tiny_dir) -> dict:
    """`accelerate launch` the tiny pipeline on 2 CPU processes with 64-row data; returns summary.json."""
    accelerate = shutil.which("accelerate") or pytest.skip("accelerate CLI not on PATH")
    cmd = [
        accelerate, "launch", "--config_file", config, "--main_process_port", str(port),
        "-m", "align", "run", "recipes/tiny-mixtral/pipeline.yaml", f"output_dir={tmp_path}",
        f"model.name_or_path={tiny_dir}", "model.create_tiny_if_missing=false",
        # global batch 2 ranks x 4 = the single-process recipe's 8
        "sft.per_device_train_batch_size=4", "dpo.per_device_train_batch_size=4", *SMALL_DATA,
    ]  # fmt: skip
    cache = os.path.expanduser("~/.cache/align/torch_extensions")  # DeepSpeed's JIT-built ops, built once
    env = {"TORCH_EXTENSIONS_DIR": cache, **os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=1500, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((tmp_path / "summary.json").read_text())


def test_two_process_run_takes_the_single_process_number_of_steps(tmp_path, repo_root, tiny_dir):
    summary = launch("accelerate_configs/cpu_2proc.yaml", 29517, tmp_path, repo_root, tiny_dir)
    # 64 rows / global batch 8 = 8 optimizer steps per stage, as one process with batch 8 takes
    assert summary["stages"]["sft"]["steps"] == 8
    assert summary["stages"]["dpo"]["steps"] == 8
    assert summary["world_size"] == 2  # not two unsynchronised single-process runs
    assert (tmp_path / "dpo" / "adapter_model.safetensors").is_file()


def test_deepspeed_zero3_two_processes_with_routed_expert_lora(tmp_path, repo_root, tiny_dir):
    pytest.importorskip("deepspeed")
    summary = launch("accelerate_configs/cpu_zero3.yaml", 29519, tmp_path, repo_root, tiny_dir)
    assert summary["world_size"] == 2
    assert summary["stages"]["sft"]["steps"] == 8 and summary["stages"]["dpo"]["steps"] == 8
    assert summary["stages"]["sft"]["eval_loss_after"] < summary["stages"]["sft"]["eval_loss_before"]
    # the adapter was gathered from the shards: it loads in stock PEFT in this (fresh) process
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), tmp_path / "dpo")
    lora = {n: p for n, p in model.named_parameters() if ".mlp.experts." in n and "lora_B" in n}
    assert lora and all(p.abs().sum() > 0 for p in lora.values())
