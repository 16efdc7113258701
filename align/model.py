"""Load the tokenizer and the Mixtral backbone a recipe names; refuse what align cannot train."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedModel

from align.chat import ensure_chat_template
from align.config.schema import ModelSection, QuantizationSection
from align.errors import ModelError
from align.runtime import Runtime
from align.security import RepoIdError, check_repo_id, pickle_weights

log = logging.getLogger("align")

# Architectures whose fused-experts layout align knows (transformers 5 MixtralSparseMoeBlock).
MOE_MODEL_TYPES = {"mixtral"}


def check_architecture(config: PretrainedConfig, allow_dense: bool, where: str) -> str:
    """'moe' for a supported Mixtral; 'dense' when the recipe allows it; otherwise a clear error."""
    model_type = config.model_type
    if model_type in MOE_MODEL_TYPES:
        return "moe"
    if allow_dense:
        log.warning(
            "%s is a dense '%s' model: training it without expert features (model.allow_dense)",
            where,
            model_type,
        )
        return "dense"
    raise ModelError(
        f"{where}: architecture '{model_type}' is not a Mixtral mixture-of-experts model; align supports "
        f"{sorted(MOE_MODEL_TYPES)}. Set model.allow_dense: true to train a dense model anyway, "
        "or turn it into a Mixtral with `align upcycle`."
    )


def _model_config(section: ModelSection) -> PretrainedConfig:
    check_source(section.name_or_path)
    try:
        return AutoConfig.from_pretrained(
            section.name_or_path, revision=section.revision, trust_remote_code=section.trust_remote_code
        )
    except (OSError, ValueError) as err:
        if "trust_remote_code" in str(err):
            raise ModelError(
                f"{section.name_or_path} needs its own model code (auto_map in config.json), which align does not "
                "run unless the recipe sets model.trust_remote_code: true (only for code you trust)"
            ) from None
        reason = " ".join(str(err).split())[:300]
        raise ModelError(f"cannot read the model config of {section.name_or_path}: {reason}") from None


def check_source(name: str) -> None:
    """ModelError unless `name` is an existing local path or a well-formed hub id (checked before any download)."""
    if Path(name).exists():
        return
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise ModelError(f"model directory not found: {name}")
    try:
        check_repo_id(name)
    except RepoIdError as err:
        raise ModelError(f"model.name_or_path is neither a local directory nor a valid hub id: {err}") from None


def load_tokenizer(section: ModelSection, path: str | None = None):
    """The tokenizer with pad token and a chat template that marks assistant turns."""
    source = path or section.name_or_path
    check_source(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, revision=section.revision, trust_remote_code=section.trust_remote_code
        )
    except (OSError, ValueError) as err:
        reason = " ".join(str(err).split())[:300]
        raise ModelError(f"cannot load the tokenizer of {source}: {reason}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    which = ensure_chat_template(tokenizer, section.chat_template)
    if which == "mixtral":
        log.info("chat template: Mixtral-Instruct (with generation markers)")
    return tokenizer


def quantization_config(quant: QuantizationSection, runtime: Runtime):
    """A BitsAndBytesConfig for the recipe's `quantization:` section, or None."""
    if not quant.load_in_4bit:
        return None
    from transformers import BitsAndBytesConfig

    compute = runtime.dtype if quant.bnb_4bit_compute_dtype == "auto" else getattr(torch, quant.bnb_4bit_compute_dtype)
    storage = runtime.dtype if quant.bnb_4bit_quant_storage == "auto" else getattr(torch, quant.bnb_4bit_quant_storage)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=quant.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=compute,
        bnb_4bit_quant_storage=storage,
    )


def keep_trainable_4bit_layout(model: PreTrainedModel) -> int:
    """Stop bitsandbytes' CPU inference repacking of 4-bit Linear layers; returns how many were changed.

    Workaround for bitsandbytes 0.50.2 on CPUs with AVX512-BF16: the first eval-mode forward of a
    Linear4bit (align's held-out eval runs before training) repacks its weight for a CPU gemv kernel
    that has no autograd, and the repacking is kept. Training afterwards backpropagates through that
    kernel and silently drops the gradient to the layer's input (torch warns "an autograd kernel was
    not registered"). Remove when bitsandbytes converts back in train mode.
    """
    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)


def load_model(section: ModelSection, quant: QuantizationSection, runtime: Runtime) -> PreTrainedModel:
    """Load the backbone (safetensors only) in the runtime's dtype, router logits on for the aux loss."""
    config = _model_config(section)
    kind = check_architecture(config, section.allow_dense, section.name_or_path)
    kwargs = {}
    if kind == "moe":
        kwargs["output_router_logits"] = True
        if section.router_aux_loss_coef is not None:
            kwargs["router_aux_loss_coef"] = section.router_aux_loss_coef
        if section.experts_implementation:
            kwargs["experts_implementation"] = section.experts_implementation
    bnb = quantization_config(quant, runtime)
    pickles = pickle_weights(section.name_or_path)
    if pickles and not section.allow_pickle_weights:
        raise ModelError(
            f"{section.name_or_path} has pickle weights ({', '.join(pickles[:3])}) and no safetensors; unpickling "
            "can run code: convert them to safetensors, or set model.allow_pickle_weights: true if you trust them"
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(
            section.name_or_path,
            revision=section.revision,
            trust_remote_code=section.trust_remote_code,
            dtype=runtime.dtype,
            attn_implementation=section.attn_implementation,
            use_safetensors=None if pickles else True,
            quantization_config=bnb,
            **kwargs,
        )
    except (OSError, SafetensorError, pickle.UnpicklingError) as err:  # torch.load(weights_only=True) refusals
        reason = " ".join(str(err).split())[:300]
        raise ModelError(f"cannot load the weights of {section.name_or_path} (safetensors only): {reason}") from None
    model.config.use_cache = False  # training; packed batches stay separate only without the cache
    if bnb is not None:
        keep_trainable_4bit_layout(model)
    if bnb is not None and kind == "moe":  # stock load_in_4bit leaves the fused experts in 16 bit
        from align.moe.quant import quantize_experts

        count = quantize_experts(
            model,
            quant.bnb_4bit_quant_type,
            quant.bnb_4bit_use_double_quant,
            bnb.bnb_4bit_compute_dtype,
            bnb.bnb_4bit_quant_storage,
        )
        log.info("4-bit experts: %d MoE layers quantized (%s)", count, quant.bnb_4bit_quant_type)
    return model
