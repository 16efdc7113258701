"""Held-out metrics: the implicit DPO reward on preference pairs (pure math + one forward helper)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def preference_metrics(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> dict[str, float]:
    """Implicit-reward metrics of DPO (Rafailov et al. 2023), from summed completion log-probs.

    reward = beta * (log pi(y|x) - log pi_ref(y|x)). Accuracy counts a tie as half right, so a policy
    equal to its reference scores exactly 0.5 (chance), not 0.
    """
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    margin = chosen_reward - rejected_reward
    wins = (margin > 0).float() + 0.5 * (margin == 0).float()
    logp_wins = (policy_chosen > policy_rejected).float() + 0.5 * (policy_chosen == policy_rejected).float()
    return {
        "reward_accuracy": wins.mean().item(),
        "reward_margin": margin.mean().item(),
        "reward_chosen": chosen_reward.mean().item(),
        "reward_rejected": rejected_reward.mean().item(),
        "logp_accuracy": logp_wins.mean().item(),
        "logps_chosen": policy_chosen.mean().item(),
        "logps_rejected": policy_rejected.mean().item(),
        "dpo_loss": (-F.logsigmoid(margin)).mean().item(),
        "pairs": int(margin.numel()),
    }


@dataclass
class EncodedPair:
    """Token ids of a prompt and its two completions (the completions exclude the prompt)."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def encode_pair(tokenizer, row: dict, max_length: int | None = None) -> EncodedPair:
    """Tokenize a preference row the way TRL's DPOTrainer does (prompt = shared chat-template prefix)."""

    def ids(messages, gen=False):
        out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen, return_dict=True)
        return list(out["input_ids"])

    prompt = ids(row["prompt"], gen=True)
    full_c = ids(row["prompt"] + row["chosen"])
    full_r = ids(row["prompt"] + row["rejected"])
    n = min(_common_prefix(prompt, full_c), _common_prefix(prompt, full_r))
    chosen, rejected = full_c[n:], full_r[n:]
    if max_length is not None:
        chosen = chosen[: max(0, max_length - n)]
        rejected = rejected[: max(0, max_length - n)]
    return EncodedPair(prompt[:n], chosen, rejected)


@torch.no_grad()
def completion_logps(model, sequences: list[tuple[list[int], list[int]]], pad_id: int, batch_size: int = 16):
    """Sum of log p(completion token | prefix) for each (prompt_ids, completion_ids), right-padded batches."""
    device = next(model.parameters()).device
    out: list[torch.Tensor] = []
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start : start + batch_size]
        width = max(len(p) + len(c) for p, c in chunk)
        input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        comp_mask = torch.zeros((len(chunk), width), dtype=torch.bool)
        for i, (p, c) in enumerate(chunk):
            input_ids[i, : len(p) + len(c)] = torch.tensor(p + c)
            attention[i, : len(p) + len(c)] = 1
            comp_mask[i, len(p) : len(p) + len(c)] = True
        logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device), use_cache=False).logits
        logps = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        token_logps = logps.gather(-1, input_ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1)
        out.append((token_logps * comp_mask[:, 1:].to(device)).sum(-1).cpu())
    return torch.cat(out) if out else torch.zeros(0)


def pair_logps(model, pairs: list[EncodedPair], pad_id: int, batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs of chosen and rejected for every pair."""
    seqs = [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]
    logps = completion_logps(model, seqs, pad_id, batch_size)
    return logps[: len(pairs)], logps[len(pairs) :]


def evaluate_preferences(
    model,
    tokenizer,
    rows: list[dict],
    beta: float,
    reference: Callable[[], contextlib.AbstractContextManager] | None = None,
    max_length: int | None = None,
    batch_size: int = 16,
) -> dict[str, float]:
    """Held-out DPO metrics of `model`; `reference()` is a context in which the model IS the reference.

    `reference=None` means the policy is its own reference (before DPO): one pass instead of two.
    """
    pairs = [encode_pair(tokenizer, row, max_length) for row in rows]
    was_training = model.training
    model.eval()
    try:
        pc, pr = pair_logps(model, pairs, tokenizer.pad_token_id, batch_size)
        if reference is None:
            rc, rr = pc, pr
        else:
            with reference():
                rc, rr = pair_logps(model, pairs, tokenizer.pad_token_id, batch_size)
    finally:
        model.train(was_training)
    return preference_metrics(pc, pr, rc, rr, beta)
