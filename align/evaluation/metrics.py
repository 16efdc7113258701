"""Held-out measurements on a loaded model: SFT loss/perplexity on assistant tokens, and the summed
completion log-probs of preference pairs (the policy or reference half of the implicit DPO reward)."""

from __future__ import annotations

import math

import torch

from align.chat import assistant_mask
from align.evaluate import encode_pair, pair_logps


@torch.no_grad()
def token_nll(model, rows: list[tuple[list[int], list[int]]], pad_id: int, batch_size: int = 8) -> tuple[float, int]:
    """(summed negative log-likelihood, token count) of the tokens whose mask is 1 (each predicted from
    everything before it), over right-padded batches of (ids, mask) rows."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        attn = torch.zeros((len(chunk), width), dtype=torch.long)
        keep = torch.zeros((len(chunk), width), dtype=torch.bool)
        for i, (row_ids, row_mask) in enumerate(chunk):
            ids[i, : len(row_ids)] = torch.tensor(row_ids)
            attn[i, : len(row_ids)] = 1
            keep[i, : len(row_ids)] = torch.tensor(row_mask, dtype=torch.bool)
        logits = model(input_ids=ids.to(device), attention_mask=attn.to(device), use_cache=False).logits
        logps = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        picked = logps.gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1)
        mask = keep[:, 1:].to(device)
        total -= (picked * mask).sum().item()
        count += int(mask.sum().item())
    return total, count


def sft_metrics(model, tokenizer, conversations: list[list[dict]], max_length: int | None = None) -> dict:
    """Token-weighted held-out loss on assistant tokens (what SFT trains) and its perplexity."""
    rows = []
    for messages in conversations:
        ids, mask = assistant_mask(tokenizer, messages)
        rows.append((ids[:max_length], mask[:max_length]) if max_length else (ids, mask))
    was_training = model.training
    model.eval()
    try:
        nll, count = token_nll(model, rows, tokenizer.pad_token_id)
    finally:
        model.train(was_training)
    loss = nll / max(count, 1)
    return {"sft_loss": loss, "perplexity": math.exp(min(loss, 50.0)), "sft_tokens": count, "sft_rows": len(rows)}


def preference_logps(model, tokenizer, rows: list[dict], max_length: int | None = None):
    """Summed completion log-probs (chosen, rejected) of each preference row, as TRL's DPO splits them."""
    pairs = [encode_pair(tokenizer, row, max_length) for row in rows]
    was_training = model.training
    model.eval()
    try:
        return pair_logps(model, pairs, tokenizer.pad_token_id, batch_size=8)
    finally:
        model.train(was_training)
