"""Held-out DPO metrics: hand-worked values, and log-probs equal to a direct computation."""

from __future__ import annotations

import math

import pytest
import torch

from align.evaluate import completion_logps, encode_pair, evaluate_preferences, preference_metrics


def test_preference_metrics_by_hand():
    # beta 0.5; margins: 0.5*((-1+2)-(-3+2)) = 1.0, 0.5*((-2+2)-(-2+2)) = 0 (tie), 0.5*((-4+1)-(-1+1)) = -1.5
    m = preference_metrics(
        policy_chosen=torch.tensor([-1.0, -2.0, -4.0]),
        policy_rejected=torch.tensor([-3.0, -2.0, -1.0]),
        ref_chosen=torch.tensor([-2.0, -2.0, -1.0]),
        ref_rejected=torch.tensor([-2.0, -2.0, -1.0]),
        beta=0.5,
    )
    assert m["reward_accuracy"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert m["reward_margin"] == pytest.approx((1.0 + 0.0 - 1.5) / 3)
    assert m["reward_chosen"] == pytest.approx((0.5 + 0.0 - 1.5) / 3)
    assert m["logp_accuracy"] == pytest.approx((1 + 0.5 + 0) / 3)
    expected_loss = (math.log1p(math.exp(-1.0)) + math.log(2) + math.log1p(math.exp(1.5))) / 3
    assert m["dpo_loss"] == pytest.approx(expected_loss, rel=1e-6)
    assert m["pairs"] == 3


def test_policy_equal_to_reference_is_chance():
    x = torch.tensor([-1.0, -5.0])
    assert preference_metrics(x, x - 1, x, x - 1, beta=0.1)["reward_accuracy"] == 0.5


class Bigram(torch.nn.Module):
    """A model whose next-token distribution depends only on the current token."""

    def __init__(self, vocab=11):
        super().__init__()
        torch.manual_seed(0)
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab))

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        return type("Out", (), {"logits": self.table[input_ids]})()


def test_completion_logps_match_direct_sum():
    model = Bigram()
    seqs = [([1, 2, 3], [4, 5]), ([1], [6, 7, 8, 9])]
    got = completion_logps(model, seqs, pad_id=0, batch_size=2)
    logp = torch.log_softmax(model.table, -1)
    want = [logp[3, 4] + logp[4, 5], logp[1, 6] + logp[6, 7] + logp[7, 8] + logp[8, 9]]
    assert torch.allclose(got, torch.stack(want).detach(), atol=1e-6)


def test_encode_pair_splits_like_trl(tokenizer):
    row = {
        "prompt": [{"role": "user", "content": "Capital of France?"}],
        "chosen": [{"role": "assistant", "content": "Paris."}],
        "rejected": [{"role": "assistant", "content": "Figure it out yourself."}],
    }
    pair = encode_pair(tokenizer, row)
    assert tokenizer.decode(pair.prompt) == "<s> [INST] Capital of France? [/INST]"
    assert tokenizer.decode(pair.chosen) == "Paris.</s>"
    assert tokenizer.decode(pair.rejected) == "Figure it out yourself.</s>"


class TinyLM(torch.nn.Module):
    """Embedding -> linear over the full vocabulary; `bias` shifts the logits (a stand-in 'adapter')."""

    def __init__(self, vocab: int):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(vocab, 8)
        self.out = torch.nn.Linear(8, vocab)
        self.bias = torch.zeros(vocab)

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        return type("Out", (), {"logits": self.out(self.emb(input_ids)) + self.bias})()


def test_evaluate_preferences_with_reference_context(tokenizer):
    import contextlib

    model = TinyLM(len(tokenizer))
    rows = [
        {
            "prompt": [{"role": "user", "content": "hi"}],
            "chosen": [{"role": "assistant", "content": "hello there"}],
            "rejected": [{"role": "assistant", "content": "go away"}],
        }
    ]
    same = evaluate_preferences(model, tokenizer, rows, beta=0.1)
    assert same["reward_accuracy"] == 0.5 and same["reward_margin"] == 0.0

    @contextlib.contextmanager
    def reference():
        # the reference likes "go" a lot: relative to it, the policy prefers the chosen answer
        go = tokenizer("go", add_special_tokens=False).input_ids[0]
        model.bias[go] = 5.0
        yield
        model.bias[go] = 0.0

    moved = evaluate_preferences(model, tokenizer, rows, beta=0.1, reference=reference)
    assert moved["reward_accuracy"] == 1.0 and moved["reward_margin"] > 0
    assert moved["logps_chosen"] == same["logps_chosen"]  # the policy itself is unchanged
