"""Batched generation through the chat template: greedy for evaluation, sampled for preference data."""

from __future__ import annotations

import torch

from align.export.run import turn_end_ids


def _left_padded(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    return ids, mask


def _expand(model, ids: torch.Tensor, mask: torch.Tensor, samples: int, **kwargs) -> torch.Tensor:
    """`samples` continuations per row. Several samples share one prefill: the prompt's KV cache is
    computed once and repeated, instead of generate()'s default of repeating the prompt before prefill."""
    if samples == 1 or ids.shape[1] < 2:
        return model.generate(input_ids=ids, attention_mask=mask, num_return_sequences=samples, **kwargs)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # what generate() uses for left-padded rows
    prefill = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1], use_cache=True)
    cache = prefill.past_key_values
    cache.batch_repeat_interleave(samples)
    rep_ids, rep_mask = ids.repeat_interleave(samples, 0), mask.repeat_interleave(samples, 0)
    return model.generate(input_ids=rep_ids, attention_mask=rep_mask, cache=cache, **kwargs)


@torch.no_grad()
def generate(
    model,
    tokenizer,
    conversations: list[list[dict]],
    max_new_tokens: int = 64,
    batch_size: int = 16,
    samples: int = 1,
    temperature: float = 0.0,
    seed: int = 0,
) -> list[list[str]]:
    """`samples` replies per conversation (greedy when temperature is 0), stopping at the turn end."""
    device = next(model.parameters()).device
    stops = turn_end_ids(tokenizer)
    torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    out: list[list[str]] = []
    try:
        for start in range(0, len(conversations), batch_size):
            chunk = conversations[start : start + batch_size]
            rows = [
                list(
                    tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=True)[
                        "input_ids"
                    ]
                )
                for c in chunk
            ]
            ids, mask = _left_padded(rows, tokenizer.pad_token_id)
            sampled = temperature > 0
            generated = _expand(
                model,
                ids.to(device),
                mask.to(device),
                samples,
                max_new_tokens=max_new_tokens,
                do_sample=sampled,
                temperature=temperature if sampled else None,
                top_p=1.0 if sampled else None,
                top_k=0 if sampled else None,
                eos_token_id=stops,
                pad_token_id=tokenizer.pad_token_id,
                use_cache=True,
            )
            texts = tokenizer.batch_decode(generated[:, ids.shape[1] :], skip_special_tokens=True)
            out.extend([t.strip() for t in texts[i * samples : (i + 1) * samples]] for i in range(len(chunk)))
    finally:
        model.train(was_training)
    return out
