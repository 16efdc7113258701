"""Weight memory of a Mixtral-shaped model in 4 bit: align's load_in_4bit vs stock bitsandbytes.

    python -m bench.quant_memory [--hidden 1024 --intermediate 3584 --layers 8 --experts 8 --vocab 8192]

Both load the same bf16 safetensors checkpoint through `from_pretrained(quantization_config=...)`;
align then quantizes the fused experts (align.model.load_model). Memory is the bytes of every
parameter, buffer and bitsandbytes quantization constant (absmax, nested absmax, code) the model holds:
what stays resident for the weights, independent of allocator slack.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, MixtralConfig, MixtralForCausalLM

from align.config.schema import ModelSection, QuantizationSection
from align.model import load_model
from align.runtime import Runtime


def weight_bytes(model) -> int:
    """Bytes held by parameters, buffers and bitsandbytes quantization states."""
    total = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    states = [p.quant_state for p in model.parameters() if getattr(p, "quant_state", None) is not None]
    for module in model.modules():
        states += [s for group in getattr(module, "states", {}).values() for s in group]
    for s in states:
        total += s.absmax.numel() * s.absmax.element_size()
        if s.state2 is not None:
            total += s.state2.absmax.numel() * s.state2.absmax.element_size() + s.state2.code.numel() * 4
    return total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--intermediate", type=int, default=3584)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=8192)
    args = parser.parse_args()
    config = MixtralConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=8,
        num_key_value_heads=2,
        num_local_experts=args.experts,
        num_experts_per_tok=2,
        tie_word_embeddings=False,
    )
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        MixtralForCausalLM(config).to(torch.bfloat16).save_pretrained(tmp)
        params = sum(p.numel() for p in MixtralForCausalLM(config).parameters())
        results = {}
        t = time.perf_counter()
        stock = AutoModelForCausalLM.from_pretrained(
            tmp,
            dtype=torch.bfloat16,
            quantization_config=BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16,
            ),
        )
        results["stock load_in_4bit"] = {"bytes": weight_bytes(stock), "seconds": time.perf_counter() - t}
        del stock
        t = time.perf_counter()
        ours = load_model(
            ModelSection(name_or_path=tmp, dtype="bfloat16"),
            QuantizationSection(load_in_4bit=True),
            Runtime("cpu", torch.bfloat16),
        )
        results["align load_in_4bit"] = {"bytes": weight_bytes(ours), "seconds": time.perf_counter() - t}
        results["bf16 (no quantization)"] = {"bytes": params * 2, "seconds": 0.0}
    for r in results.values():
        r["bytes_per_param"] = r["bytes"] / params
    ratio = results["stock load_in_4bit"]["bytes"] / results["align load_in_4bit"]["bytes"]
    print(f"Mixtral-shaped model: {params / 1e6:.1f} M parameters ({vars(args)})")
    print(f"{'loader':26s} {'weights MiB':>12s} {'bytes/param':>12s}")
    for name, r in results.items():
        print(f"{name:26s} {r['bytes'] / 2**20:12.1f} {r['bytes_per_param']:12.3f}")
    target = results["align load_in_4bit"]["bytes_per_param"] <= 0.6
    print(f"stock / align = {ratio:.2f}x;  target <= 0.6 bytes/param with align: {'PASS' if target else 'FAIL'}")
    out = Path(__file__).parent / "results" / "quant_memory.json"
    out.write_text(
        json.dumps(
            {"args": vars(args), "parameters": params, "results": results, "stock_over_align": ratio, "pass": target},
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
