"""Peak memory of merging a LoRA into a sharded Mixtral checkpoint: align's streaming merge vs PEFT's.

    python -m bench.export_memory [--hidden 1024 --intermediate 3584 --layers 4 --base-shard 400MB --out-shard 200MB]

Builds a random fp32 Mixtral (saved in `--base-shard` shards) and a stock PEFT adapter on attention and all
fused experts, then runs each merge in a FRESH process and reports its peak RSS (VmHWM, reset after the
imports) above the RSS it had then:
  align: align.export (read one base tensor at a time, write `--out-shard` shards)
  peft:  from_pretrained + PeftModel.from_pretrained + merge_and_unload + save_pretrained
Memory, not time: the numbers do not depend on what else the machine runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys
from pathlib import Path
mode, work, out_shard = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
import torch
from transformers import AutoConfig, AutoModelForCausalLM
from peft import PeftModel
from align.export.adapter import read_adapter
from align.export.checkpoint import parse_size
from align.export.merge import merge_checkpoint
def status(key):  # MiB, from /proc/self/status (Linux)
    line = next(l for l in open("/proc/self/status") if l.startswith(key + ":"))
    return int(line.split()[1]) / 1024
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS, after the imports
before = status("VmRSS")
peak = lambda: status("VmHWM")
out = work / f"out-{mode}"
out.mkdir()
if mode == "align":
    cfg = AutoConfig.from_pretrained(work / "base")
    updates = read_adapter(work / "adapter", cfg.hidden_size, cfg.intermediate_size, cfg.num_local_experts)
    merge_checkpoint(work / "base", updates, out, cfg.intermediate_size, parse_size(out_shard))
else:
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(work / "base"), work / "adapter")
    model.merge_and_unload().save_pretrained(out, max_shard_size=out_shard)
print(json.dumps({"mode": mode, "peak_mib_above_imports": round(peak() - before)}))
"""


def build(work: Path, args) -> float:
    """Write the base checkpoint and a non-zero stock adapter; return the checkpoint size in MiB."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    config = MixtralConfig(
        vocab_size=32000,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=8,
        num_key_value_heads=4,
        num_local_experts=8,
        num_experts_per_tok=2,
        sliding_window=None,
        tie_word_embeddings=False,
    )
    model = MixtralForCausalLM(config).float()
    model.save_pretrained(work / "base", max_shard_size=args.base_shard)
    lora = LoraConfig(
        r=16,
        lora_alpha=32,
        target_modules=["q_proj", "v_proj"],
        target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"],
    )
    peft_model = get_peft_model(model, lora)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.add_(torch.randn_like(param) * 0.01)
    peft_model.save_pretrained(work / "adapter")
    return sum(p.stat().st_size for p in (work / "base").glob("*.safetensors")) / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--intermediate", type=int, default=3584)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--base-shard", default="400MB")
    p.add_argument("--out-shard", default="200MB")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        size = build(work, args)
        results = {"checkpoint_mib": round(size), "base_shard": args.base_shard, "out_shard": args.out_shard}
        for mode in ("align", "peft"):
            proc = subprocess.run(
                [sys.executable, "-c", CHILD, mode, str(work), args.out_shard],
                capture_output=True,
                text=True,
                check=True,
            )
            results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])["peak_mib_above_imports"]
    print(json.dumps(results))


if __name__ == "__main__":
    main()
