"""align's padding-free training forward and its LM-head tiles: same numbers as TRL's padded fused head."""

from __future__ import annotations

import copy

import pytest
import torch

from align.stages import packing
from align.stages.logprobs import tiled_log_probs


def test_first_fit_decreasing_by_hand():
    # longest first: 5 -> bin 0 (room 1), 4 -> bin 1 (room 2), 3 -> bin 2 (room 3), 2 -> bin 1 (room 0)
    assert packing.first_fit_decreasing([5, 3, 4, 2], 6) == [[0], [2, 3], [1]]
    assert packing.first_fit_decreasing([6, 6], 6) == [[0], [1]]


def test_pack_plan_layout_by_hand():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])  # lengths 3, 1, 4; width 4
    plan = packing.pack_plan(mask)
    # bins: [2] (4 tokens), [0, 1] (3 + 1 tokens)
    assert (plan.rows, plan.cols) == (2, 4)
    assert plan.position_ids.tolist() == [[0, 1, 2, 3], [0, 1, 2, 0]]
    assert plan.valid.all()
    ids = torch.tensor([[11, 12, 13, 0], [21, 0, 0, 0], [31, 32, 33, 34]])
    assert packing.pack(ids, plan).tolist() == [[31, 32, 33, 34], [11, 12, 13, 21]]
    index = packing.packed_index(plan, 3, 4).view(3, 4)
    assert index.tolist() == [[4, 5, 6, -1], [7, -1, -1, -1], [0, 1, 2, 3]]


def test_pack_plan_pads_a_row_tail_as_its_own_sequence():
    plan = packing.pack_plan(torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]))
    assert plan.position_ids.tolist() == [[0, 1, 2, 0], [0, 1, 0, 1]]
    assert plan.valid.tolist() == [[True, True, True, False], [True, True, False, False]]
    assert not packing.is_right_padded(torch.tensor([[0, 1, 1]]))


def _tiny_model(attn: str):
    from peft import LoraConfig, get_peft_model
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    config = MixtralConfig(
        vocab_size=1000,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        output_router_logits=True,
        router_aux_loss_coef=0.02,
        sliding_window=None,
        attn_implementation=attn,
    )
    model = get_peft_model(MixtralForCausalLM(config), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)  # a non-zero adapter, so its gradients are not trivial
    return model


def _padded_batch(lengths: list[int], vocab: int = 1000, prompt: int = 3):
    g = torch.Generator().manual_seed(1)
    width = max(lengths)
    ids = torch.randint(3, vocab, (len(lengths), width), generator=g)
    mask = (torch.arange(width) < torch.tensor(lengths)[:, None]).long()
    ids[mask == 0] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :prompt] = -100  # prompt tokens carry no loss (as DPO's completion mask / SFT's assistant mask)
    return ids, mask, labels


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_forward_equals_trl_fused_head_on_the_padded_batch(attn):
    from trl.trainer.utils import add_fused_lm_head

    trl_model = _tiny_model(attn)
    ours = copy.deepcopy(trl_model)
    add_fused_lm_head(trl_model.get_base_model(), outputs=packing.DPO_OUTPUTS)
    add_fused_lm_head(ours.get_base_model(), outputs=packing.DPO_OUTPUTS)
    assert packing.install(ours, packing.DPO_OUTPUTS)
    ids, mask, labels = _padded_batch([37, 5, 60, 22, 60, 13, 41, 8])
    assert packing.pack_plan(mask).rows < len(mask)  # the batch really is packed into fewer rows
    outs, grads = [], []
    for model in (trl_model, ours):
        out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True, use_cache=False)
        (out.log_probs.sum() + out.aux_loss).backward()
        outs.append(out)
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    a, b = outs
    for field in ("log_probs", "entropy", "mean_logits"):
        torch.testing.assert_close(getattr(b, field), getattr(a, field), atol=2e-5, rtol=1e-5)
    assert torch.equal(a.is_top1, b.is_top1) and torch.equal(a.label_mask, b.label_mask)
    torch.testing.assert_close(b.aux_loss, a.aux_loss)
    torch.testing.assert_close(b.loss, a.loss)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == 8
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_position_id_packing_keeps_sequences_apart(attn):
    """TRL's `packing=True` (bfd) rows: one row, position_ids restarting at 0, no attention mask. transformers 5
    must turn that into a block-diagonal causal mask for Mixtral on CPU: each sequence's logits are those it has
    alone."""
    model = _tiny_model(attn).eval()
    lengths = [7, 12, 5]
    seqs = [torch.randint(3, 1000, (n,), generator=torch.Generator().manual_seed(n)) for n in lengths]
    packed = torch.cat(seqs)[None]
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    with torch.no_grad():
        together = model(input_ids=packed, position_ids=positions, use_cache=False).logits[0]
        alone = torch.cat([model(input_ids=s[None], use_cache=False).logits[0] for s in seqs])
        leaked = model(input_ids=packed, use_cache=False).logits[0]  # no position reset: one long sequence
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    assert (leaked[lengths[0] :] - alone[lengths[0] :]).abs().max() > 1e-3  # the check can fail


def test_packed_forward_leaves_other_calls_to_the_original_forward():
    from trl.trainer.utils import add_fused_lm_head

    model = _tiny_model("sdpa")
    add_fused_lm_head(model.get_base_model())
    packing.install(model, packing.SFT_OUTPUTS)
    ids, mask, _ = _padded_batch([9, 4])
    out = model(input_ids=ids, attention_mask=mask, use_cache=False)  # eval / generation: plain logits
    assert out.logits.shape == (2, 9, 1000)


def test_tiled_log_probs_match_log_softmax_and_trl_conventions():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(300, 16, generator=g, requires_grad=True)
    weight = torch.randn(50, 16, generator=g)
    targets = torch.randint(0, 50, (300,), generator=g)
    weight[7] = weight[3]  # tokens 3 and 7 always tie: the first maximum (3) is the top-1, as argmax says
    targets[:20] = 7
    outputs = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")
    log_probs, entropy, log_sum_sq, mean_logits, is_top1 = tiled_log_probs(hidden, weight, targets, outputs)
    logits = hidden @ weight.t()
    ref = torch.log_softmax(logits, -1)
    torch.testing.assert_close(log_probs, ref.gather(1, targets[:, None]).squeeze(1))
    # H = log Z - sum p z, as TRL computes it: cancellation where H is small (fp32)
    torch.testing.assert_close(entropy, -(ref.exp() * ref).sum(-1), atol=5e-5, rtol=1e-3)
    torch.testing.assert_close(log_sum_sq, torch.log((ref.exp() ** 2).sum(-1)))
    torch.testing.assert_close(mean_logits, logits.mean(-1))
    assert torch.equal(is_top1, logits.argmax(-1) == targets) and not is_top1[:20].any()
    weights = torch.randn(300, generator=g)
    (grad,) = torch.autograd.grad((log_probs * weights).sum(), hidden)
    (want,) = torch.autograd.grad((ref.gather(1, targets[:, None]).squeeze(1) * weights).sum(), hidden)
    torch.testing.assert_close(grad, want)


def test_tiled_log_probs_refuse_a_trainable_head():
    with pytest.raises(ValueError, match="LM head"):
        tiled_log_probs(torch.randn(2, 4), torch.randn(5, 4, requires_grad=True), torch.tensor([0, 1]), ("log_probs",))
