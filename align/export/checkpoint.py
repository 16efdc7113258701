"""Stream a safetensors checkpoint tensor by tensor, and write sharded safetensors with an index.

Mixtral checkpoints keep the legacy per-expert names on disk (`block_sparse_moe.experts.{e}.w1/w2/w3`,
`block_sparse_moe.gate`); transformers 5 fuses them in memory into `mlp.experts.gate_up_proj`
[E, 2I, H] (w1 rows first, then w3) and `mlp.experts.down_proj` [E, H, I]. `model_ref` maps an on-disk
name to the fused (model-space) parameter, expert and row range it holds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from align.errors import ModelError

LEGACY_EXPERT = re.compile(r"^(?P<layer>.+)\.block_sparse_moe\.experts\.(?P<expert>\d+)\.(?P<w>w[123])\.weight$")
INDEX = "model.safetensors.index.json"


@dataclass(frozen=True)
class TensorRef:
    """Where an on-disk tensor lives in the model: parameter, expert (None: all / not an expert), rows."""

    param: str
    expert: int | None = None
    rows: tuple[int, int] | None = None


def model_ref(disk_name: str, intermediate: int) -> TensorRef:
    """The model-space location of an on-disk tensor name."""
    match = LEGACY_EXPERT.match(disk_name)
    if not match:
        return TensorRef(disk_name.replace(".block_sparse_moe.", ".mlp."))
    experts = f"{match['layer']}.mlp.experts"
    expert = int(match["expert"])
    if match["w"] == "w2":
        return TensorRef(f"{experts}.down_proj", expert)
    rows = (0, intermediate) if match["w"] == "w1" else (intermediate, 2 * intermediate)
    return TensorRef(f"{experts}.gate_up_proj", expert, rows)


def shard_files(base_dir: Path) -> list[Path]:
    """The checkpoint's safetensors files in index order (safetensors only: no pickles)."""
    index = base_dir / INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [base_dir / name for name in sorted(set(weight_map.values()))]
    single = base_dir / "model.safetensors"
    if single.is_file():
        return [single]
    raise ModelError(f"{base_dir}: no model.safetensors or {INDEX} (align merges safetensors checkpoints only)")


def iter_tensors(base_dir: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor of the checkpoint, one at a time (memory-mapped reads)."""
    for path in shard_files(base_dir):
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open handles are not mappings
                yield name, handle.get_tensor(name)


def parse_size(text: str) -> int:
    """'5GB' / '500MB' / '2GiB' / an int -> bytes."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    match = re.fullmatch(r"\s*([\d.]+)\s*([A-Za-z]*)\s*", str(text))
    if not match or match[2].upper() not in units:
        raise ModelError(f"cannot read the shard size {text!r}; use e.g. 5GB, 500MB or 2GiB")
    return int(float(match[1]) * units[match[2].upper()])


class ShardWriter:
    """Collect tensors into shards of at most `max_bytes` (one shard in memory at a time), then index them."""

    def __init__(self, out_dir: Path, max_bytes: int):
        self.out_dir, self.max_bytes = out_dir, max_bytes
        self.buffer: dict[str, torch.Tensor] = {}
        self.buffer_bytes = 0
        self.parts: list[tuple[Path, list[str]]] = []
        self.total = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.buffer and self.buffer_bytes + size > self.max_bytes:
            self.flush()
        self.buffer[name] = tensor.contiguous()
        self.buffer_bytes += size
        self.total += size

    def flush(self) -> None:
        if not self.buffer:
            return
        path = self.out_dir / f".part-{len(self.parts):05d}.safetensors"
        save_file(self.buffer, str(path), metadata={"format": "pt"})
        self.parts.append((path, list(self.buffer)))
        self.buffer, self.buffer_bytes = {}, 0

    def finish(self) -> list[str]:
        """Name the shards the way transformers does; write the index when there is more than one."""
        self.flush()
        count = len(self.parts)
        if count == 1:
            self.parts[0][0].rename(self.out_dir / "model.safetensors")
            return ["model.safetensors"]
        weight_map, names = {}, []
        for i, (path, tensors) in enumerate(self.parts, start=1):
            name = f"model-{i:05d}-of-{count:05d}.safetensors"
            path.rename(self.out_dir / name)
            weight_map.update(dict.fromkeys(tensors, name))
            names.append(name)
        index = {"metadata": {"total_size": self.total}, "weight_map": dict(sorted(weight_map.items()))}
        (self.out_dir / INDEX).write_text(json.dumps(index, indent=2) + "\n")
        return names
