"""DPO reference log-probs before training, on every rank: sharded over the ranks, gathered, kept in memory.

Replaces the body of TRL 1.16's `DPOTrainer._precompute_ref_logps`, which fails with more than one process on
in-memory datasets (align's): it caches the columns in `dataset._get_cache_file_path(...)`, a per-process
temporary directory for a dataset without cache files, so every rank but the writer gets FileNotFoundError.
Under ZeRO-3 it also builds a second DeepSpeed engine around the policy before training; align gathers one
decoder layer at a time instead (`gathered_layers`), as for its other pre-training forwards.
"""

from __future__ import annotations

import torch
from datasets import Dataset, concatenate_datasets
from torch.utils.data import DataLoader

from align.moe.zero3 import gathered_layers

COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")


def attach_reference(dataset: Dataset, chosen: torch.Tensor, rejected: torch.Tensor) -> Dataset:
    """`dataset` plus the two reference columns (one float per row each)."""
    columns = Dataset.from_dict({COLUMNS[0]: chosen.tolist(), COLUMNS[1]: rejected.tolist()})
    return concatenate_datasets([dataset, columns], axis=1)


@torch.no_grad()
def precompute_reference(trainer, dataset: Dataset, batch_size: int) -> Dataset:
    """Reference (chosen, rejected) log-probs of every row via TRL's `compute_ref_log_probs`, rows split over ranks.

    Every rank must call it (the forwards under ZeRO-3 and the gather are collective); every rank gets all rows.
    """
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=trainer.data_collator, shuffle=False)
    loader = trainer.accelerator.prepare(loader)  # rank r takes batches r, r + N, ...; gather restores the order
    chosen, rejected = [], []
    was_training = trainer.model.training
    trainer.model.eval()
    try:
        with gathered_layers(trainer.model):
            for batch in loader:
                c, r = trainer.compute_ref_log_probs(trainer.model, batch)
                c, r = trainer.accelerator.gather_for_metrics((c, r))  # drops the even-batches padding rows
                chosen.append(c.float().cpu())
                rejected.append(r.float().cpu())
    finally:
        trainer.model.train(was_training)
    chosen_t, rejected_t = torch.cat(chosen), torch.cat(rejected)
    if chosen_t.numel() != len(dataset):
        raise RuntimeError(f"reference log-probs: {chosen_t.numel()} values for {len(dataset)} rows")
    return attach_reference(dataset, chosen_t, rejected_t)
