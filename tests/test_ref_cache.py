"""DPO reference log-probs cached on disk: keyed by data + reference weights, equal to TRL's own precompute."""

from __future__ import annotations

import datasets
import pytest
import torch

from align.stages import ref_cache


def _rows(n: int = 6, shift: int = 0) -> datasets.Dataset:
    return datasets.Dataset.from_list(
        [{"prompt_ids": [1, 5 + i + shift], "chosen_ids": [7, 8, i], "rejected_ids": [9]} for i in range(n)]
    )


def test_data_digest_follows_rows_and_truncation():
    base = ref_cache.data_digest(_rows(), 128, "keep_start")
    assert base == ref_cache.data_digest(_rows(), 128, "keep_start")
    assert base != ref_cache.data_digest(_rows(shift=1), 128, "keep_start")
    assert base != ref_cache.data_digest(_rows(), 64, "keep_start")
    assert base != ref_cache.data_digest(_rows(), 128, "keep_end")


def test_with_reference_logps_computes_once_then_loads(tmp_path):
    rows = _rows()
    calls = []

    def compute():
        calls.append(1)
        values = {"ref_chosen_logps": [-1.0 * i for i in range(6)], "ref_rejected_logps": [-2.0 * i for i in range(6)]}
        return datasets.concatenate_datasets([rows, datasets.Dataset.from_dict(values)], axis=1)

    path = tmp_path / "cache" / "train-x.safetensors"
    first, hit = ref_cache.with_reference_logps(rows, path, compute, True, lambda: None)
    assert not hit and path.is_file() and len(calls) == 1
    again, hit = ref_cache.with_reference_logps(rows, path, compute, True, lambda: None)
    assert hit and len(calls) == 1
    assert again["ref_rejected_logps"] == pytest.approx(first["ref_rejected_logps"])
    _, hit = ref_cache.with_reference_logps(_rows(4), path, compute, True, lambda: None)  # other row count
    assert not hit and len(calls) == 2


def _sft_adapter(tiny_dir, out):
    """An attention LoRA adapter with non-zero B, saved like an SFT stage's output."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    model.save_pretrained(out)
    return out


def _dpo_trainer(cls, tiny_dir, adapter, tokenizer, out, **kwargs):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig

    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32), adapter, is_trainable=True
    )
    pairs = [
        {
            "prompt": [{"role": "user", "content": f"What is {i} + {i}?"}],
            "chosen": [{"role": "assistant", "content": f"{2 * i}."}],
            "rejected": [{"role": "assistant", "content": f"It is {2 * i + 1}, I think, maybe."}],
        }
        for i in range(10)
    ]
    args = DPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=4,
        max_length=64,
        precompute_ref_log_probs=True,
        use_cpu=True,
        bf16=False,
        report_to="none",
        max_steps=1,
    )
    return cls(
        model=model,
        ref_model=None,
        args=args,
        train_dataset=datasets.Dataset.from_list(pairs),
        processing_class=tokenizer,
        **kwargs,
    )


def test_align_dpo_trainer_caches_what_trl_precomputes(tmp_path, tiny_dir, tokenizer):
    from trl import DPOTrainer

    from align.stages.trainers import AlignDPOTrainer

    adapter = _sft_adapter(tiny_dir, tmp_path / "sft")
    cache = tmp_path / "cache"
    trl = _dpo_trainer(DPOTrainer, tiny_dir, adapter, tokenizer, tmp_path / "w0")
    first = _dpo_trainer(AlignDPOTrainer, tiny_dir, adapter, tokenizer, tmp_path / "w1", ref_cache_dir=cache)
    assert first.packed_forward and first.reference_cache["train"]["hit"] is False
    second = _dpo_trainer(AlignDPOTrainer, tiny_dir, adapter, tokenizer, tmp_path / "w2", ref_cache_dir=cache)
    assert second.reference_cache["train"]["hit"] is True
    for column in ref_cache.COLUMNS:
        want = torch.tensor(trl.train_dataset[column])
        assert want.abs().min() > 1  # real log-probs, not zeros
        torch.testing.assert_close(torch.tensor(first.train_dataset[column]), want, atol=1e-4, rtol=1e-5)
        assert second.train_dataset[column] == first.train_dataset[column]
    # another reference (the SFT adapter changed): another key, computed again
    with torch.no_grad():
        next(p for n, p in second.model.named_parameters() if ".ref." in n and "lora_B" in n).add_(0.1)
    other = ref_cache.reference_digest(second.model)
    assert other != ref_cache.reference_digest(first.model)
