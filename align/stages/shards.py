"""Which training sequences each rank saw: a per-rank fingerprint, to prove data is sharded, not repeated.

Every training forward (model in train mode, grad enabled: not held-out evaluation, not DPO's no-grad
reference pass) adds one 64-bit hash per sequence to a running sum. Sums are order-free and keep
duplicates, so for the same global batch the ranks' sums add up to the single-process run's sum, and two
ranks that trained on the same rows would report the same value. summary.json keeps them per stage.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import torch
from transformers import TrainerCallback

MASK64 = (1 << 64) - 1


def sequence_hash(tokens: torch.Tensor) -> int:
    """64-bit hash of one sequence's token ids (padding already removed)."""
    data = tokens.to(torch.int64).cpu().numpy().tobytes()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def sequences(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None
) -> list[torch.Tensor]:
    """The real sequences in a batch: padding dropped; padding-free rows split where positions restart at 0."""
    out = []
    for row in range(input_ids.shape[0]):
        ids = input_ids[row]
        if attention_mask is not None:
            ids = ids[attention_mask[row].bool()]
            out.append(ids)
        elif position_ids is not None:
            starts = (position_ids[row] == 0).nonzero().flatten().tolist() + [ids.shape[0]]
            out.extend(ids[a:b] for a, b in zip(starts[:-1], starts[1:], strict=True) if b > a)
        else:
            out.append(ids)
    return out


@dataclass
class ShardRecord:
    """What one rank trained on: sequence count, token count and the sum of sequence hashes (hex)."""

    rank: int
    sequences: int = 0
    tokens: int = 0
    fingerprint: int = 0

    def add(self, batch: list[torch.Tensor]) -> None:
        for ids in batch:
            self.sequences += 1
            self.tokens += int(ids.numel())
            self.fingerprint = (self.fingerprint + sequence_hash(ids)) & MASK64

    def as_dict(self) -> dict:
        return {**asdict(self), "fingerprint": f"{self.fingerprint:016x}"}


def combined_fingerprint(records: list[dict]) -> str:
    """The fingerprint of all ranks' data together (what a single process with the global batch reports)."""
    return f"{sum(int(r['fingerprint'], 16) for r in records) & MASK64:016x}"


def _cpu(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.cpu()


class DataShards(TrainerCallback):
    """Fingerprints the sequences of every training forward on this rank; gathers all ranks at train end."""

    def __init__(self):
        self.record = ShardRecord(rank=0)
        self.report: list[dict] = []
        self._handle = None

    def _hook(self, module, args, kwargs):
        if not (module.training and torch.is_grad_enabled()):
            return
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if isinstance(input_ids, torch.Tensor):  # one device-to-host copy per batch, not one per sequence
            mask, positions = (kwargs.get(k) for k in ("attention_mask", "position_ids"))
            self.record.add(sequences(input_ids.cpu(), _cpu(mask), _cpu(positions)))

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.record = ShardRecord(rank=args.process_index)
        self._handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def on_train_end(self, args, state, control, **kwargs):
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        mine = self.record.as_dict()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, mine)  # every rank reaches train end: a collective
            self.report = sorted(gathered, key=lambda r: r["rank"])
        else:
            self.report = [mine]
