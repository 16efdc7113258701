"""metrics.jsonl: one JSON object per logging step, with tokens/s added (a TrainerCallback seam)."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

from transformers import TrainerCallback

log = logging.getLogger("align")
# What the one-line progress report shows, when the trainer logged it.
PROGRESS_KEYS = ("loss", "aux_loss", "rewards/accuracies", "rewards/margins", "learning_rate", "tokens_per_second")


class MetricsLogger(TrainerCallback):
    """Appends every trainer log (loss, aux_loss, rewards/*, lr, ...) to a jsonl file on the main process."""

    def __init__(self, path: Path, stage: str):
        self.path = Path(path)
        self.stage = stage
        self._last: tuple[float, float] | None = None  # (time, num_tokens) at the previous log

    def on_train_begin(self, args, state, control, **kwargs):
        self._last = (time.perf_counter(), 0.0)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"stage": self.stage, "step": state.global_step, "epoch": state.epoch}
        record.update({k: _clean(v) for k, v in logs.items()})
        now = time.perf_counter()
        tokens = logs.get("num_tokens")
        if tokens is not None and self._last is not None and "loss" in logs:
            then, before = self._last
            if now > then and tokens >= before:
                record["tokens_per_second"] = (tokens - before) / (now - then)
            self._last = (now, float(tokens))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        every = max(1, state.max_steps // 10)
        if "loss" in logs and (state.global_step % every == 0 or state.global_step == state.max_steps):
            shown = " ".join(f"{k.split('/')[-1]} {_short(record[k])}" for k in PROGRESS_KEYS if k in record)
            log.info("%s step %d/%d  %s", self.stage, state.global_step, state.max_steps, shown)


def _clean(value):
    """JSON-safe numbers: NaN/Inf become strings so the file stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
