"""Routing profile: hand-worked stats, streaming merge, hooks on a tiny Mixtral, JSON, heatmap, batching."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import MixtralConfig, MixtralForCausalLM

from align.data.schemas import RowError
from align.moe.plot import routing_heatmap
from align.moe.profile import (
    LayerCounts,
    RoutingProfile,
    batches_from_conversations,
    conversations_from_rows,
    profile_model,
    routing_stats,
    summarize,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Four tokens, four experts, top-2. Logits are log-probabilities plus a per-row constant (softmax ignores it).
# The last token is padding and must not count.
HAND_PROBS = [
    [0.4, 0.3, 0.2, 0.1],  # top-2: experts 0, 1
    [0.1, 0.2, 0.3, 0.4],  # top-2: experts 3, 2
    [0.5, 0.1, 0.1, 0.3],  # top-2: experts 0, 3
    [0.7, 0.1, 0.1, 0.1],  # padding
]
HAND_MASK = [True, True, True, False]


def hand_logits() -> torch.Tensor:
    return torch.tensor(HAND_PROBS, dtype=torch.float64).log() + torch.tensor([[1.0], [-2.0], [0.5], [3.0]])


def tiny_mixtral(vocab_size: int = 128) -> MixtralForCausalLM:
    torch.manual_seed(0)
    config = MixtralConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
    )
    return MixtralForCausalLM(config).float()


@pytest.fixture(scope="module")
def model() -> MixtralForCausalLM:
    return tiny_mixtral()


def random_batches(count: int = 3, rows: int = 3, width: int = 10, seed: int = 1) -> list[dict]:
    """Random ids, right-padded: row r of batch b keeps width - (r + b) % 4 tokens."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for b in range(count):
        input_ids = torch.randint(0, 128, (rows, width), generator=gen)
        attention_mask = torch.ones_like(input_ids)
        for r in range(rows):
            attention_mask[r, width - (r + b) % 4 :] = 0
        input_ids[attention_mask == 0] = 0
        out.append({"input_ids": input_ids, "attention_mask": attention_mask})
    return out


def test_routing_stats_and_summary_by_hand():
    counts = routing_stats(hand_logits(), top_k=2, mask=torch.tensor(HAND_MASK))
    # Routed: expert 0 by tokens 0 and 2, expert 1 by token 0, expert 2 by token 1, expert 3 by tokens 1 and 2.
    assert counts.routed.tolist() == [2.0, 1.0, 1.0, 2.0]
    assert counts.tokens == 3
    # Gate mass, column sums over the 3 real tokens: 0.4+0.1+0.5, 0.3+0.2+0.1, 0.2+0.3+0.1, 0.1+0.4+0.3.
    assert counts.gate_mass.tolist() == pytest.approx([1.0, 0.6, 0.6, 0.8])
    # Entropy: H(.4,.3,.2,.1) = .4*.91629 + .3*1.20397 + .2*1.60944 + .1*2.30259 = 1.27985 (twice: token 1 is
    # the same distribution permuted); H(.5,.1,.1,.3) = .5*.69315 + 2*.1*2.30259 + .3*1.20397 = 1.16828.
    assert counts.entropy_sum == pytest.approx(2 * 1.279854 + 1.168282, abs=1e-5)

    summary = summarize(counts)
    # token share = routed / (3 tokens * 2 picks) = [2, 1, 1, 2] / 6.
    assert summary["token_share"] == pytest.approx([1 / 3, 1 / 6, 1 / 6, 1 / 3])
    assert summary["gate_share"] == pytest.approx([1.0 / 3, 0.2, 0.2, 0.8 / 3])
    assert summary["entropy"] == pytest.approx((2 * 1.279854 + 1.168282) / 3, abs=1e-5)  # 1.24266
    assert summary["max_entropy"] == pytest.approx(math.log(4))  # 1.38629
    assert summary["imbalance"] == pytest.approx(4 / 3)  # max share 1/3 times E=4
    # cv: mean 1/4, every share is 1/12 away from it -> population std 1/12 -> cv = (1/12) / (1/4) = 1/3.
    assert summary["cv"] == pytest.approx(1 / 3)
    assert summary["tokens"] == 3


def test_padding_changes_nothing_but_is_counted_without_mask():
    unmasked = routing_stats(hand_logits(), top_k=2)
    # The padded token picks experts 0 and one of the tied 1/2/3: expert 0 gains one routed token.
    assert unmasked.tokens == 4 and unmasked.routed[0] == 3.0 and unmasked.routed.sum() == 8.0


def test_uniform_and_collapsed_extremes():
    uniform = summarize(routing_stats(torch.zeros(5, 4), top_k=4))
    assert uniform["imbalance"] == pytest.approx(1.0) and uniform["cv"] == pytest.approx(0.0)
    assert uniform["entropy"] == pytest.approx(math.log(4))
    collapsed = summarize(routing_stats(torch.tensor([[50.0, 0, 0, 0]] * 3), top_k=1))
    assert collapsed["imbalance"] == pytest.approx(4.0) and collapsed["token_share"] == [1.0, 0.0, 0.0, 0.0]
    assert collapsed["entropy"] == pytest.approx(0.0, abs=1e-12)


def test_merge_equals_stats_of_concatenation():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 6, generator=gen), torch.randn(5, 6, generator=gen)
    mask_a, mask_b = torch.rand(7, generator=gen) > 0.3, torch.rand(5, generator=gen) > 0.3
    merged = LayerCounts.zeros(6, 2).merge(routing_stats(a, 2, mask_a)).merge(routing_stats(b, 2, mask_b))
    whole = routing_stats(torch.cat([a, b]), 2, torch.cat([mask_a, mask_b]))
    assert merged.tokens == whole.tokens == int(mask_a.sum() + mask_b.sum())
    assert torch.equal(merged.routed, whole.routed)
    assert torch.allclose(merged.gate_mass, whole.gate_mass)
    assert merged.entropy_sum == pytest.approx(whole.entropy_sum)
    with pytest.raises(ValueError, match="cannot merge"):
        merged.merge(LayerCounts.zeros(6, 1))


def test_summarize_without_tokens_fails_clearly():
    with pytest.raises(ValueError, match="no tokens"):
        summarize(LayerCounts.zeros(4, 2))


def captured_router_inputs(model) -> tuple[list, list[list[torch.Tensor]]]:
    """Pre-hooks that keep each layer's router input hidden states, for an independent recomputation."""
    seen: list[list[torch.Tensor]] = [[] for _ in model.model.layers]
    hooks = [
        layer.mlp.gate.register_forward_pre_hook(lambda _m, args, i=i: seen[i].append(args[0].detach().clone()))
        for i, layer in enumerate(model.model.layers)
    ]
    return hooks, seen


def test_profile_model_matches_the_router(model):
    batches = random_batches()
    hooks, seen = captured_router_inputs(model)
    model.train()
    try:
        profile = profile_model(model, batches)
    finally:
        for hook in hooks:
            hook.remove()
    assert model.training, "training mode must be restored"
    assert all(not layer.mlp.gate._forward_hooks for layer in model.model.layers)
    mask = torch.cat([b["attention_mask"].reshape(-1).bool() for b in batches])
    assert profile.tokens == int(mask.sum()) and (profile.num_experts, profile.top_k) == (4, 2)
    assert [layer["layer"] for layer in profile.layers] == [0, 1]
    for i, layer in enumerate(model.model.layers):
        with torch.no_grad():
            _, _, indices = layer.mlp.gate(torch.cat(seen[i]))
        expected = torch.bincount(indices[mask].reshape(-1), minlength=4).double() / (int(mask.sum()) * 2)
        summary = profile.layers[i]
        assert summary["token_share"] == pytest.approx(expected.tolist(), abs=1e-12)
        assert sum(summary["token_share"]) == pytest.approx(1.0)
        assert sum(summary["gate_share"]) == pytest.approx(1.0)
        assert summary["tokens"] == profile.tokens
        assert 0.0 < summary["entropy"] <= summary["max_entropy"]
    assert profile.token_share_matrix() == [layer["token_share"] for layer in profile.layers]


def test_max_tokens_stops_early_and_lazily(model):
    batches = random_batches(count=5)
    pulled = []

    def stream():
        for batch in batches:
            pulled.append(batch)
            yield batch

    first = int(batches[0]["attention_mask"].sum())
    model.eval()
    profile = profile_model(model, stream(), max_tokens=first + 1)
    assert len(pulled) == 2, "stops after the batch that reaches max_tokens, without pulling another"
    assert first + 1 <= profile.tokens <= first + 1 + int(batches[1]["attention_mask"].sum())
    assert not model.training, "eval mode stays eval"


def test_hooks_removed_and_mode_restored_on_error(model):
    def failing():
        yield random_batches(count=1)[0]
        raise RuntimeError("data broke")

    model.train()
    with pytest.raises(RuntimeError, match="data broke"):
        profile_model(model, failing())
    assert model.training
    assert all(not layer.mlp.gate._forward_hooks for layer in model.model.layers)
    model.eval()


def test_profile_model_rejects_models_without_routers():
    with pytest.raises(ValueError, match="no MixtralTopKRouter"):
        profile_model(torch.nn.Linear(2, 2), [])


def test_json_round_trip_and_heatmap(model, tmp_path):
    profile = profile_model(model, random_batches(count=1))
    path = profile.to_json(tmp_path / "routing.json")
    assert RoutingProfile.from_json(path) == profile
    png = routing_heatmap(profile, tmp_path / "plots" / "routing.png", title="tiny")
    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000


def test_batches_from_conversations_pads_and_truncates(tokenizer):
    conversations = [
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there, how can I help?"}],
        [{"role": "user", "content": "What is two plus two, exactly?"}, {"role": "assistant", "content": "4."}],
        [{"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye!"}],
    ]
    expected = [
        list(tokenizer.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"]) for c in conversations
    ]
    batches = list(batches_from_conversations(tokenizer, conversations, batch_size=2, max_length=512))
    assert [b["input_ids"].shape[0] for b in batches] == [2, 1]
    rows = [(b, r) for b in batches for r in range(b["input_ids"].shape[0])]
    for ids, (batch, r) in zip(expected, rows, strict=True):
        width = batch["input_ids"].shape[1]
        assert batch["input_ids"].dtype == batch["attention_mask"].dtype == torch.long
        assert batch["input_ids"][r].tolist() == ids + [tokenizer.pad_token_id] * (width - len(ids))
        assert batch["attention_mask"][r].tolist() == [1] * len(ids) + [0] * (width - len(ids))
    assert batches[0]["input_ids"].shape[1] == max(len(expected[0]), len(expected[1]))

    (cut,) = batches_from_conversations(tokenizer, conversations[:2], batch_size=4, max_length=6)
    assert cut["input_ids"].tolist() == [ids[:6] for ids in expected[:2]]
    assert cut["attention_mask"].sum().item() == 12


def test_conversations_from_rows_handles_sft_and_preference_rows():
    prompt = [{"role": "user", "content": "Capital of Austria?"}]
    good, bad = {"role": "assistant", "content": "Vienna."}, {"role": "assistant", "content": "Lima."}
    rows = [
        {"messages": [{"role": "system", "content": "Be brief."}, *prompt, good]},
        {"prompt": prompt, "chosen": [good], "rejected": [bad]},
        {"prompt": "Capital of Austria?", "chosen": "Vienna.", "rejected": "Lima."},
        {"chosen": [*prompt, good], "rejected": [*prompt, bad]},
    ]
    merged = [{"role": "user", "content": "Be brief.\n\nCapital of Austria?"}, good]
    assert conversations_from_rows(rows) == [merged] + [[*prompt, good], [*prompt, bad]] * 3
    with pytest.raises(RowError, match="row 1"):
        conversations_from_rows([{"text": "no shape"}])


def test_profile_from_preference_rows_end_to_end(tokenizer):
    rows = [{"prompt": "Add 2 and 3.", "chosen": "5.", "rejected": "I will not."}] * 3
    conversations = conversations_from_rows(rows)
    batches = list(batches_from_conversations(tokenizer, conversations, batch_size=4, max_length=64))
    profile = profile_model(tiny_mixtral(vocab_size=len(tokenizer)), batches)
    assert profile.tokens == sum(int(b["attention_mask"].sum()) for b in batches)
    assert len(profile.layers) == 2
