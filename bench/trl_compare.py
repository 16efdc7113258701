"""Benchmark: align's SFT and DPO steps against plain TRL, alternated in one process.

    python -m bench.trl_compare            # main configuration + sweeps (seq length, experts) + memory children
    python -m bench.trl_compare --quick    # smoke run (< 2 min): main configuration, few steps, no sweeps
    python -m bench.trl_compare --device cuda   # GPU variant: bf16, a realistic Mixtral-shaped model

On a random-weight Mixtral with the real 32k Mixtral tokenizer and the shipped variable-length conversations
(data/), three paths train the same SFT then DPO steps: (a) TRL + PEFT LoRA on attention and experts, (a') TRL +
attention-only LoRA, (b) align's stage code (bench/trl_paths.py). Every path trains in its own unmodified
`trainer.train()`, one optimizer step each in turn (bench/alternate.py), so other load on the machine hits all
paths alike and the ratios hold. Reported per stage and path: tokens/s (non-padding tokens trained on), median
s/step after warm-up, CPU share, step peak RSS, MFU against this machine's measured matmul rate, the first-step
losses (must agree: same math) and the ratios align / TRL. Results: bench/results/trl_compare*.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.alternate import matmul_gflops, reset_peak, rss_mib, run_alternating
from bench.trl_paths import (
    DPO_DATA,
    PATHS,
    SFT_DATA,
    Shape,
    align_recipe,
    build_base,
    chained_data,
    variant_recipes,
)
from bench.trl_report import stage_summary, table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
VOCAB = 32000  # the real Mixtral tokenizer
ROWS_FIT = 256  # the shipped conversations are at most ~120 tokens
SWEEP_PATHS = ("trl", "align")  # the sweeps compare align with (a) only, to stay within the time budget
GPU_SHAPE = {"hidden": 2048, "intermediate": 7168, "layers": 8, "experts": 8, "heads": 16, "kv_heads": 4}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: main configuration, 4 steps, no sweeps/memory")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--hidden", type=int, help="main configuration's hidden size (default 256; cuda 2048)")
    p.add_argument("--layers", type=int, help="decoder layers (default 4; cuda 8)")
    p.add_argument("--experts", type=int, help="experts (default 8)")
    p.add_argument("--batch", type=int, help="sequences (DPO: pairs) per step (default 8)")
    p.add_argument("--rows", type=int, help="rows of each dataset (default: all 400)")
    p.add_argument("--steps", type=int, help="steps per stage and path, warm-up included (default 12; quick 4)")
    p.add_argument("--warmup", type=int, help="warm-up steps left out of the statistics (default 2; quick 1)")
    p.add_argument("--seq-lens", default="512,1024,2048", help="sequence-length sweep ('' to skip)")
    p.add_argument("--experts-sweep", default="4,16", help="experts sweep beside the main 8 ('' to skip)")
    p.add_argument("--sweep-steps", type=int, default=3, help="steps per stage and path in the sweeps (1 warm-up)")
    p.add_argument("--no-memory", action="store_true", help="skip the per-path peak-RSS child processes")
    p.add_argument("--ablations", action="store_true", help="also align without each speed-up (main configuration)")
    p.add_argument("--work", help="working directory (default: a temporary one, removed at the end)")
    p.add_argument("--out", help="results JSON (default bench/results/trl_compare[_quick|_cuda|_ablations].json)")
    p.add_argument("--child", choices=PATHS, help=argparse.SUPPRESS)  # memory: one path alone in this process
    args = p.parse_args(argv)
    args.steps = args.steps or (4 if args.quick else 12)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    if args.steps - args.warmup < 1:
        p.error("--steps must exceed --warmup")
    return args


def main_shape(args: argparse.Namespace) -> Shape:
    values = {"steps": args.steps, "warmup": args.warmup, "device": args.device, "rows": args.rows}
    if args.device == "cuda":
        values.update(GPU_SHAPE, max_length=2048)
    for key in ("hidden", "layers", "experts", "batch"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    if "hidden" in values and args.device == "cpu":
        values["intermediate"] = 2 * values["hidden"]
    return Shape(**values)


def sweep_shapes(args: argparse.Namespace, main: Shape) -> list[Shape]:
    """Sequence lengths at about the main configuration's tokens per step; expert counts at the main length."""
    if args.quick:
        return []
    steps = {"steps": args.sweep_steps, "warmup": 1}
    out = []
    for length in [int(x) for x in args.seq_lens.split(",") if x]:
        batch = max(1, main.batch * main.max_length // length)
        out.append(dataclasses.replace(main, max_length=length, batch=batch, rows=args.sweep_steps * batch, **steps))
    for experts in [int(x) for x in args.experts_sweep.split(",") if x]:
        out.append(dataclasses.replace(main, experts=experts, rows=args.sweep_steps * main.batch, **steps))
    return out


def stage_run(shape: Shape, work: Path, stage: str, recipe, variants=None, paths=PATHS, save=True) -> dict:
    """Build every path's trainer for `stage` and train them alternately; keep what the DPO stage needs."""
    from bench import trl_paths

    build = trl_paths.sft_trainers if stage == "sft" else trl_paths.dpo_trainers
    start = time.perf_counter()
    trainers, rows = build(shape, recipe, work, variants or {}, paths)
    trainers = {name: trainers[name] for name in (*paths, *(variants or {}))}  # alternation order
    built = time.perf_counter() - start
    runs = run_alternating(trainers)
    if save and stage == "sft" and "align" in trainers:
        from align.stages.common import StagePaths, save_stage

        align = trainers["align"]
        paths_ = StagePaths(Path(recipe.output_dir), "sft")
        save_stage(align, align.processing_class, recipe, paths_, {"stage": "sft", "bench": True})
    if save and stage == "sft" and "trl_attn" in trainers:
        trainers["trl_attn"].save_model(str(work / "trl_attn" / "sft"))
    for name, trainer in trainers.items():
        runs[name]["trainable"] = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        runs[name]["reference_cache"] = getattr(trainer, "reference_cache", None)
    runs["_build_s"] = built
    runs["_rows"] = rows
    del trainers
    return runs


def run_config(shape: Shape, work: Path, chained: bool, peak_gflops: float, ablations=False, paths=PATHS) -> dict:
    """SFT then DPO of one configuration: `paths` (and align's ablations), alternated."""
    work.mkdir(parents=True, exist_ok=True)
    base = build_base(shape, work)
    sft_data, dpo_data = chained_data(work, shape.max_length) if chained else (SFT_DATA, DPO_DATA)
    recipe = align_recipe(shape, base, work / "align", sft_data, dpo_data)
    result = {"shape": dataclasses.asdict(shape), "name": shape.name, "data": "chained" if chained else "rows"}
    for stage in ("sft", "dpo"):
        variants = variant_recipes(shape, base, work, stage, sft_data, dpo_data) if ablations else {}
        for variant in variants.values() if stage == "dpo" else ():  # every DPO starts from align's SFT adapter
            shutil.copytree(Path(recipe.output_dir) / "sft", Path(variant.output_dir) / "sft", dirs_exist_ok=True)
        runs = stage_run(shape, work, stage, recipe, variants, paths)
        result[stage] = stage_summary(runs, shape, stage, VOCAB, peak_gflops)
        print(table(result[stage], f"{shape.name} {stage.upper()}"), flush=True)
    return result


def peak_rates(device: str) -> dict:
    rates = {"fp32_gflops": max(matmul_gflops(torch.float32, n, device=device) for n in (512, 1024, 2048))}
    rates["bf16_gflops"] = matmul_gflops(torch.bfloat16, 512 if device == "cpu" else 4096, repeats=2, device=device)
    return rates


def child_main(args: argparse.Namespace) -> None:
    """Memory: one path alone in a fresh process (SFT then DPO, 2 steps each); prints its peak RSS per stage."""
    shape = dataclasses.replace(main_shape(args), steps=2, warmup=1)
    work = Path(args.work)
    data = chained_data(work, shape.max_length) if shape.max_length > ROWS_FIT else (SFT_DATA, DPO_DATA)
    recipe = align_recipe(shape, work / "base", work / "align", *data)
    peaks = {}
    for stage in ("sft", "dpo"):
        reset_peak()
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        stage_run(shape, work, stage, recipe, paths=(args.child,), save=False)
        peaks[stage] = rss_mib("VmHWM")
        if args.device == "cuda":
            peaks[f"{stage}_cuda_allocated"] = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT " + json.dumps({"path": args.child, "peak_rss_mib": peaks}), flush=True)


def memory_children(args: argparse.Namespace, work: Path) -> dict:
    out = {}
    for path in PATHS:
        cmd = [sys.executable, "-m", "bench.trl_compare", "--child", path, "--work", str(work), "--device", args.device]
        for key in ("hidden", "layers", "experts", "batch", "rows"):
            if getattr(args, key) is not None:
                cmd += [f"--{key}", str(getattr(args, key))]
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
        if done.returncode or not lines:
            raise RuntimeError(f"memory child {path} failed (rc {done.returncode}):\n{done.stderr[-3000:]}")
        out[path] = json.loads(lines[-1][len("RESULT ") :])["peak_rss_mib"]
        print(f"peak RSS {path}: " + ", ".join(f"{k} {v:.0f} MiB" for k, v in out[path].items()), flush=True)
    return out


def machine(device: str, load_before, load_after, rates_before, rates_after) -> dict:
    from importlib.metadata import version

    info = {
        "device": device,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        **{k: version(k) for k in ("torch", "transformers", "trl", "peft", "accelerate")},
        "load_average_start": load_before,
        "load_average_end": load_after,
        "matmul_rates_start": rates_before,
        "matmul_rates_end": rates_after,
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    info.update(cpu_info())
    return info


def cpu_info() -> dict:
    """CPU model and the vector/matrix units that decide fp32 vs bf16 matmul speed (AMX: bf16 far faster)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"cpu": platform.processor()}
    name = next((x.split(":", 1)[1].strip() for x in text.splitlines() if x.startswith("model name")), "")
    flags = next((x.split(":", 1)[1].split() for x in text.splitlines() if x.startswith("flags")), [])
    units = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return {"cpu": name, "cpu_units": units}


def output_path(args: argparse.Namespace) -> Path:
    if args.out:
        return Path(args.out)
    suffix = "_quick" if args.quick else "_cuda" if args.device == "cuda" else "_ablations" if args.ablations else ""
    return RESULTS / f"trl_compare{suffix}.json"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        child_main(args)
        return 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    load_before, started = [round(x, 2) for x in os.getloadavg()], time.perf_counter()
    rates_before = peak_rates(args.device)
    print(f"load {load_before}, {torch.get_num_threads()} threads, matmul {rates_before}", flush=True)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="trl-compare-"))
    out = output_path(args)
    result = {
        "command": "python -m bench.trl_compare " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(args.device, load_before, None, rates_before, None),
        "configs": [],
        "peak_rss_mib": {},
        "complete": False,
    }

    def write() -> None:  # after every configuration, so an interrupted run keeps what it measured
        result["total_s"] = round(time.perf_counter() - started, 1)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")

    try:
        shape = main_shape(args)
        peak = rates_before["fp32_gflops" if args.device == "cpu" else "bf16_gflops"]
        chained = shape.max_length > ROWS_FIT  # the shipped rows are short: longer configurations chain them
        result["configs"].append(run_config(shape, work / shape.name, chained, peak, ablations=args.ablations))
        write()
        if not (args.quick or args.no_memory):
            result["peak_rss_mib"] = memory_children(args, work / shape.name)
        for sweep in sweep_shapes(args, shape):
            chained = sweep.max_length > ROWS_FIT
            result["configs"].append(run_config(sweep, work / sweep.name, chained, peak, paths=SWEEP_PATHS))
            write()
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    load_after = [round(x, 2) for x in os.getloadavg()]
    result["machine"] = machine(args.device, load_before, load_after, rates_before, peak_rates(args.device))
    result["complete"] = True
    write()
    print(f"load average start {load_before}, end {load_after}; {result['total_s']:.0f} s; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
