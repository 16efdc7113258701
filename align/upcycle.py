"""Sparse upcycling (Komatsuzaki et al. 2022): a dense Llama/Mistral checkpoint becomes a Mixtral.

Every expert starts as a copy of the dense MLP (optionally plus small noise), the router is a small
random matrix, and attention, embeddings and norms are copied. Mixtral renormalises its top-k router
weights to sum to 1 (`MixtralTopKRouter`, transformers 5.24), so with identical experts the MoE block
computes exactly the dense MLP: at init the upcycled model's logits equal the dense model's.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    MixtralConfig,
    MixtralForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
)

from align.chatml import with_generation_markers
from align.errors import ModelError
from align.model_dir import write_model_dir

log = logging.getLogger("align")

DENSE_MODEL_TYPES = {"llama", "mistral"}
# Fields a Llama/Mistral config shares with MixtralConfig, copied unchanged.
SHARED_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "max_position_embeddings",
    "initializer_range",
    "rms_norm_eps",
    "rope_parameters",
    "tie_word_embeddings",
    "attention_dropout",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _check_dense(config: PretrainedConfig, where: str) -> None:
    """Refuse what a Mixtral layer cannot represent (biases, per-layer attention types)."""
    if config.model_type not in DENSE_MODEL_TYPES:
        raise ModelError(
            f"{where}: cannot upcycle a '{config.model_type}' model; supported dense architectures: "
            f"{sorted(DENSE_MODEL_TYPES)}"
        )
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(config, flag, False):
            raise ModelError(f"{where}: {flag} is true, but Mixtral layers have no biases; cannot upcycle")
    if getattr(config, "layer_types", None):
        raise ModelError(f"{where}: per-layer attention types (layer_types) have no Mixtral equivalent")


def mixtral_config(dense: PretrainedConfig, experts: int, top_k: int, aux_loss_coef: float = 0.02) -> MixtralConfig:
    """The Mixtral config of an upcycled dense model: same shapes, rope, tying and sliding window."""
    if experts < 2 or not 1 <= top_k <= experts:
        raise ModelError(f"need --experts >= 2 and 1 <= --top-k <= experts; got experts={experts}, top_k={top_k}")
    fields = {name: getattr(dense, name) for name in SHARED_FIELDS}
    # Llama has no sliding window; Mistral's may be None (Mistral 7B v0.2+) or a window size.
    fields["sliding_window"] = getattr(dense, "sliding_window", None) if dense.model_type == "mistral" else None
    return MixtralConfig(
        **fields,
        num_local_experts=experts,
        num_experts_per_tok=top_k,
        output_router_logits=True,
        router_aux_loss_coef=aux_loss_coef,
    )


def _perturbed(weight: torch.Tensor, noise: float, generator: torch.Generator) -> torch.Tensor:
    """weight + noise * std(weight) * N(0, 1): noise is relative to the matrix's own scale."""
    if noise == 0:
        return weight.clone()
    eps = torch.randn(weight.shape, generator=generator, dtype=torch.float32)
    return (weight.float() + noise * weight.float().std() * eps).to(weight.dtype)


def upcycled_state_dict(
    dense: dict[str, torch.Tensor],
    config: MixtralConfig,
    noise: float = 0.0,
    router_std: float | None = None,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Mixtral parameters (transformers 5 in-memory names, fused experts) from a dense state dict.

    gate_up_proj[e] = cat(gate_proj, up_proj) (gate first: MixtralExperts chunks gate, then up);
    down_proj[e] = down_proj. The router weight is N(0, router_std) (default: initializer_range).
    """
    generator = torch.Generator().manual_seed(seed)
    std = config.initializer_range if router_std is None else router_std
    out: dict[str, torch.Tensor] = {}
    mlp_keys = set()
    for layer in range(config.num_hidden_layers):
        prefix = f"model.layers.{layer}.mlp."
        gate, up, down = (dense[f"{prefix}{name}_proj.weight"] for name in ("gate", "up", "down"))
        mlp_keys.update(f"{prefix}{name}_proj.weight" for name in ("gate", "up", "down"))
        gate_up = torch.cat([gate, up], dim=0)
        out[f"{prefix}experts.gate_up_proj"] = torch.stack(
            [_perturbed(gate_up, noise, generator) for _ in range(config.num_local_experts)]
        )
        out[f"{prefix}experts.down_proj"] = torch.stack(
            [_perturbed(down, noise, generator) for _ in range(config.num_local_experts)]
        )
        router = torch.randn((config.num_local_experts, config.hidden_size), generator=generator) * std
        out[f"{prefix}gate.weight"] = router.to(gate.dtype)
    for name, tensor in dense.items():
        if name not in mlp_keys:
            out[name] = tensor
    if config.tie_word_embeddings:
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return out


def load_dense(source: str | Path) -> tuple[PreTrainedModel, object]:
    """The dense model (float32) and its tokenizer from a safetensors directory or a GGUF file."""
    path = Path(source)
    if not path.exists():
        raise ModelError(f"dense model not found: {source} (a safetensors directory or a .gguf file)")
    if path.is_file() and path.suffix == ".gguf":
        return _load_gguf(path)
    if not (path / "config.json").is_file():
        raise ModelError(f"{source}: no config.json; expected a transformers safetensors directory or a .gguf file")
    _check_dense(AutoConfig.from_pretrained(path), str(source))
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, use_safetensors=True)
    except OSError as err:
        raise ModelError(f"cannot load the weights of {source} (safetensors only): {err}") from None
    return model, AutoTokenizer.from_pretrained(path)


def _load_gguf(path: Path) -> tuple[PreTrainedModel, object]:
    """A GGUF file, dequantized to float32 by transformers (needs the `gguf` package)."""
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ModelError(f"{path}: reading GGUF files needs the `gguf` package: pip install gguf") from None
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    _check_dense(model.config, str(path))
    # The weights are dequantized now; saving must not claim they are still GGUF-quantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):  # set by the GGUF loader only
        del model.config.quantization_config
    return model, tokenizer


def upcycle(
    source: str | Path,
    out_dir: str | Path,
    experts: int,
    top_k: int,
    noise: float = 0.0,
    seed: int = 0,
    dtype: str = "float32",
    aux_loss_coef: float = 0.02,
) -> Path:
    """Write an upcycled MixtralForCausalLM + tokenizer to `out_dir` (atomically); return it."""
    dense, tokenizer = load_dense(source)
    config = mixtral_config(dense.config, experts, top_k, aux_loss_coef)
    state = upcycled_state_dict(dense.state_dict(), config, noise=noise, seed=seed)
    del dense
    model = MixtralForCausalLM(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:  # a dense layout align does not know: fail rather than leave random weights
        raise ModelError(f"{source}: weights do not map onto Mixtral (missing {missing[:3]}, extra {unexpected[:3]})")
    if config.tie_word_embeddings:
        model.tie_weights()
    model = model.to(DTYPES[dtype])
    model.generation_config.bos_token_id = config.bos_token_id
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    marked = with_generation_markers(tokenizer.chat_template)
    if marked is not None:
        tokenizer.chat_template = marked
        log.info("chat template kept, with {% generation %} markers added (same rendering)")
    return write_model_dir(model, tokenizer, out_dir)
