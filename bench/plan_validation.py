"""Validate `align plan`: measured peak memory of one training step vs the planner's estimate.

    python -m bench.plan_validation [--only NAME ...] [--device cpu|cuda] [--out FILE]

Each config runs in a fresh child process: a float32 Mixtral (bf16 with --device cuda) with TRL 1.16's chunked
log-prob head (as SFTTrainer/DPOTrainer add it), LoRA exactly as align wraps it (`align.moe.adapters.wrap(model,
align.lora.lora_config(LoraSection(...)), plan)`), fused AdamW states already created (a steady-state step), then
ONE step: forward (DPO: chosen + rejected, then a no-grad reference forward with the adapter disabled), backward,
gradient clipping, AdamW step.

CPU measurement: after its imports the child resets the kernel's peak-RSS mark (`echo 5 > /proc/self/clear_refs`)
and reads VmRSS; the result is VmHWM at the end minus that RSS (fallback: resource.getrusage ru_maxrss). glibc
serves every allocation >= 64 KiB with its own mmap (MALLOC_MMAP_THRESHOLD_), so freed tensors leave the RSS at
once and the mark follows live tensor bytes, not the heap's caching. CUDA: torch.cuda.max_memory_allocated() minus
the allocation before building. The estimate is `align plan`'s arithmetic for that device without the CUDA
allowance (context and fragmentation are not in either measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "plan_validation.json"
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "131072", "TOKENIZERS_PARALLELISM": "false"}
TOLERANCE = 0.20
MIB = 1024**2
COLUMNS = ("name", "hidden", "intermediate", "layers", "heads", "kv_heads", "experts", "vocab", "batch", "seq", "gc",
           "stage", "experts_policy")  # fmt: skip
ROWS = [
    ("h256-L2-E4-v32k-sft", 256, 512, 2, 8, 2, 4, 32000, 2, 512, False, "sft", "all"),
    ("h256-L2-E4-v32k-sft-gc", 256, 512, 2, 8, 2, 4, 32000, 2, 512, True, "sft", "all"),
    ("h512-L4-E8-v2k-sft", 512, 1024, 4, 8, 2, 8, 2000, 3, 1024, False, "sft", "all"),
    ("h512-L4-E8-v2k-sft-gc", 512, 1024, 4, 8, 2, 8, 2000, 3, 1024, True, "sft", "all"),
    ("h768-L2-E8-v32k-dpo", 768, 1536, 2, 12, 4, 8, 32000, 1, 1024, False, "dpo", "all"),
    ("h512-L3-E8-v8k-dpo-gc", 512, 1792, 3, 8, 8, 8, 8000, 2, 768, True, "dpo", "all"),
    ("h512-L4-E8-v4k-attn-only", 512, 1024, 4, 8, 2, 8, 4000, 2, 1024, False, "sft", "none"),
    ("h384-L4-E8-v4k-2of8", 384, 1024, 4, 6, 2, 8, 4000, 4, 512, False, "sft", "two"),
]  # fmt: skip
CONFIGS = [{**dict(zip(COLUMNS, row, strict=True)), "top_k": 2, "r": 16} for row in ROWS]


def expert_policy(spec: dict):
    """The lora.experts value of a config ('two': experts 0 and 1 of every layer, an explicit selection)."""
    if spec["experts_policy"] == "two":
        return {layer: [0, 1] for layer in range(spec["layers"])}
    return spec["experts_policy"]


def model_config(spec: dict) -> dict:
    """config.json-style mapping of a validation config."""
    keys = {"hidden": "hidden_size", "intermediate": "intermediate_size", "layers": "num_hidden_layers",
            "heads": "num_attention_heads", "kv_heads": "num_key_value_heads", "vocab": "vocab_size",
            "experts": "num_local_experts", "top_k": "num_experts_per_tok"}  # fmt: skip
    return {"model_type": "mixtral", "tie_word_embeddings": False, **{v: spec[k] for k, v in keys.items()}}


def planned(spec: dict, device: str):
    """The planner's estimate for a config on `device` (fp32 on cpu, bf16 on cuda), without the CUDA allowance."""
    from align.config.schema import LoraSection
    from align.plan import Parallel, StageInput, Workload, estimate, shape_from_config
    from align.plan.recipe_input import lora_shape

    shape = shape_from_config(model_config(spec), spec["name"])
    lora, _ = lora_shape(LoraSection(r=spec["r"], alpha=2 * spec["r"], experts=expert_policy(spec)), shape)
    dpo, b = spec["stage"] == "dpo", 4 if device == "cpu" else 2
    work = Workload(2 * spec["batch"] if dpo else spec["batch"], spec["seq"], spec["gc"], b, 4, device, True, dpo)
    return estimate(StageInput(spec["stage"], shape, lora, work, Parallel(), b, None, False), allowance=0.0)


# ---------------------------------------------------------------- measured side (child process)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


class Meter:
    """Peak memory since `start()`: host RSS high-water mark on cpu, allocated CUDA memory on cuda."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.method = "torch.cuda.max_memory_allocated" if device == "cuda" else "VmHWM after clear_refs"

    def now(self) -> int:
        if self.device == "cuda":
            import torch

            return torch.cuda.memory_allocated()
        return _status_kib("VmRSS") * 1024

    def start(self) -> int:
        if self.device == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                self.method = "ru_maxrss"
        return self.now()

    def peak(self) -> int:
        if self.device == "cuda":
            import torch

            return torch.cuda.max_memory_allocated()
        if self.method == "ru_maxrss":
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return _status_kib("VmHWM") * 1024


def build(spec: dict, device: str):
    """Mixtral + TRL's fused log-prob head + align's LoRA on `device`; returns (model, trainable params)."""
    import torch
    from peft import get_peft_model
    from transformers import MixtralConfig, MixtralForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from align.config.schema import LoraSection
    from align.lora import lora_config
    from align.moe.adapters import wrap
    from align.moe.placement import assign_ranks, select_experts

    config = MixtralConfig(**model_config(spec), output_router_logits=True, router_aux_loss_coef=0.02,
                           sliding_window=None, max_position_embeddings=4096, use_cache=False)  # fmt: skip
    torch.manual_seed(0)
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    model = MixtralForCausalLM(config).to(device=device, dtype=dtype)
    extra = ("mean_logits",) if spec["stage"] == "dpo" else ()
    add_fused_lm_head(model, outputs=("log_probs", "entropy", *extra, "is_top1"))
    section = LoraSection(r=spec["r"], alpha=2 * spec["r"], experts=expert_policy(spec))
    if section.experts == "none":
        model = get_peft_model(model, lora_config(section))
    else:
        selected = select_experts(section.policy(), None, spec["layers"], spec["experts"])
        model = wrap(model, lora_config(section), assign_ranks(selected, None, section.r))
    if spec["gc"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model, [p for p in model.parameters() if p.requires_grad]


def make_batch(spec: dict, device: str) -> dict:
    """Random tokens, the last row padded (so the attention mask is explicit, as with real batches)."""
    import torch

    rows = 2 * spec["batch"] if spec["stage"] == "dpo" else spec["batch"]
    ids = torch.randint(3, spec["vocab"], (rows, spec["seq"]), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[-1, -spec["seq"] // 16 :] = 0
    keep = mask.bool()
    if spec["stage"] == "dpo":
        keep &= torch.arange(spec["seq"]) >= spec["seq"] // 2  # completion = second half
    batch = {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(~keep, -100)}
    return {k: v.to(device) for k, v in batch.items()}


def train_step(model, batch: dict, dpo: bool) -> None:
    """Forward (+ DPO reference forward) and backward, computing the loss as TRL 1.16's trainers do."""
    import torch
    import torch.nn.functional as F

    kwargs = {**batch, "fused_lm_head": True, "use_cache": False, "output_router_logits": True}
    out = model(**kwargs)
    if not dpo:
        loss = -out.log_probs.sum() / out.label_mask.sum() + 0.02 * out.aux_loss
    else:
        with torch.no_grad(), model.disable_adapter():
            ref = model(**{**kwargs, "output_router_logits": False}).log_probs.sum(1)
        chosen, rejected = out.log_probs.sum(1).chunk(2)
        ref_chosen, ref_rejected = ref.chunk(2)
        loss = -F.logsigmoid(0.1 * ((chosen - ref_chosen) - (rejected - ref_rejected))).mean() + 0.02 * out.aux_loss
    loss.backward()


def child_main(spec: dict, device: str) -> None:
    """Build, one steady-state step, print RESULT {json}."""
    import peft  # noqa: F401  every import happens before the baseline is taken
    import torch
    import transformers.models.mixtral.modeling_mixtral  # noqa: F401
    import trl.trainer.utils  # noqa: F401

    import align.lora  # noqa: F401
    import align.moe.adapters  # noqa: F401

    meter = Meter(device)
    base = meter.start()
    model, params = build(spec, device)
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)
    for p in params:  # create the AdamW states now: the measured step is a steady-state one
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    batch = make_batch(spec, device)
    static = meter.now() - base
    start = time.perf_counter()
    train_step(model, batch, spec["stage"] == "dpo")
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    versions = {name: sys.modules[name].__version__ for name in ("torch", "transformers", "peft", "trl")}
    result = {"peak_extra": meter.peak() - base, "static": static, "step_s": round(seconds, 2),
              "trainable": sum(p.numel() for p in params), "method": meter.method, "versions": versions}  # fmt: skip
    print("RESULT " + json.dumps(result), flush=True)


def measure(spec: dict, device: str) -> dict:
    """Run one config in a fresh interpreter and parse its RESULT line."""
    cmd = [sys.executable, "-m", "bench.plan_validation", "--device", device, "--child", json.dumps(spec)]
    done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **CHILD_ENV}, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(f"{spec['name']}: child failed (rc {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


# ---------------------------------------------------------------- driver


def compare(spec: dict, measured: dict, device: str) -> dict:
    """One result row: planned vs measured (MiB) and the relative error of the peak."""
    from align.plan import lora_params

    est = planned(spec, device)
    plan_static = sum(row.gpu for row in est.rows if row.section != "activations")
    error = est.gpu_total / measured["peak_extra"] - 1
    mib = lambda n: round(n / MIB, 1)  # noqa: E731
    return {"name": spec["name"], "spec": spec, "measured_peak_mib": mib(measured["peak_extra"]),
            "planned_peak_mib": mib(est.gpu_total), "error": round(error, 4),
            "within_tolerance": abs(error) <= TOLERANCE,
            "measured_static_mib": mib(measured["static"]), "planned_static_mib": mib(plan_static),
            "planned_saved_mib": mib(est.acts.saved), "planned_transient_mib": mib(est.acts.transient),
            "measured_trainable": measured["trainable"],
            "planned_trainable": sum(lora_params(est.stage.model, est.stage.lora).values()),
            "step_s": measured["step_s"], "method": measured["method"], "versions": measured["versions"]}  # fmt: skip


def table(rows: list[dict]) -> str:
    """Markdown table of the comparison."""
    head = ("| config | tokens | GC | stage | measured peak MiB | planned MiB | error | static meas. / plan MiB "
            "| plan: saved + transient MiB |")  # fmt: skip
    lines = [head, "|" + "---|" * 9]
    for row in rows:
        spec = row["spec"]
        tokens = spec["batch"] * spec["seq"] * (2 if spec["stage"] == "dpo" else 1)
        lines.append(
            f"| {row['name']} | {tokens} | {'on' if spec['gc'] else 'off'} | {spec['stage']} "
            f"| {row['measured_peak_mib']:.0f} | {row['planned_peak_mib']:.0f} | {100 * row['error']:+.1f}% "
            f"| {row['measured_static_mib']:.0f} / {row['planned_static_mib']:.0f} "
            f"| {row['planned_saved_mib']:.0f} + {row['planned_transient_mib']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", help="config names to run (default: all)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--out", help="results JSON ('' to skip; cpu default: bench/results/plan_validation.json)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(json.loads(args.child), args.device)
        return 0
    specs = [spec for spec in CONFIGS if not args.only or spec["name"] in args.only]
    start, rows = time.perf_counter(), []
    for spec in specs:
        rows.append(compare(spec, measure(spec, args.device), args.device))
        last = rows[-1]
        print(f"{spec['name']}: measured {last['measured_peak_mib']:.0f} MiB, planned {last['planned_peak_mib']:.0f} "
              f"MiB ({100 * last['error']:+.1f}%), trainable {last['measured_trainable']:,} "
              f"(plan {last['planned_trainable']:,})", flush=True)  # fmt: skip
    seconds = round(time.perf_counter() - start, 1)
    print(table(rows))
    print(f"{sum(r['within_tolerance'] for r in rows)}/{len(rows)} within +-{TOLERANCE:.0%}; {seconds:.0f} s")
    out = args.out if args.out is not None else (str(RESULTS) if args.device == "cpu" else "")
    if out:
        meta = {"device": args.device, "python": platform.python_version(), "machine": platform.machine(),
                "cpus": os.cpu_count(), "tolerance": TOLERANCE, "seconds": seconds}  # fmt: skip
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    return 0 if all(row["within_tolerance"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
