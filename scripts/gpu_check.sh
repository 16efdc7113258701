#!/usr/bin/env bash
# The real CUDA paths, on one GPU, in a few minutes: 4-bit experts forward/backward, QLoRA SFT -> DPO on a
# scaled Mixtral, and the measured peak CUDA memory next to `align plan`'s prediction.
#
#   bash scripts/gpu_check.sh [OUT_DIR]        (needs a CUDA GPU; results in OUT_DIR/gpu_check.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/gpu_check}"
mkdir -p "$OUT"
python - "$OUT/base" <<'PY'
import sys, torch
from transformers import MixtralConfig, MixtralForCausalLM
from align.tiny import mixtral_tokenizer
assert torch.cuda.is_available(), "gpu_check needs a CUDA GPU"
cfg = MixtralConfig(vocab_size=32000, hidden_size=2048, intermediate_size=7168, num_hidden_layers=8,
                    num_attention_heads=16, num_key_value_heads=4, num_local_experts=8, num_experts_per_tok=2,
                    sliding_window=None, output_router_logits=True, router_aux_loss_coef=0.02)
torch.manual_seed(0)
MixtralForCausalLM(cfg).to(torch.bfloat16).save_pretrained(sys.argv[1])
mixtral_tokenizer().save_pretrained(sys.argv[1])
print("scaled Mixtral written:", sum(p.numel() for p in MixtralForCausalLM(cfg).parameters()) / 1e9, "B params")
PY
ARGS=(model.name_or_path="$OUT/base" model.dtype=bfloat16 quantization.load_in_4bit=true output_dir="$OUT/run"
      sft.max_steps=10 dpo.max_steps=10 sft.max_length=1024 dpo.max_length=1024 sft.gradient_checkpointing=true
      dpo.gradient_checkpointing=true sft.eval_samples=32 dpo.eval_samples=32 "lora.experts={top_p: 0.5}")
python -m pytest -q tests/test_quant.py tests/test_routed_lora.py 2>&1 | tail -2 | tee "$OUT/gpu_check.txt"
python -m align run recipes/tiny-mixtral/pipeline.yaml "${ARGS[@]}" 2>&1 | tail -8 | tee -a "$OUT/gpu_check.txt"
python -m align plan recipes/tiny-mixtral/pipeline.yaml "${ARGS[@]}" --gpus 1 --gpu-mem 141GiB \
  | grep -E "TOTAL|VERDICT" | tee -a "$OUT/gpu_check.txt"
python -c "import json; s=json.load(open('$OUT/run/summary.json')); print({k: v.get('cuda_peak_gib') for k, v in s['stages'].items()}, 'GiB measured peak (torch.cuda.max_memory_allocated)')" | tee -a "$OUT/gpu_check.txt"
