"""Merge a LoRA adapter into a base checkpoint, streaming: one base tensor read, one output shard held."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from align.errors import ModelError
from align.export.adapter import AdapterUpdates
from align.export.checkpoint import ShardWriter, TensorRef, iter_tensors, model_ref
from align.export.dequant import Dequantized
from align.export.merge_math import expert_delta, lora_delta, merge

log = logging.getLogger("align")


@dataclass
class MergeStats:
    """What the merge touched: tensors written, updated by LoRA, replaced, dequantized; the shard files."""

    tensors: int = 0
    merged: int = 0
    replaced: int = 0
    dequantized: int = 0
    shards: list[str] = field(default_factory=list)


def delta_for(updates: AdapterUpdates, ref: TensorRef) -> torch.Tensor | None:
    """The LoRA update of one on-disk tensor (an expert slice of a fused update when `ref.expert` is set)."""
    f = updates.factors.get(ref.param)
    if f is None:
        return None
    if f.experts == 1:
        return lora_delta(f.lora_a, f.lora_b, f.scale)
    if ref.expert is None:  # a fused expert tensor on disk
        return torch.stack([expert_delta(f.lora_a, f.lora_b, f.experts, e, f.scale) for e in range(f.experts)])
    delta = expert_delta(f.lora_a, f.lora_b, f.experts, ref.expert, f.scale)
    return delta[ref.rows[0] : ref.rows[1]] if ref.rows else delta


def _replacement(updates: AdapterUpdates, ref: TensorRef) -> torch.Tensor | None:
    full = updates.replacements.get(ref.param)
    if full is None or ref.expert is None:
        return full
    raise ModelError(f"{ref.param}: a full replacement of fused experts (modules_to_save) is not supported")


def merge_checkpoint(
    base_dir: Path,
    updates: AdapterUpdates,
    out_dir: Path,
    intermediate: int,
    max_bytes: int,
    dtype: torch.dtype | None = None,
    dequantized: Dequantized | None = None,
) -> MergeStats:
    """Write base + LoRA as sharded safetensors under the base's own on-disk names; check every update was used."""
    writer = ShardWriter(out_dir, max_bytes)
    stats, used = MergeStats(), set()
    for name, tensor in iter_tensors(base_dir):
        ref = model_ref(name, intermediate)
        target = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
        if (full := _replacement(updates, ref)) is not None:
            tensor, stats.replaced = full.to(target), stats.replaced + 1
            used.add(ref.param)
        else:
            if dequantized is not None and (dq := dequantized.get(ref)) is not None:
                tensor, stats.dequantized = dq, stats.dequantized + 1
            delta = delta_for(updates, ref)
            if delta is not None:
                tensor, stats.merged = merge(tensor, delta, target), stats.merged + 1
                used.add(ref.param)
            else:
                tensor = tensor.to(target)
        writer.add(name, tensor)
        stats.tensors += 1
    unused = updates.names() - used
    if unused:
        raise ModelError(f"{len(unused)} adapter weights match no tensor of {base_dir}, e.g. {sorted(unused)[0]}")
    stats.shards = writer.finish()
    return stats
