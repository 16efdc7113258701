"""The embedded default backbone: a small random-weight Mixtral with the REAL Mixtral tokenizer.

The tokenizer is Mixtral 8x7B's own SentencePiece model (32000 pieces), shipped in the
`mistral-common` package, so a fresh machine needs no hub download.
"""

from __future__ import annotations

import shutil
import tempfile
from importlib import resources
from pathlib import Path

import torch
from transformers import AutoTokenizer, GenerationConfig, MixtralConfig, MixtralForCausalLM

from align.chat import ensure_chat_template
from align.model_dir import write_model_dir

TINY_SHAPE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_local_experts": 8,
    "num_experts_per_tok": 2,
    "max_position_embeddings": 4096,
}

_TOKENIZER_CONFIG = (
    '{"add_bos_token": true, "add_eos_token": false, "bos_token": "<s>", "eos_token": "</s>", '
    '"unk_token": "<unk>", "model_max_length": 32768, "tokenizer_class": "LlamaTokenizer"}'
)


def mixtral_tokenizer():
    """Mixtral 8x7B's tokenizer from `mistral-common`, with pad = unk and the Mixtral-Instruct template."""
    source = resources.files("mistral_common") / "data" / "tokenizer.model.v1"
    with tempfile.TemporaryDirectory() as tmp:
        with resources.as_file(source) as model_file:
            shutil.copyfile(model_file, Path(tmp) / "tokenizer.model")
        (Path(tmp) / "tokenizer_config.json").write_text(_TOKENIZER_CONFIG)
        tokenizer = AutoTokenizer.from_pretrained(tmp)
    tokenizer.pad_token = tokenizer.unk_token
    ensure_chat_template(tokenizer, "mixtral")
    return tokenizer


def tiny_config(vocab_size: int = 32000, **overrides) -> MixtralConfig:
    """A Mixtral config of the tiny default shape (GQA, 8 experts, top-2, router aux loss on)."""
    shape = {**TINY_SHAPE, **overrides}
    return MixtralConfig(
        vocab_size=vocab_size,
        sliding_window=None,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
        output_router_logits=True,
        router_aux_loss_coef=0.02,
        **shape,
    )


def build_tiny_mixtral(out_dir: str | Path, seed: int = 0, **overrides) -> Path:
    """Write a random-init tiny Mixtral (safetensors) + tokenizer to `out_dir`, atomically."""
    out = Path(out_dir)
    tokenizer = mixtral_tokenizer()
    torch.manual_seed(seed)
    model = MixtralForCausalLM(tiny_config(len(tokenizer), **overrides)).to(torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=1, eos_token_id=2, pad_token_id=0, max_new_tokens=64, do_sample=False
    )
    return write_model_dir(model, tokenizer, out)
