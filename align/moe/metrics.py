"""Routing metrics during training: load imbalance, router entropy and drift from the base model's routing.

A `TrainerCallback` (align's one seam into the trainers) runs a fixed probe batch through the model at
every logging step and adds `routing/*` figures to the logs, so metrics.jsonl shows a collapsing router.
Drift = share of probe tokens whose top-k expert set differs from the base model's (adapters disabled).
"""

from __future__ import annotations

import torch
from peft import PeftModel
from transformers import TrainerCallback

from align.moe.profile import (
    batches_from_conversations,
    conversations_from_rows,
    find_routers,
    routing_stats,
    summarize,
)


def topk_drift(base: torch.Tensor, now: torch.Tensor) -> float:
    """Share of tokens whose top-k expert SET changed ([T, k] index tensors)."""
    same = (base.sort(-1).values == now.sort(-1).values).all(-1)
    return 1.0 - same.float().mean().item()


@torch.no_grad()
def router_outputs(model, batch: dict) -> dict[int, torch.Tensor]:
    """Layer -> router logits of the batch's non-padding tokens."""
    routers = find_routers(model)
    captured: dict[int, torch.Tensor] = {}
    mask = batch["attention_mask"].reshape(-1).bool()

    def hook_for(index):
        def hook(module, args, output):
            captured[index] = output[0].detach()[mask.to(output[0].device)].float().cpu()

        return hook

    handles = [group[0].register_forward_hook(hook_for(i)) for i, group in routers.items()]
    was_training = model.training
    try:
        model.eval()
        device = next(model.parameters()).device
        # the decoder alone: the router logits need no LM head (32k-vocab logits for every probe token cost
        # about as much as the rest of the forward on a small model)
        base = model.get_base_model() if isinstance(model, PeftModel) else model
        base.get_decoder()(
            input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device), use_cache=False
        )
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return captured


def routing_metrics(logits: dict[int, torch.Tensor], base_topk: dict[int, torch.Tensor] | None, top_k: int) -> dict:
    """routing/* figures: per-layer and mean imbalance, entropy (nats) and drift."""
    out: dict[str, float] = {}
    for layer, value in logits.items():
        summary = summarize(routing_stats(value, top_k))
        out[f"routing/imbalance_l{layer}"] = summary["imbalance"]
        out[f"routing/entropy_l{layer}"] = summary["entropy"]
        if base_topk is not None:
            now = torch.topk(torch.softmax(value, -1), top_k, dim=-1).indices
            out[f"routing/drift_l{layer}"] = topk_drift(base_topk[layer], now)
    for name in ("imbalance", "entropy", "drift"):
        values = [v for k, v in out.items() if k.startswith(f"routing/{name}_l")]
        if values:
            out[f"routing/{name}"] = sum(values) / len(values)
    return out


class RoutingMetrics(TrainerCallback):
    """Adds routing/* to every training log (all ranks run the probe, so ZeRO-3 forwards stay in step)."""

    def __init__(self, probe: dict, top_k: int):
        self.probe = probe
        self.top_k = top_k
        self.base_topk: dict[int, torch.Tensor] | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not isinstance(model, PeftModel):  # drift is measured against the adapter-free base model
            return
        with model.disable_adapter():
            logits = router_outputs(model, self.probe)
        self.base_topk = {i: torch.topk(torch.softmax(v, -1), self.top_k, dim=-1).indices for i, v in logits.items()}

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        if logs is None or model is None or "loss" not in logs:
            return
        logs.update(routing_metrics(router_outputs(model, self.probe), self.base_topk, self.top_k))


def probe_batch(tokenizer, rows, size: int = 8, max_length: int = 256) -> dict:
    """A fixed batch of the first training rows, for routing metrics."""
    rows = [rows[i] for i in range(min(size, len(rows)))]
    conversations = conversations_from_rows(rows)[:size]
    return next(batches_from_conversations(tokenizer, conversations, batch_size=size, max_length=max_length))
