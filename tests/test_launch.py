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


def test_two_process_run_takes_the_single_process_number_of_steps(tmp_path, repo_root, tiny_dir):
    accelerate = shutil.which("accelerate") or pytest.skip("accelerate CLI not on PATH")
    cmd = [
        accelerate,
        "launch",
        "--config_file",
        "accelerate_configs/cpu_2proc.yaml",
        "--main_process_port",
        "29517",
        "-m",
        "align",
        "run",
        "recipes/tiny-mixtral/pipeline.yaml",
        f"output_dir={tmp_path}",
        f"model.name_or_path={tiny_dir}",
        "model.create_tiny_if_missing=false",
        # global batch 2 ranks x 4 = the single-process recipe's 8
        "sft.per_device_train_batch_size=4",
        "dpo.per_device_train_batch_size=4",
        *SMALL_DATA,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=1200, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    # 64 rows / global batch 8 = 8 optimizer steps per stage, as one process with batch 8 takes
    assert summary["stages"]["sft"]["steps"] == 8
    assert summary["stages"]["dpo"]["steps"] == 8
    assert summary["world_size"] == 2  # not two unsynchronised single-process runs
    assert (tmp_path / "dpo" / "adapter_model.safetensors").is_file()
