"""NaN/Inf guard: a TrainerCallback that stops a stage before a non-finite update, or skips that update.

Checked just before each optimizer step (gradients are already all-reduced under DDP, so every rank sees
the same verdict) and on the trainable weights right after it. `stop` raises TrainingError before the
bad update is applied, so the weights and every checkpoint already written stay finite. `skip` drops the
step's gradients (AdamW leaves parameters without a gradient untouched: no moment update either), counts
it in metrics.jsonl as `nonfinite_skipped`, and stops after `max_nonfinite_skips`.

Transformers' `logging_nan_inf_filter` (on by default) replaces a NaN loss in the logs by the running
mean, so the logged loss alone never shows the fault: the gradients do. Under DeepSpeed the gradients
live in the engine's partitions, not on the parameters: there only the post-step weight check applies.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import TrainerCallback

from align.errors import TrainingError
from align.stages.resume import latest_checkpoint

log = logging.getLogger("align")


def nonfinite(tensors: list[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of the tensors holding NaN or Inf."""
    return [name for name, t in tensors if t.numel() and not bool(torch.isfinite(t).all())]


class NonFiniteGuard(TrainerCallback):
    """Stops (or skips) a training step whose gradients are NaN/Inf; stops when the weights become NaN/Inf."""

    def __init__(self, stage: str, policy: str, max_skips: int, work_dir: Path):
        self.stage = stage
        self.policy = policy
        self.max_skips = max_skips
        self.work_dir = Path(work_dir)
        self.skipped = 0

    def on_train_begin(self, args, state, control, **kwargs):
        # on resume the count continues from the restored log history
        counts = [r["nonfinite_skipped"] for r in state.log_history if "nonfinite_skipped" in r]
        self.skipped = int(counts[-1]) if counts else 0

    def _stop(self, step: int, what: str) -> TrainingError:
        good, _ = latest_checkpoint(self.work_dir)
        kept = f"last good checkpoint: {good} (continue with --resume)" if good else "no checkpoint was saved yet"
        return TrainingError(
            f"{self.stage} step {step}: {what}; stopped before that update ({kept}). Fix: lower "
            f"{self.stage}.learning_rate or set {self.stage}.max_grad_norm, check the data, or set "
            f"{self.stage}.on_nonfinite: skip"
        )

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if model is None:
            return
        grads = [(n, p.grad) for n, p in model.named_parameters() if p.requires_grad and p.grad is not None]
        bad = nonfinite(grads)
        if not bad:
            return
        step = state.global_step + 1
        what = f"NaN/Inf gradients in {len(bad)} of {len(grads)} trainable tensors (e.g. {bad[0]})"
        if self.policy == "stop":
            raise self._stop(step, what)
        self.skipped += 1
        if self.skipped > self.max_skips:
            raise self._stop(step, f"{what}, and {self.skipped} updates skipped (max_nonfinite_skips)")
        for _, p in model.named_parameters():
            p.grad = None
        log.warning("%s step %d: %s: update skipped (%d so far)", self.stage, step, what, self.skipped)

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        if model is None:
            return
        bad = nonfinite([(n, p.detach()) for n, p in model.named_parameters() if p.requires_grad])
        if bad:
            raise TrainingError(
                f"{self.stage} step {state.global_step + 1}: the update made {len(bad)} trainable tensors NaN/Inf "
                f"(e.g. {bad[0]}); nothing after the last checkpoint in {self.work_dir} is kept. Fix: lower "
                f"{self.stage}.learning_rate or set {self.stage}.max_grad_norm"
            )

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and "loss" in logs:
            logs["nonfinite_skipped"] = self.skipped
