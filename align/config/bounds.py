"""Value checks for TRL keys whose type alone lets nonsense through.

TRL 1.16 / transformers 5.24 accept `learning_rate: -1`, `per_device_train_batch_size: 0`, `beta: -1` or
`loss_type: [nope]` and fail later (a traceback mid-run, or silent nonsense). These checks run when the
recipe loads, so `align check` and every command refuse such values with the key, the file and the range.
"""

from __future__ import annotations

import math
from typing import Any

# Loss types DPOTrainer 1.16 implements (trl/trainer/dpo_trainer.py, the loss_type dispatch).
DPO_LOSS_TYPES = (
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot", "aot_unpaired",
    "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
)  # fmt: skip

POSITIVE_INT = (
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "max_length",
    "logging_steps",
    "save_steps",
    "eval_steps",
    "dataset_num_proc",
    "save_total_limit",
)
# key -> (low, high, low inclusive, what is typical): values outside are refused
RANGES: dict[str, tuple[float, float, bool, str]] = {
    "learning_rate": (0.0, 1.0, False, "typical 1e-6 to 1e-3"),
    "num_train_epochs": (0.0, 10_000.0, False, "a number of passes over the data"),
    "beta": (0.0, 100.0, False, "typical 0.01 to 0.5"),
    "max_grad_norm": (0.0, math.inf, True, "0 turns clipping off"),
    "weight_decay": (0.0, 1.0, True, "typical 0 to 0.1"),
    "label_smoothing": (0.0, 0.5, True, "0 to below 0.5"),
    "warmup_steps": (0.0, math.inf, True, "below 1: a fraction of the training steps"),
}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_value(key: str, value: Any) -> None:
    """ValueError (naming the allowed range) when one TRL value is out of range; None values pass."""
    if value is None or not _number(value) and key not in ("loss_type", "loss_weights"):
        return
    if _number(value) and not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value!r}")
    if key in POSITIVE_INT and (value <= 0 or int(value) != value):
        raise ValueError(f"must be a whole number above 0, got {value!r}")
    if key == "max_steps" and value != -1 and value <= 0:
        raise ValueError(f"must be -1 (use num_train_epochs) or above 0, got {value!r}")
    if key in RANGES:
        low, high, inclusive, typical = RANGES[key]
        if (value < low if inclusive else value <= low) or value >= high:
            bracket = "[" if inclusive else "("
            raise ValueError(f"must be in {bracket}{low:g}, {high:g}) ({typical}), got {value!r}")
    if key == "loss_type":
        names = [value] if isinstance(value, str) else list(value)
        unknown = [n for n in names if n not in DPO_LOSS_TYPES]
        if unknown:
            raise ValueError(f"unknown loss type {unknown[0]!r}; TRL 1.16 has {', '.join(DPO_LOSS_TYPES)}")
    if key == "loss_weights" and any(not _number(w) or w < 0 for w in value):
        raise ValueError(f"weights must be numbers >= 0, got {value!r}")


def check_section(stage: str, trainer: dict[str, Any]) -> None:
    """ValueError for combinations of one stage's TRL keys that TRL would reject only once training starts."""
    types, weights = trainer.get("loss_type"), trainer.get("loss_weights")
    if weights is not None:
        count = 1 if types is None or isinstance(types, str) else len(types)
        if len(weights) != count:
            raise ValueError(f"{stage}.loss_weights has {len(weights)} weights for {count} loss types (one each)")
    if trainer.get("fp16") and trainer.get("bf16"):
        raise ValueError(f"{stage}.fp16 and {stage}.bf16 are both true: choose one")
    if stage == "sft" and trainer.get("padding_free") and trainer.get("packing") is False:
        raise ValueError("sft.padding_free needs sft.packing: true (TRL pads otherwise)")
