"""Crash and resume: kill -9 a real `align run` mid-SFT and mid-DPO, resume, and get the uninterrupted result.

The reference run and the crashed-then-resumed run use the same recipe and seed in fp32; the final adapters
must be equal tensor for tensor and metrics.jsonl must log the same losses at every step.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from align.stages.resume import checkpoint_problem, latest_checkpoint, recipe_changes, training_loss, trim_metrics

SMALL = [
    "recipes/tiny-mixtral/pipeline.yaml",
    "model.create_tiny_if_missing=false",
    "data.sft.train=[{path: data/sft/train.jsonl, max_rows: 32}]",
    "data.sft.eval=[{path: data/sft/eval.jsonl, max_rows: 4}]",
    "data.dpo.train=[{path: data/prefs/train.jsonl, max_rows: 24}]",
    "data.dpo.eval=[{path: data/prefs/eval.jsonl, max_rows: 4}]",
    "sft.per_device_train_batch_size=4",  # 8 SFT steps, 6 DPO steps
    "dpo.per_device_train_batch_size=4",
    "sft.max_length=128",
    "dpo.max_length=128",
    "lora.profile_max_tokens=2000",
    "sft.save_strategy=steps",
    "sft.save_steps=2",
    "dpo.save_strategy=steps",
    "dpo.save_steps=2",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def align_cmd(out: Path, tiny: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "align", "run", *SMALL, f"output_dir={out}", f"model.name_or_path={tiny}", *extra]


def run_to_end(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def kill_when(cmd: list[str], cwd: Path, ready: Path, log: Path) -> None:
    """Start `cmd`, wait until the file `ready` exists, then SIGKILL the process (no cleanup runs)."""
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=sink, stderr=subprocess.STDOUT, env=ENV)
        deadline = time.monotonic() + 500
        while not ready.exists():
            assert proc.poll() is None, f"finished before {ready} appeared:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "timed out waiting for a checkpoint"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL


def losses(stage_dir: Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in records if "loss" in r]


def assert_same_adapter(a: Path, b: Path) -> None:
    from safetensors.torch import load_file

    ta, tb = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
    assert ta.keys() == tb.keys() and len(ta) > 0
    worst = max((ta[k] - tb[k]).abs().max().item() for k in ta)
    assert worst <= 1e-6, f"{a} and {b} differ by {worst}"


@pytest.mark.slow
def test_kill_9_mid_sft_and_mid_dpo_then_resume_equals_uninterrupted(tmp_path, tiny_dir, repo_root):
    ref, crash = tmp_path / "ref", tmp_path / "crash"
    run_to_end(align_cmd(ref, tiny_dir), repo_root)

    # 1. killed mid-SFT, right after checkpoint-4 of 8 is complete (trainer_state.json is written last)
    kill_when(align_cmd(crash, tiny_dir), repo_root, crash / "checkpoints/sft/checkpoint-4/trainer_state.json",
              tmp_path / "1.log")  # fmt: skip
    assert not (crash / "sft").exists()  # nothing that looks finished
    # 2. resumed with --resume, killed again mid-DPO after its checkpoint-2 of 6
    kill_when(align_cmd(crash, tiny_dir, "--resume"), repo_root,
              crash / "checkpoints/dpo/checkpoint-2/trainer_state.json", tmp_path / "2.log")  # fmt: skip
    second = (tmp_path / "2.log").read_text()
    assert "sft: resuming from" in second and "checkpoints/sft/checkpoint-" in second
    assert (crash / "sft" / "adapter_model.safetensors").is_file() and not (crash / "dpo").exists()
    # 3. resumed again via the recipe key: SFT is skipped (verified), DPO continues
    proc = run_to_end(align_cmd(crash, tiny_dir, "resume=true"), repo_root)
    assert "sft: complete in" in proc.stderr and "skipped" in proc.stderr
    assert "dpo: resuming from" in proc.stderr

    for stage, steps in (("sft", 8), ("dpo", 6)):
        assert_same_adapter(ref / stage, crash / stage)
        expected, got = losses(ref / stage), losses(crash / stage)
        assert [s for s, _ in got] == list(range(1, steps + 1))  # each step logged once, none lost or doubled
        assert [s for s, _ in expected] == [s for s, _ in got]
        assert max(abs(a - b) for (_, a), (_, b) in zip(expected, got, strict=True)) <= 1e-6
        ref_eval, crash_eval = (json.loads((d / stage / "eval.json").read_text()) for d in (ref, crash))
        assert crash_eval["train_loss"] == pytest.approx(ref_eval["train_loss"], abs=1e-6)
    summary = json.loads((crash / "summary.json").read_text())
    assert summary["stages"]["sft"]["skipped"] == "complete"


def test_resume_with_a_changed_recipe_is_refused(tmp_path):
    from align.config import recipe_from_dict
    from align.errors import RecipeError
    from align.stages.resume import prepare_stage

    raw = {
        "model": {"name_or_path": "m"},
        "data": {"sft": {"train": [{"path": "a.jsonl"}]}},
        "stages": ["sft"],
        "output_dir": str(tmp_path),
    }
    work = tmp_path / "checkpoints" / "sft"
    first = recipe_from_dict({**raw, "sft": {"learning_rate": 1e-3}})
    assert prepare_stage(first, "sft", tmp_path / ".sft.tmp", work, True) is None
    fake_checkpoint(work / "checkpoint-2", 2)
    same = recipe_from_dict({**raw, "sft": {"learning_rate": 1e-3, "save_steps": 5}, "resume": True})
    assert prepare_stage(same, "sft", tmp_path / ".sft.tmp", work, True) == work / "checkpoint-2"
    changed = recipe_from_dict({**raw, "sft": {"learning_rate": 2e-3}, "resume": True})
    with pytest.raises(RecipeError, match=r"different recipe \(sft.learning_rate: 0.001 -> 0.002\)"):
        prepare_stage(changed, "sft", tmp_path / ".sft.tmp", work, True)
    # a fresh start clears the old checkpoints, so a later --resume cannot continue the wrong run
    assert prepare_stage(first, "sft", tmp_path / ".sft.tmp", work, True) is None
    assert not (work / "checkpoint-2").exists()


def fake_checkpoint(path: Path, step: int) -> Path:
    """A checkpoint dir with the files Trainer writes (tiny LoRA tensors, real torch zip files)."""
    import torch
    from safetensors.torch import save_file

    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2}))
    save_file({"x.lora_A.weight": torch.ones(2, 3), "x.lora_B.weight": torch.zeros(3, 2)},
              path / "adapter_model.safetensors")  # fmt: skip
    torch.save({}, path / "optimizer.pt")
    torch.save({}, path / "scheduler.pt")
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    return path


def test_latest_checkpoint_skips_interrupted_and_corrupt_saves(tmp_path):
    good = fake_checkpoint(tmp_path / "checkpoint-2", 2)
    no_state = fake_checkpoint(tmp_path / "checkpoint-4", 4)
    (no_state / "trainer_state.json").unlink()  # killed before the trainer state (written last)
    truncated = fake_checkpoint(tmp_path / "checkpoint-6", 6)
    data = (truncated / "adapter_model.safetensors").read_bytes()
    (truncated / "adapter_model.safetensors").write_bytes(data[: len(data) - 8])
    nan = fake_checkpoint(tmp_path / "checkpoint-8", 8)
    import torch
    from safetensors.torch import save_file

    save_file({"x.lora_A.weight": torch.full((2, 3), float("nan"))}, nan / "adapter_model.safetensors")
    torn_opt = fake_checkpoint(tmp_path / "checkpoint-10", 10)
    (torn_opt / "optimizer.pt").write_bytes(b"PK\x03\x04 torn")
    assert checkpoint_problem(good) is None
    found, rejected = latest_checkpoint(tmp_path)
    assert found == good
    reasons = {p.name: why for p, why in rejected}
    assert "trainer_state.json" in reasons["checkpoint-4"]
    assert "cannot be read" in reasons["checkpoint-6"]
    assert "NaN/Inf" in reasons["checkpoint-8"]
    assert "optimizer.pt" in reasons["checkpoint-10"]


def test_a_deepspeed_checkpoint_is_recognised_by_its_engine_state(tmp_path):
    ds = fake_checkpoint(tmp_path / "checkpoint-2", 2)
    (ds / "optimizer.pt").unlink()
    (ds / "scheduler.pt").unlink()
    (ds / "latest").write_text("global_step2")
    assert "global_step2" in checkpoint_problem(ds)  # named, but not written
    (ds / "global_step2").mkdir()
    (ds / "global_step2" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"x")
    assert checkpoint_problem(ds) is None


def test_trim_metrics_keeps_steps_up_to_the_checkpoint_and_drops_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in range(1, 6)]
    path.write_text("\n".join(lines) + '\n{"step": 6, "lo')
    assert trim_metrics(path, 3) == 3
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2, 3]


def test_training_loss_over_all_steps_from_log_history():
    history = [{"step": 2, "loss": 1.0}, {"step": 4, "loss": 3.0}, {"step": 5, "loss": 5.0}, {"step": 5, "x": 1}]
    assert training_loss(history) == pytest.approx((1 * 2 + 3 * 2 + 5 * 1) / 5)
    assert training_loss([]) is None


def test_recipe_changes_ignore_keys_the_old_recipe_did_not_have():
    old = {"sft": {"learning_rate": 1e-3}, "lora": {"r": 8}}
    new = {"sft": {"learning_rate": 1e-3, "on_nonfinite": "stop"}, "lora": {"r": 16}}
    assert recipe_changes(old, new) == ["lora.r: 8 -> 16"]


def test_a_crash_between_the_two_renames_restores_the_previous_output(tmp_path):
    import torch

    from align.stages.verify import aside, recover_previous, replace_dir, stage_dir_problem

    def stage_dir(path: Path, value: float) -> Path:
        fake_checkpoint(path, 1)
        (path / "eval.json").write_text(json.dumps({"v": value}))
        (path / "recipe.yaml").write_text("seed: 1\n")
        return path

    final = stage_dir(tmp_path / "sft", 1.0)
    new = stage_dir(tmp_path / ".sft.tmp", 2.0)
    final.rename(aside(final))  # the state after replace_dir's first rename, when the process dies
    assert not final.exists()
    recover_previous(final)
    assert json.loads((final / "eval.json").read_text()) == {"v": 1.0} and stage_dir_problem(final) is None
    replace_dir(new, final)  # a normal swap leaves only the new output
    assert json.loads((final / "eval.json").read_text()) == {"v": 2.0}
    assert not aside(final).exists() and not new.exists()
    from safetensors.torch import save_file

    save_file({"embed": torch.zeros(2)}, final / "adapter_model.safetensors")
    assert "holds no LoRA tensors" in stage_dir_problem(final)


# --- the same under `accelerate launch` with 2 CPU processes (DDP over gloo) ---

LAUNCH_ARGS = [
    "recipes/tiny-mixtral/pipeline.yaml",
    "model.create_tiny_if_missing=false",
    "stages=[sft]",
    "data.sft.train=[{path: data/sft/train.jsonl, max_rows: 24}]",
    "data.sft.eval=[]",
    "sft.per_device_train_batch_size=2",  # 2 ranks x 2 = global batch 4: 6 steps
    "lora.profile_max_tokens=1000",
    "sft.max_length=96",
    "sft.save_strategy=steps",
    "sft.save_steps=2",
    "sft.ddp_timeout=300",
]


def kill_tree(pid: int) -> None:
    """SIGKILL `pid` and every process it started (found before the first kill, so none escapes)."""
    import psutil

    parent = psutil.Process(pid)
    family = [*parent.children(recursive=True), parent]
    for process in family:
        process.send_signal(signal.SIGKILL)
    psutil.wait_procs(family, timeout=60)


def launch_cmd(out: Path, tiny: Path, port: int, *extra: str) -> list[str]:
    accelerate = shutil.which("accelerate") or pytest.skip("accelerate CLI not on PATH")
    config = ["--config_file", "accelerate_configs/cpu_2proc.yaml", "--main_process_port", str(port)]
    run = ["-m", "align", "run", *LAUNCH_ARGS, f"output_dir={out}", f"model.name_or_path={tiny}", *extra]
    return [accelerate, "launch", *config, *run]


@pytest.mark.slow
def test_two_process_launch_killed_mid_sft_resumes_to_the_uninterrupted_result(tmp_path, tiny_dir, repo_root):
    ref, crash = tmp_path / "ref", tmp_path / "crash"
    done = subprocess.run(launch_cmd(ref, tiny_dir, 29531), cwd=repo_root, capture_output=True, text=True, timeout=900,
                          env=ENV)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    ready = crash / "checkpoints" / "sft" / "checkpoint-2" / "trainer_state.json"
    with (tmp_path / "crash.log").open("w") as log:
        proc = subprocess.Popen(launch_cmd(crash, tiny_dir, 29533), cwd=repo_root, stdout=log, stderr=subprocess.STDOUT,
                                env=ENV, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 600
        while not ready.exists():
            assert proc.poll() is None, (tmp_path / "crash.log").read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        kill_tree(proc.pid)  # the launcher and both ranks (torchrun puts ranks in their own sessions)
        proc.wait(timeout=60)
    assert not (crash / "sft").exists()

    resumed = subprocess.run(launch_cmd(crash, tiny_dir, 29535, "--resume"), cwd=repo_root, capture_output=True,
                             text=True, timeout=900, env=ENV)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "sft: resuming from" in resumed.stderr
    assert_same_adapter(ref / "sft", crash / "sft")
    expected, got = losses(ref / "sft"), losses(crash / "sft")
    assert [s for s, _ in got] == list(range(1, 7)) and [s for s, _ in expected] == [s for s, _ in got]
    assert max(abs(a - b) for (_, a), (_, b) in zip(expected, got, strict=True)) <= 1e-6


def test_resume_refuses_a_checkpoint_whose_adapter_layout_differs(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import MixtralForCausalLM

    from align.errors import RecipeError
    from align.stages.resume import check_same_adapter
    from align.tiny import tiny_config

    def peft_model(targets):
        base = MixtralForCausalLM(tiny_config(64, hidden_size=16, intermediate_size=16, num_hidden_layers=1))
        return get_peft_model(base, LoraConfig(r=2, target_modules=targets))

    checkpoint = tmp_path / "checkpoint-2"
    peft_model(["q_proj", "v_proj"]).save_pretrained(checkpoint)
    check_same_adapter(peft_model(["q_proj", "v_proj"]), checkpoint, "sft")  # same layout: fine
    with pytest.raises(RecipeError, match=r"holds a different adapter \(4 tensors differ"):
        check_same_adapter(peft_model(["q_proj", "k_proj"]), checkpoint, "sft")
