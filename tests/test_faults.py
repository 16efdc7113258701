"""Fault scenarios through the real CLI (in-process): NaN/Inf losses, a full disk while saving.

Each asserts the documented promise: one-line error with exit code 2, the last good checkpoint or the
previous output intact, and `--resume` carrying on from there.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch

from align.cli import main
from align.stages.resume import checkpoint_problem

TINY_SFT = [
    "recipes/tiny-mixtral/sft.yaml",
    "model.create_tiny_if_missing=false",
    "data.sft.train=[{path: data/sft/train.jsonl, max_rows: 24}]",
    "data.sft.eval=[{path: data/sft/eval.jsonl, max_rows: 2}]",
    "sft.per_device_train_batch_size=4",  # 6 steps
    "sft.max_length=64",
    "lora.profile_max_tokens=500",
    "sft.save_strategy=steps",
    "sft.save_steps=2",
]


def sft(out: Path, tiny: Path, *extra: str) -> int:
    return main(["sft", *TINY_SFT, f"output_dir={out}", f"model.name_or_path={tiny}", *extra])


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("align: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


@pytest.fixture
def nan_at(monkeypatch):
    """Make the SFT loss NaN at the given (1-based) optimizer steps, through the real trainer."""
    from trl import SFTTrainer

    original = SFTTrainer.compute_loss

    def install(*steps: int):
        def compute_loss(self, model, inputs, *args, **kwargs):
            out = original(self, model, inputs, *args, **kwargs)
            if model.training and self.state.global_step + 1 in steps:
                loss = (out[0] if isinstance(out, tuple) else out) * float("nan")
                out = (loss, *out[1:]) if isinstance(out, tuple) else loss
            return out

        monkeypatch.setattr(SFTTrainer, "compute_loss", compute_loss)

    return install


def test_nan_loss_stops_before_the_update_then_resume_finishes(tmp_path, tiny_dir, capsys, nan_at, monkeypatch):
    nan_at(5)
    assert sft(tmp_path, tiny_dir) == 2
    line = error_line(capsys)
    work = tmp_path / "checkpoints" / "sft"
    assert "sft step 5: NaN/Inf gradients" in line and f"last good checkpoint: {work / 'checkpoint-4'}" in line
    assert "sft.on_nonfinite: skip" in line  # the fix
    assert not (tmp_path / "sft").exists() and not (tmp_path / ".sft.tmp").exists()
    assert checkpoint_problem(work / "checkpoint-4") is None  # finite, complete, resumable
    monkeypatch.undo()  # the fault is gone: resume from step 4
    assert sft(tmp_path, tiny_dir, "--resume") == 0
    assert "resuming from" in capsys.readouterr().err
    evaluation = json.loads((tmp_path / "sft" / "eval.json").read_text())
    assert evaluation["steps"] == 6
    records = [json.loads(x) for x in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]


def test_skip_policy_skips_and_counts_nonfinite_steps(tmp_path, tiny_dir, capsys, nan_at):
    nan_at(2, 3)
    assert sft(tmp_path, tiny_dir, "sft.on_nonfinite=skip", "sft.save_strategy=no") == 0
    records = [json.loads(x) for x in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    skipped = [r["nonfinite_skipped"] for r in records if "loss" in r]
    assert skipped == [0, 1, 2, 2, 2, 2]
    from safetensors.torch import load_file

    adapter = load_file(tmp_path / "sft" / "adapter_model.safetensors")
    assert all(torch.isfinite(t).all() for t in adapter.values())
    assert "update skipped" in capsys.readouterr().err


def test_too_many_skips_stop_the_stage(tmp_path, tiny_dir, capsys, nan_at):
    nan_at(2, 3)
    code = sft(tmp_path, tiny_dir, "sft.on_nonfinite=skip", "sft.max_nonfinite_skips=1")
    assert code == 2
    line = error_line(capsys)
    assert "sft step 3" in line and "2 updates skipped (max_nonfinite_skips)" in line
    assert f"last good checkpoint: {tmp_path / 'checkpoints' / 'sft' / 'checkpoint-2'}" in line


def test_skipped_update_leaves_weights_and_optimizer_state_untouched():
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from align.stages.guards import NonFiniteGuard

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.ones(1, 3)).sum().mul(float("inf")).backward()  # inf * grad -> inf/nan gradients
    guard = NonFiniteGuard("sft", "skip", 5, Path("/nonexistent"))
    args, state = TrainingArguments(output_dir="/tmp/unused", use_cpu=True), TrainerState()
    guard.on_pre_optimizer_step(args, state, TrainerControl(), model=model)
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert optimizer.state_dict()["state"] == {} and guard.skipped == 1
    stop = NonFiniteGuard("dpo", "stop", 5, Path("/nonexistent"))
    model(torch.ones(1, 3)).sum().mul(float("nan")).backward()
    from align.errors import TrainingError

    with pytest.raises(TrainingError, match="dpo step 1: NaN/Inf gradients in 2 of 2 trainable tensors"):
        stop.on_pre_optimizer_step(args, state, TrainerControl(), model=model)


def disk_full(path):
    return OSError(errno.ENOSPC, "No space left on device", str(path))


def test_disk_full_while_saving_keeps_the_previous_output(tmp_path, tiny_dir, capsys, monkeypatch):
    assert sft(tmp_path, tiny_dir, "sft.max_steps=2", "sft.save_strategy=no") == 0
    final = tmp_path / "sft"
    previous = {p.name: p.read_bytes() for p in final.iterdir() if p.is_file()}

    def full(state, path, *args, **kwargs):
        Path(path).write_bytes(b"partial")  # the disk filled halfway through the adapter file
        raise disk_full(path)

    monkeypatch.setattr("align.moe.adapters.save_file", full)
    assert sft(tmp_path, tiny_dir, "sft.max_steps=2", "sft.save_strategy=no", "sft.learning_rate=1e-3") == 2
    line = error_line(capsys)
    assert "saving the sft outputs failed: No space left on device" in line
    assert f"the previous {final} is intact" in line
    assert {p.name: p.read_bytes() for p in final.iterdir() if p.is_file()} == previous
    assert not (tmp_path / ".sft.tmp").exists() and not (tmp_path / ".sft.old").exists()


def test_disk_full_during_a_checkpoint_save_then_resume(tmp_path, tiny_dir, capsys, monkeypatch):
    real_save = torch.save

    def save(obj, path, *args, **kwargs):
        if "checkpoint-4" in str(path):
            raise disk_full(path)
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    assert sft(tmp_path, tiny_dir) == 2
    line = error_line(capsys)
    work = tmp_path / "checkpoints" / "sft"
    assert f"writing failed: No space left on device ({work / 'checkpoint-4'}" in line
    assert f"the last good checkpoint {work / 'checkpoint-2'} is intact" in line
    assert (work / "checkpoint-4").exists() and checkpoint_problem(work / "checkpoint-4") is not None
    monkeypatch.undo()
    assert sft(tmp_path, tiny_dir, "--resume") == 0
    err = capsys.readouterr().err
    assert "not resuming from" in err and "resuming from" in err and "checkpoint-2 (step 2)" in err
    assert json.loads((tmp_path / "sft" / "eval.json").read_text())["steps"] == 6
