"""Long-context checks from the Mixtral report (Jiang et al. 2024, fig. 4): passkey retrieval over a grid
of context lengths and key positions, and perplexity of the same tokens as the context before them grows.

Passkey: a random 5-digit key hidden at a relative position of repeated filler text (Mohtashami and
Jaggi 2023); retrieved when the greedy reply contains it. Perplexity: over several end points of a long
text, the loss of the last SCORED tokens given the L tokens before them, for each length L, so every L
scores the same tokens and only the context differs. The default text is Python's own documentation
(`pydoc_data.topics`, shipped with CPython), so no download is needed.
"""

from __future__ import annotations

import math
import random

from align.evaluation.generate import generate
from align.evaluation.metrics import token_nll

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
POSITIONS = (0.1, 0.5, 0.9)
SCORED = 64


def _docs_ids(tokenizer) -> list[int]:
    """Python's documentation topics, tokenized one topic at a time (each is shorter than any model limit)."""
    from pydoc_data.topics import topics

    ids: list[int] = []
    for name in sorted(topics):
        ids += tokenizer(topics[name] + "\n\n", add_special_tokens=False)["input_ids"]
    return ids


def passkey_messages(tokenizer, length: int, position: float, key: int) -> list[dict]:
    """A user turn of about `length` tokens with the key sentence at `position` (0 = start, 1 = end)."""
    head = "There is a pass key hidden inside a lot of irrelevant text. Find it and remember it.\n\n"
    tail = "\n\nWhat is the pass key? Reply with the number only."
    needle = f" The pass key is {key}. Remember it. {key} is the pass key. "
    per = len(tokenizer(FILLER, add_special_tokens=False)["input_ids"])
    fixed = len(tokenizer(head + needle + tail, add_special_tokens=False)["input_ids"]) + 16  # + template
    reps = max(1, (length - fixed) // per)
    before = round(position * reps)
    text = head + FILLER * before + needle + FILLER * (reps - before) + tail
    return [{"role": "user", "content": text}]


def passkey(model, tokenizer, lengths: list[int], trials: int = 2, seed: int = 0) -> list[dict]:
    """Retrieval accuracy per (length, position) cell, `trials` keys each."""
    rng = random.Random(seed)
    cells = []
    for length in lengths:
        cases = [(pos, rng.randint(10000, 99999)) for pos in POSITIONS for _ in range(trials)]
        prompts = [passkey_messages(tokenizer, length, pos, key) for pos, key in cases]
        replies = generate(model, tokenizer, prompts, max_new_tokens=12, batch_size=len(prompts))
        for pos in POSITIONS:
            hits = [str(key) in r[0] for (p, key), r in zip(cases, replies, strict=True) if p == pos]
            cells.append({"length": length, "position": pos, "accuracy": sum(hits) / len(hits), "trials": len(hits)})
    return cells


def perplexity_by_length(model, tokenizer, lengths: list[int], windows: int = 4, text: str | None = None) -> list[dict]:
    """Perplexity of the same SCORED tokens at each end point, given L context tokens, for each L."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] if text else _docs_ids(tokenizer)
    longest = max(lengths)
    if len(ids) < longest + windows:
        raise ValueError(f"text has {len(ids)} tokens; need more than {longest + windows}")
    step = (len(ids) - longest) // windows
    ends = [longest + i * step for i in range(windows)]
    out = []
    for length in sorted(lengths):
        rows = []
        for end in ends:
            window = ids[end - length : end]
            rows.append((window, [0] * (length - SCORED) + [1] * SCORED))
        nll, count = token_nll(model, rows, tokenizer.pad_token_id, batch_size=1)
        out.append({"length": length, "perplexity": math.exp(min(nll / count, 50.0)), "scored_tokens": count})
    return out


def long_context(model, tokenizer, lengths: list[int], trials: int = 2) -> dict:
    """Both checks; lengths above the model's max_position_embeddings are refused."""
    limit = model.config.max_position_embeddings
    too_long = [n for n in lengths if n > limit]
    if too_long:
        raise ValueError(f"context lengths {too_long} exceed max_position_embeddings {limit}")
    if min(lengths) <= SCORED:
        raise ValueError(f"context lengths must exceed the {SCORED} scored tokens")
    was_training = model.training
    model.eval()
    try:
        return {
            "passkey": passkey(model, tokenizer, lengths, trials),
            "perplexity": perplexity_by_length(model, tokenizer, lengths),
        }
    finally:
        model.train(was_training)
