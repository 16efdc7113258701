"""`accelerate launch` with 2 CPU processes: real DDP and DeepSpeed ZeRO-3 ranks, checked against one process.

Invariant: 2 ranks x micro-batch 4 train on the same rows, in the same optimizer steps, as one process with
batch 8, so the per-step losses and the final adapter must match the single-process run's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
import torch

from align.stages.shards import combined_fingerprint

pytestmark = pytest.mark.slow

SMALL_DATA = [
    "data.sft.train=[{path: data/sft/train.jsonl, max_rows: 64}]",
    "data.sft.eval=[{path: data/sft/eval.jsonl, max_rows: 16}]",
    "data.dpo.train=[{path: data/prefs/train.jsonl, max_rows: 64}]",
    "data.dpo.eval=[{path: data/prefs/eval.jsonl, max_rows: 16}]",
    "sft.logging_steps=1",
    "dpo.logging_steps=1",
    # The router's load-balancing loss is not additive over a batch (it multiplies batch means), so ranks
    # computing it on their half give a slightly different gradient than one process on the whole batch
    # (measured: DPO losses drift 4e-3 apart by step 8). Without it the invariant is exact up to fp32 sums.
    "model.router_aux_loss_coef=0.0",
]
DIST = ["sft.ddp_timeout=300", "dpo.ddp_timeout=300", "sft.per_device_train_batch_size=4",
        "dpo.per_device_train_batch_size=4"]  # fmt: skip


def pipeline_args(out, tiny_dir) -> list[str]:
    return [
        "run", "recipes/tiny-mixtral/pipeline.yaml", f"output_dir={out}", f"model.name_or_path={tiny_dir}",
        "model.create_tiny_if_missing=false", *SMALL_DATA,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def single(tmp_path_factory, repo_root, tiny_dir):
    """The same pipeline in one process with the global batch (8): the reference run."""
    out = tmp_path_factory.mktemp("single")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = ["python", "-m", "align", *pipeline_args(out, tiny_dir)]
    proc = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def losses(out, stage: str) -> list[float]:
    rows = [json.loads(line) for line in (out / stage / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r and r["stage"] == stage]


def adapter_logits(tiny_dir, adapter) -> torch.Tensor:
    """Logits of the base + saved adapter, loaded with stock PEFT (routed experts are saved in stock format)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), adapter).eval()
    ids = torch.arange(1, 33).reshape(2, 16) * 97 % 32000
    with torch.no_grad():
        return model(input_ids=ids).logits


def assert_matches_single_process(out, single, tiny_dir) -> None:
    summary = json.loads((out / "summary.json").read_text())
    reference = json.loads((single / "summary.json").read_text())
    assert summary["world_size"] == 2  # not two unsynchronised single-process runs
    for stage in ("sft", "dpo"):
        # 64 rows / global batch 8 = 8 optimizer steps, as one process with batch 8 takes
        assert summary["stages"][stage]["steps"] == reference["stages"][stage]["steps"] == 8
        shards = summary["stages"][stage]["data_shards"]
        assert [s["rank"] for s in shards] == [0, 1]
        assert shards[0]["fingerprint"] != shards[1]["fingerprint"]  # every rank saw different data ...
        assert all(s["sequences"] > 0 for s in shards)
        (whole,) = reference["stages"][stage]["data_shards"]
        assert combined_fingerprint(shards) == whole["fingerprint"]  # ... and together the same rows as 1 process
        got, want = losses(out, stage), losses(single, stage)
        assert len(got) == len(want) == 8
        assert got == pytest.approx(want, rel=1e-4, abs=1e-4), (stage, got, want)
    a, b = adapter_logits(tiny_dir, out / "dpo"), adapter_logits(tiny_dir, single / "dpo")
    assert ((a - b).norm() / b.norm()).item() < 1e-4


def launch(config: str, port: int, out, repo_root, tiny_dir, extra=()) -> dict:
    """`accelerate launch` the tiny pipeline on 2 CPU processes (2 x 4 = the single run's batch 8)."""
    accelerate = shutil.which("accelerate") or pytest.skip("accelerate CLI not on PATH")
    cmd = [accelerate, "launch", "--config_file", config, "--main_process_port", str(port), "-m", "align",
           *pipeline_args(out, tiny_dir), *DIST, *extra]  # fmt: skip
    cache = os.path.expanduser("~/.cache/align/torch_extensions")  # DeepSpeed's JIT-built ops, built once
    env = {"TORCH_EXTENSIONS_DIR": cache, **os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=1500, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "summary.json").read_text())


def test_ddp_two_processes_match_one_process(tmp_path, repo_root, tiny_dir, single):
    launch("accelerate_configs/cpu_2proc.yaml", 29517, tmp_path, repo_root, tiny_dir)
    assert_matches_single_process(tmp_path, single, tiny_dir)


def test_deepspeed_zero3_two_processes_match_one_process(tmp_path, repo_root, tiny_dir, single):
    pytest.importorskip("deepspeed")
    summary = launch("accelerate_configs/cpu_zero3.yaml", 29519, tmp_path, repo_root, tiny_dir)
    assert summary["stages"]["sft"]["eval_loss_after"] < summary["stages"]["sft"]["eval_loss_before"]
    assert_matches_single_process(tmp_path, single, tiny_dir)
    # the adapter was gathered from the shards: every expert's LoRA trained and was saved
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), tmp_path / "dpo")
    lora = {n: p for n, p in model.named_parameters() if ".mlp.experts." in n and "lora_B" in n}
    assert lora and all(p.abs().sum() > 0 for p in lora.values())
