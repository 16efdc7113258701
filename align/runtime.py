"""One place decides the runtime: device, dtype and the trainer flags that follow from them."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

log = logging.getLogger("align")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Runtime:
    """Where training runs and in which dtype."""

    device: str  # "cpu" or "cuda"
    dtype: torch.dtype
    deepspeed: bool = False  # launched by `accelerate launch` with a DeepSpeed config

    @property
    def on_cpu(self) -> bool:
        return self.device == "cpu"

    @property
    def cpu_process_group(self) -> bool:
        """Whether align must start the CPU (gloo) process group itself.

        Plain DDP on CPU needs PartialState(cpu=True) / use_cpu=True, or torchrun ranks run unsynchronised
        (accelerate 1.15). Under DeepSpeed the engine owns the process group, and cpu=True would bypass it.
        """
        return self.on_cpu and not self.deepspeed

    def trainer_flags(self) -> dict[str, bool | str]:
        """TrainingArguments flags for this runtime (TRL defaults bf16=True even on CPU: never keep that)."""
        if self.on_cpu and self.deepspeed:
            # accelerate 1.15 finds no backend for DeepSpeed without a GPU and then counts ONE process
            # (train_batch_size assertion in DeepSpeed); naming gloo makes it count the real world size.
            return {"use_cpu": False, "ddp_backend": "gloo", "bf16": False, "fp16": False}
        if self.on_cpu:
            return {"use_cpu": True, "bf16": False, "fp16": False}
        # Weights already in bf16/fp16: no autocast on top; fp32 weights on GPU train with bf16 autocast
        # only when the recipe asks for it through sft.bf16 / dpo.bf16.
        return {"bf16": False, "fp16": False}


def launched_with_deepspeed() -> bool:
    """`accelerate launch` with a DeepSpeed config exports ACCELERATE_USE_DEEPSPEED=true to every rank."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def resolve_runtime(dtype: str = "auto") -> Runtime:
    """CPU -> float32 (bf16 matmul is 60-100x slower on CPUs without bf16 units); GPU -> bf16 if supported."""
    deepspeed = launched_with_deepspeed()
    if torch.cuda.is_available():
        if dtype == "auto":
            chosen = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            chosen = _DTYPES[dtype]
        return Runtime("cuda", chosen, deepspeed)
    chosen = torch.float32 if dtype == "auto" else _DTYPES[dtype]
    if chosen != torch.float32:
        log.warning("model.dtype=%s on CPU: expect training 60-100x slower than float32", dtype)
    return Runtime("cpu", chosen, deepspeed)
