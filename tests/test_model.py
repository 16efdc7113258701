"""Model loading: Mixtral accepted, dense refused unless allowed, safetensors only, clear errors."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from align.config.schema import ModelSection, QuantizationSection
from align.errors import ModelError
from align.model import load_model, load_tokenizer
from align.runtime import Runtime, resolve_runtime

CPU = Runtime("cpu", torch.float32)


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("dense")
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def test_loads_tiny_mixtral_with_router_logits_and_aux_coef(tiny_dir):
    model = load_model(ModelSection(name_or_path=str(tiny_dir), router_aux_loss_coef=0.05), QuantizationSection(), CPU)
    assert model.config.model_type == "mixtral" and model.dtype == torch.float32
    assert model.config.output_router_logits is True and model.config.router_aux_loss_coef == 0.05
    assert model.config.use_cache is False


def test_dense_model_is_refused_unless_allowed(dense_dir):
    with pytest.raises(ModelError, match="architecture 'llama' is not a Mixtral mixture-of-experts model"):
        load_model(ModelSection(name_or_path=str(dense_dir)), QuantizationSection(), CPU)
    model = load_model(ModelSection(name_or_path=str(dense_dir), allow_dense=True), QuantizationSection(), CPU)
    assert model.config.model_type == "llama"


def test_missing_directory_and_pickle_only_weights(tmp_path, dense_dir):
    with pytest.raises(ModelError, match="model directory not found"):
        load_model(ModelSection(name_or_path=str(tmp_path / "nope")), QuantizationSection(), CPU)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((dense_dir / "config.json").read_text())
    torch.save(LlamaForCausalLM.from_pretrained(dense_dir).state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(ModelError, match="has pickle weights .* convert them to safetensors"):
        load_model(ModelSection(name_or_path=str(pickled), allow_dense=True), QuantizationSection(), CPU)


def test_tokenizer_gets_pad_and_mixtral_template(tiny_dir):
    tok = load_tokenizer(ModelSection(name_or_path=str(tiny_dir)))
    assert tok.pad_token == "<unk>" and "[INST]" in tok.chat_template and len(tok) == 32000


def test_cpu_runtime_is_float32_by_default():
    if torch.cuda.is_available():
        pytest.skip("CPU-only check")
    runtime = resolve_runtime("auto")
    assert runtime.dtype == torch.float32
    assert runtime.trainer_flags() == {"use_cpu": True, "bf16": False, "fp16": False}
