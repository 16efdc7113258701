"""DPO reference log-probs computed once and kept on disk, keyed by the data and the reference weights.

The reference policy is frozen, so its log-probs of each (prompt, chosen, rejected) triple never change during
training. TRL's `precompute_ref_log_probs` computes them before training and keeps them for the run; this cache
keeps them across runs too: a rerun, a resumed run or a second DPO stage on the same data and the same reference
loads them instead of running the reference forward again. The key is a SHA-256 of
  - the tokenized rows (prompt/chosen/rejected ids, in order), max_length and truncation_mode;
  - the reference weights: every tensor of the frozen `ref` adapter, bit for bit (or "adapters disabled");
  - the base checkpoint: its config and, for a local directory, each weight file's name, size and mtime
    (hashing 90 GB of Mixtral 8x7B weights on every run would cost more than the forward it saves).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
from datasets import Dataset
from safetensors.torch import load_file, save_file

from align.stages.ref_logps import COLUMNS, attach_reference

log = logging.getLogger("align")

_ROW_FIELDS = ("prompt_ids", "chosen_ids", "rejected_ids")


def data_digest(dataset: Dataset, max_length: int | None, truncation_mode: str) -> str:
    """SHA-256 of the tokenized preference rows and the truncation that the collator applies to them."""
    h = hashlib.sha256(json.dumps({"max_length": max_length, "truncation_mode": truncation_mode}).encode())
    for batch in dataset.select_columns(list(_ROW_FIELDS)).iter(batch_size=1024):
        for row in zip(*(batch[f] for f in _ROW_FIELDS), strict=True):
            for ids in row:
                h.update(len(ids).to_bytes(4, "little"))
                h.update(torch.tensor(ids, dtype=torch.int64).numpy().tobytes())
    return h.hexdigest()


def _base_fingerprint(model) -> dict:
    config = model.config
    source = Path(str(config._name_or_path))
    files = []
    if source.is_dir():
        for path in sorted(source.glob("*.safetensors")):
            stat = path.stat()
            files.append([path.name, stat.st_size, stat.st_mtime_ns])
    return {
        "config": config.to_diff_dict(),
        "source": str(source.resolve()) if source.is_dir() else str(source),
        "commit": getattr(config, "_commit_hash", None),
        "files": files,
    }


def reference_digest(peft_model) -> str:
    """SHA-256 of what the reference forward depends on: base checkpoint + frozen `ref` adapter (if any)."""
    base = peft_model.get_base_model()
    h = hashlib.sha256(json.dumps(_base_fingerprint(base), sort_keys=True, default=str).encode())
    h.update(str(next(base.parameters()).dtype).encode())
    adapter = "ref" if "ref" in peft_model.peft_config else None
    h.update(f"adapter={adapter}".encode())
    if adapter is not None:
        for name, tensor in sorted(peft_model.state_dict().items()):
            if ".ref." in name or name.endswith(".ref"):
                h.update(name.encode())
                h.update(tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def cache_path(cache_dir: Path, name: str, data_key: str, ref_key: str) -> Path:
    key = hashlib.sha256(f"{data_key}/{ref_key}".encode()).hexdigest()
    return cache_dir / f"{name}-{key[:24]}.safetensors"


def with_reference_logps(
    dataset: Dataset,
    path: Path,
    compute: Callable[[], Dataset],
    is_main: bool,
    wait: Callable[[], None],
) -> tuple[Dataset, bool]:
    """`dataset` + the two reference columns, from `path` when it holds them, else by `compute()` (then saved).

    Returns (dataset, hit). Every rank calls this; only the main process writes (atomically: temp + rename).
    """
    if path.is_file():
        tensors = load_file(path)
        if tensors["chosen"].numel() == len(dataset):
            return attach_reference(dataset, tensors["chosen"], tensors["rejected"]), True
        log.warning(
            "reference cache %s has %d rows, the data %d: recomputing", path, tensors["chosen"].numel(), len(dataset)
        )
    with_columns = compute()
    if is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        chosen = torch.tensor(with_columns[COLUMNS[0]], dtype=torch.float32)
        rejected = torch.tensor(with_columns[COLUMNS[1]], dtype=torch.float32)
        save_file({"chosen": chosen, "rejected": rejected}, str(tmp), metadata={"rows": str(len(dataset))})
        tmp.rename(path)
    wait()
    return with_columns, False
