"""Benchmark: PEFT `target_parameters` LoRA vs align's routed expert LoRA on a CPU-sized Mixtral.

    python -m bench.expert_lora [--hidden 1024 --intermediate 3584 --experts 8 --top-k 2 --tokens 2048
                                 --layers 2 --rank 16 --repeats 5]

One forward+backward (LM loss on `tokens` random tokens) of a seeded, randomly initialised float32 Mixtral,
for each variant:
  peft      (a) PEFT target_parameters LoRA on every expert, rank r: transformers' experts backend
                (grouped_mm, set explicitly) runs on W + B@A, rebuilt densely for all experts each forward;
  routed    (b) align's RoutedLoraExperts, every expert at rank r: a loop over the experts that got tokens,
                base matmul + two thin LoRA matmuls on those tokens only, no dense delta;
  selected  (c) routed, only the experts a routing profile of the same input selects with {top_p: 0.5};
  base      reference: the frozen model with no adapter; its backward runs from the loss down to layer 0's MoE
            block input (the adapters' backward reaches layer 0's experts), so "extra" compares like with like.

Time: median wall time of one forward+backward, variants alternated in rounds (base, a, b, c, base, a, ...) after
one warm-up each, all in this process; a round in which some variant got less than CLEAN_SHARE of the threads' CPU
time (other processes competing) is kept in the JSON but replaced by up to --extra-rounds more rounds. Memory: each
variant in a fresh child process (`--child VARIANT`), see `child_main` and `measure_child`. Then layer 0's experts
alone, per backend (`experts_micro`). Results go to bench/results/expert_lora.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "expert_lora.json"
EXPERT_TARGETS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
VARIANTS = ("base", "peft", "routed", "selected")
# Memory only: the base model with its experts run by align's routed loop (no LoRA), i.e. variant (b)'s backend
# without the adapter, so the routed adapter's own extra memory can be told from the backend's difference.
MEMORY_VARIANTS = (*VARIANTS, "loop")
LABELS = {
    "base": "base (no adapter, reference)",
    "peft": "(a) PEFT target_parameters, all experts",
    "routed": "(b) align routed, all experts",
    "selected": "(c) align routed, top_p=0.5",
}
# Child processes: a fixed mmap threshold makes glibc serve every allocation >= 64 KiB with its own mmap and unmap
# it on free, so the process RSS follows the live tensor bytes (no freed-but-cached heap hiding a peak).
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "131072", "TOKENIZERS_PARALLELISM": "false"}
TARGETS = {"time": 2.0, "memory": 3.0, "params": 2.0}
CLEAN_SHARE = 0.65  # a timing round is clean when every variant got >= 0.65 x threads CPU seconds per wall second


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--intermediate", type=int, default=3584)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--tokens", type=int, default=2048, help="tokens per forward+backward (batch x seq-len)")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float, default=32)
    p.add_argument("--top-p", type=float, default=0.5, help="selection policy of variant (c)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--experts-implementation", default="grouped_mm", choices=["grouped_mm", "batched_mm", "eager"])
    p.add_argument(
        "--extra-rounds",
        type=int,
        default=3,
        help="timing rounds allowed beyond --repeats to replace rounds disturbed by other processes",
    )
    p.add_argument("--micro-repeats", type=int, default=3, help="layer-0 experts-only timing (0: skip)")
    p.add_argument("--no-memory", action="store_true", help="skip the per-variant memory child processes")
    p.add_argument("--out", default=str(RESULTS), help="results JSON ('' to skip writing)")
    p.add_argument("--child", choices=MEMORY_VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--plan", help=argparse.SUPPRESS)  # JSON plan of the selected variant, for a child
    args = p.parse_args(argv)
    if args.tokens % args.seq_len and args.tokens > args.seq_len:
        p.error("--tokens must be a multiple of --seq-len (or at most one sequence)")
    return args


# ---------------------------------------------------------------- model, input, adapters


def build_model(args: argparse.Namespace):
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(args.seed)
    config = MixtralConfig(
        vocab_size=1024,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=8,
        num_key_value_heads=2,
        num_local_experts=args.experts,
        num_experts_per_tok=args.top_k,
    )
    model = MixtralForCausalLM(config).float()
    model.set_experts_implementation(args.experts_implementation)  # explicit, not the library default
    model.train()
    return model


def input_ids(args: argparse.Namespace) -> torch.Tensor:
    seq = min(args.seq_len, args.tokens)
    g = torch.Generator().manual_seed(args.seed + 1)
    return torch.randint(0, 1024, (args.tokens // seq, seq), generator=g)


def lora_config(args: argparse.Namespace):
    from peft import LoraConfig

    # target_modules=[] is accepted by PEFT 0.21 with target_parameters: only the experts are adapted.
    return LoraConfig(
        r=args.rank, lora_alpha=args.alpha, lora_dropout=0.0, target_modules=[], target_parameters=EXPERT_TARGETS
    )


def routing_plan(args: argparse.Namespace, model, ids: torch.Tensor) -> tuple[dict, dict]:
    """Plan of variant (c): profile the base model's routing of `ids`, keep experts up to top_p of the tokens."""
    from align.moe.placement import assign_ranks, select_experts
    from align.moe.profile import profile_model

    profile = profile_model(model, [{"input_ids": ids}])
    shares = profile.token_share_matrix()
    selected = select_experts({"top_p": args.top_p}, shares, args.layers, args.experts)
    return assign_ranks(selected, shares, args.rank), {"token_share": shares, "tokens": profile.tokens}


def randomize_lora(model, seed: int) -> None:
    """Small random values in every lora_ parameter (B included), so no path can shortcut a zero update."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)


def make_variant(variant: str, args: argparse.Namespace, plan: dict | None = None, model=None):
    """The model of one variant (a fresh seeded model unless `model` is given)."""
    from peft import get_peft_model

    from align.moe.adapters import wrap

    model = build_model(args) if model is None else model
    if variant in ("base", "loop"):
        model.requires_grad_(False)
        # The backward of the adapter variants starts at layer 0's experts (their first LoRA): make the base
        # model's backward run from the same place, so "extra" memory/time compares like with like.
        model.model.layers[0].mlp.register_forward_pre_hook(_grad_from_here)
        if variant == "loop":
            for layer in model.model.layers:
                layer.mlp.experts.forward = types.MethodType(_loop_forward, layer.mlp.experts)
        return model
    if variant == "peft":
        model = get_peft_model(model, lora_config(args))
    elif variant == "routed":
        model = wrap(
            model,
            lora_config(args),
            {layer: dict.fromkeys(range(args.experts), args.rank) for layer in range(args.layers)},
        )
    else:
        model = wrap(model, lora_config(args), plan)
    randomize_lora(model, args.seed + 2)
    return model


def _grad_from_here(module, inputs):
    """Forward pre-hook: the module's input becomes a leaf that requires grad (backward runs down to here)."""
    return (inputs[0].detach().requires_grad_(True), *inputs[1:])


def _loop_forward(experts, hidden_states, top_k_index, top_k_weights):
    """A MixtralExperts forward by align's routed loop with no adapter (the `loop` memory reference)."""
    from align.moe.routed_math import routed_experts

    return routed_experts(
        hidden_states,
        top_k_index,
        top_k_weights,
        weights_of=lambda e: (experts.gate_up_proj[e], experts.down_proj[e]),
        num_experts=experts.num_experts,
        act=experts.act_fn,
    )


def trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def step(model, ids: torch.Tensor):
    """One forward+backward with the LM loss; returns (seconds, output)."""
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    out = model(input_ids=ids, labels=ids, use_cache=False)
    out.loss.backward()
    return time.perf_counter() - start, out


class CpuShare:
    """CPU seconds this process got per wall second (2.0 = both cores of a 2-core machine): contention shows."""

    def __enter__(self) -> CpuShare:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.share = (time.process_time() - self.cpu) / max(time.perf_counter() - self.wall, 1e-9)


def experts_micro(models: dict, args: argparse.Namespace, ids: torch.Tensor) -> dict:
    """Layer 0's experts alone, forward+backward on the real routing of `ids`: where the time goes.

    Isolates the experts backend: transformers' grouped_mm and eager (its own per-expert loop) without LoRA,
    align's routed loop without and with LoRA, and PEFT's ParamWrapper (grouped_mm on W + B@A).
    """
    from align.moe.routed_math import routed_experts

    base = models["base"]
    experts = base.model.layers[0].mlp.experts
    captured = {}

    def grab(module, inputs):
        captured["inputs"] = tuple(t.detach().clone() for t in inputs)

    handle = experts.register_forward_pre_hook(grab)
    with torch.no_grad():
        base(input_ids=ids, use_cache=False)
    handle.remove()
    hidden, index, weights = captured["inputs"]
    grad = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(args.seed + 3))
    layer = "base_model.model.model.layers.0.mlp.experts"
    peft_layer = models["peft"].get_submodule(layer)
    routed_layer = models["routed"].get_submodule(layer)

    def stock(impl: str):
        def run(x):
            base.set_experts_implementation(impl)
            return experts(x, index, weights)

        return run

    def loop(x):
        return routed_experts(
            x,
            index,
            weights,
            weights_of=lambda e: (experts.gate_up_proj[e], experts.down_proj[e]),
            num_experts=experts.num_experts,
            act=experts.act_fn,
        )

    cases = {
        f"stock {args.experts_implementation}, no LoRA": stock(args.experts_implementation),
        "stock eager loop, no LoRA": stock("eager"),
        "align routed loop, no LoRA": loop,
        f"align routed loop + LoRA r={args.rank} (all experts)": lambda x: routed_layer(x, index, weights),
        f"PEFT: {args.experts_implementation} on W + B@A": lambda x: peft_layer(x, index, weights),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    try:
        for repeat in range(args.micro_repeats + 1):  # the first round is the warm-up
            for name, run in cases.items():
                x = hidden.clone().requires_grad_(True)
                start = time.perf_counter()
                run(x).backward(grad)
                seconds = time.perf_counter() - start
                for model in models.values():
                    model.zero_grad(set_to_none=True)
                if repeat:
                    times[name].append(seconds)
    finally:
        base.set_experts_implementation(args.experts_implementation)
    reference = statistics.median(times[f"stock {args.experts_implementation}, no LoRA"])
    return {
        name: {
            "median_s": statistics.median(ts),
            "min_s": min(ts),
            "times_s": ts,
            "vs_stock": statistics.median(ts) / reference,
        }
        for name, ts in times.items()
    }


# ---------------------------------------------------------------- memory (child process)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child_main(args: argparse.Namespace) -> None:
    """Measure one variant's step memory in this (fresh) process and print one RESULT line.

    rss_model: resident after building the plain model. Then the adapter is added, one warm-up step runs
    (one-time allocations: thread pools, kernel caches), grads are dropped, rss_before is read, the peak mark is
    reset, one forward+backward runs, and its peak (VmHWM) is read. peak_over_model = peak - rss_model counts the
    adapter weights, their grads, the saved activations and every transient of the step.
    """
    ids = input_ids(args)
    model = build_model(args)
    gc.collect()
    rss_model = _status_kib("VmRSS")
    plan = {int(k): {int(e): r for e, r in v.items()} for k, v in json.loads(args.plan).items()} if args.plan else None
    model = make_variant(args.child, args, plan, model)
    _, out = step(model, ids)
    del out
    model.zero_grad(set_to_none=True)
    gc.collect()
    rss_before = _status_kib("VmRSS")
    method = "VmHWM after clear_refs=5" if _reset_peak() else "ru_maxrss (peak mark could not be reset)"
    seconds, out = step(model, ids)
    if method.startswith("VmHWM"):
        peak = _status_kib("VmHWM")
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = {
        "variant": args.child,
        "rss_model_mib": rss_model / 1024,
        "rss_before_step_mib": rss_before / 1024,
        "peak_mib": peak / 1024,
        "peak_over_model_mib": (peak - rss_model) / 1024,
        "peak_over_before_mib": (peak - rss_before) / 1024,
        "step_s": seconds,
        "loss": float(out.loss.detach()),
        "method": method,
        "threads": torch.get_num_threads(),
    }
    print("RESULT " + json.dumps(result), flush=True)


def measure_child(variant: str, args: argparse.Namespace, plan: dict | None) -> dict:
    """Run `--child variant` in a fresh interpreter (own allocator, own peak mark) and parse its RESULT line."""
    cmd = [sys.executable, "-m", "bench.expert_lora", "--child", variant]
    for key in ("hidden", "intermediate", "experts", "top_k", "tokens", "seq_len", "layers", "rank", "alpha", "seed"):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    cmd += ["--experts-implementation", args.experts_implementation]
    if plan is not None:
        cmd += ["--plan", json.dumps(plan)]
    env = {**os.environ, **CHILD_ENV}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(f"memory child {variant} failed (rc {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


# ---------------------------------------------------------------- report


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def _fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def table(rows: dict, memory: bool) -> str:
    head = (
        f"{'variant':<42} {'time (s)':>14} {'PEFT/var':>14} {'cpu':>5} {'extra mem (MiB)':>16} {'PEFT/var':>9} "
        f"{'trainable':>11} {'all/var':>8}"
    )
    lines = [head, "-" * len(head)]
    for name, row in rows.items():
        mem = f"{row['peak_extra_mib']:16.0f}" if memory and row.get("peak_extra_mib") is not None else f"{'-':>16}"
        mem_ratio = "-"
        if memory and name not in ("base", "peft"):
            mem_ratio = "< base" if row["below_base"] else _fmt_ratio(row.get("memory_ratio_peft"))
        time_s = f"{row['time_s']:.2f} ({row['time_min_s']:.2f})"
        ratio = f"{_fmt_ratio(row['time_ratio_peft'])} ({_fmt_ratio(row['time_ratio_peft_min'])})"
        lines.append(
            f"{LABELS[name]:<42} {time_s:>14} {ratio:>14} {statistics.median(row['cpu_share']):5.2f} {mem} "
            f"{mem_ratio:>9} {row['trainable']:>11,} {_fmt_ratio(row.get('params_ratio_all')):>8}"
        )
    return "\n".join(lines)


def micro_table(micro: dict, tokens: int) -> str:
    head = f"{'layer-0 experts only, fwd+bwd, ' + str(tokens) + ' tokens':<52} {'median (s)':>10} {'min (s)':>8} "
    head += f"{'vs stock':>9}"
    lines = [head, "-" * len(head)]
    for name, row in micro.items():
        lines.append(f"{name:<52} {row['median_s']:10.3f} {row['min_s']:8.3f} {row['vs_stock']:8.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        child_main(args)
        return 0
    LABELS["selected"] = f"(c) align routed, top_p={args.top_p}"
    load_before = _load()
    wall_start = time.perf_counter()
    ids = input_ids(args)
    print(
        f"Mixtral H={args.hidden} I={args.intermediate} E={args.experts} top-{args.top_k} L={args.layers} "
        f"vocab=1024 fp32, {ids.numel()} tokens ({ids.shape[0]}x{ids.shape[1]}), r={args.rank}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {load_before}",
        flush=True,
    )

    # (c)'s plan: routing profile of the same input through the base model (this model then becomes (c)).
    selected_model = build_model(args)
    plan, profile = routing_plan(args, selected_model, ids)
    print(
        "top_p plan: "
        + "; ".join(f"layer {layer}: experts {sorted(experts)}" for layer, experts in plan.items())
        + " | token shares "
        + "; ".join("[" + " ".join(f"{100 * s:.1f}" for s in row) + "]" for row in profile["token_share"]),
        flush=True,
    )

    # Memory first, one child at a time (nothing else of ours runs meanwhile).
    memory: dict[str, dict] = {}
    if not args.no_memory:
        for variant in MEMORY_VARIANTS:
            memory[variant] = measure_child(variant, args, plan if variant == "selected" else None)
            m = memory[variant]
            print(
                f"memory {variant:<8}: peak over model {m['peak_over_model_mib']:8.1f} MiB "
                f"(resident before step {m['rss_before_step_mib'] - m['rss_model_mib']:+.1f} MiB, "
                f"step peak {m['peak_over_before_mib']:.1f} MiB; {m['method']})",
                flush=True,
            )

    # Time: all variants in this process, fresh seeded models, alternated.
    models = {
        "base": make_variant("base", args),
        "peft": make_variant("peft", args),
        "routed": make_variant("routed", args),
        "selected": make_variant("selected", args, plan, selected_model),
    }
    from align.moe.adapters import copy_stock_experts

    copy_stock_experts(models["peft"], models["routed"], args.experts)  # identical A/B: the (a) == (b) check
    warm: dict[str, dict] = {}
    for variant, model in models.items():  # warm-up, and the (a) == (b) check on its outputs
        seconds, out = step(model, ids)
        warm[variant] = {"seconds": seconds, "loss": float(out.loss.detach()), "logits": out.logits.detach()}
        print(f"warm-up {variant:<8}: {seconds:6.2f} s, loss {float(out.loss.detach()):.6f}", flush=True)
        if variant == "routed":
            grad_diff = _grad_diff(models["peft"], models["routed"], args.experts)
        del out
    equivalence = {
        "loss_peft": warm["peft"]["loss"],
        "loss_routed": warm["routed"]["loss"],
        "loss_abs_diff": abs(warm["peft"]["loss"] - warm["routed"]["loss"]),
        "logits_max_abs_diff": float((warm["peft"]["logits"] - warm["routed"]["logits"]).abs().max()),
        "lora_grad_max_abs_diff": grad_diff,
        "adapter_changes_logits_by": float((warm["peft"]["logits"] - warm["base"]["logits"]).abs().max()),
    }
    for entry in warm.values():
        entry.pop("logits")
    # Rounds of (base, a, b, c). A round where some variant got less than CLEAN_SHARE of the threads' CPU time
    # ran beside other processes: it is kept in the JSON, and up to --extra-rounds more rounds are run, so that
    # the statistics use `repeats` clean rounds when the machine allows (all rounds otherwise, flagged).
    threads = torch.get_num_threads()
    rounds: list[dict] = []
    while len(rounds) < args.repeats + args.extra_rounds and sum(r["clean"] for r in rounds) < args.repeats:
        entry: dict = {"seconds": {}, "cpu_share": {}}
        for variant, model in models.items():
            with CpuShare() as cpu:
                seconds, out = step(model, ids)
            del out
            gc.collect()
            entry["seconds"][variant] = seconds
            entry["cpu_share"][variant] = round(cpu.share, 2)
        entry["clean"] = min(entry["cpu_share"].values()) >= CLEAN_SHARE * threads
        rounds.append(entry)
        print(
            f"round {len(rounds)} ({'clean' if entry['clean'] else 'disturbed'}): "
            + ", ".join(f"{v} {entry['seconds'][v]:.2f}s (cpu {entry['cpu_share'][v]:.2f})" for v in VARIANTS),
            flush=True,
        )
    clean_rounds = [r for r in rounds if r["clean"]]
    disturbed = len(clean_rounds) < min(3, args.repeats)
    used = rounds if disturbed else clean_rounds
    times = {v: [r["seconds"][v] for r in used] for v in VARIANTS}
    shares = {v: [r["cpu_share"][v] for r in used] for v in VARIANTS}
    micro = experts_micro(models, args, ids) if args.micro_repeats else {}

    counts = {v: trainable(m) for v, m in models.items()}
    backends = {
        "base": f"transformers experts_implementation={models['base'].get_experts_implementation()['']}",
        "peft": f"transformers experts_implementation={args.experts_implementation} on W + B@A "
        "(PEFT ParamWrapper parametrization: dense [E, out, in] per projection, every forward)",
        "routed": "align RoutedLoraExperts: loop over hit experts, F.linear on routed tokens + thin LoRA matmuls",
        "selected": "align RoutedLoraExperts (as routed; LoRA only on selected experts)",
    }
    rows = _rows(args, times, shares, memory, counts, backends)
    ratios = {
        "time_peft_over_routed": rows["routed"]["time_ratio_peft"],
        "memory_peft_over_routed": rows["routed"].get("memory_ratio_peft"),
        "memory_peft_over_routed_adapter_only": rows["routed"].get("memory_ratio_peft_adapter_only"),
        "params_all_over_selected": rows["selected"]["params_ratio_all"],
    }
    verdict = {
        "routed >= 2x faster than PEFT": _pass(ratios["time_peft_over_routed"], TARGETS["time"]),
        "routed >= 3x less peak extra memory than PEFT": (
            _pass(ratios["memory_peft_over_routed"], TARGETS["memory"])
            or (rows["routed"]["below_base"] and rows["peft"]["peak_extra_mib"] > 0)
        )
        if memory
        else None,
        "top_p selection cuts trainable params >= 2x": _pass(ratios["params_all_over_selected"], TARGETS["params"]),
    }
    load_after = _load()

    print()
    print(table(rows, bool(memory)))
    print("time: median of the repeats (min in brackets); cpu: CPU seconds per wall second this process got")
    print("(2.00 = both cores; lower = other processes competed); extra mem: peak over the base model's step")
    if "loop" in memory:
        loop_vs_base = memory["loop"]["peak_over_model_mib"] - memory["base"]["peak_over_model_mib"]
        print(
            f"memory of the backends: align's loop without LoRA peaks {loop_vs_base:+.0f} MiB vs "
            f"{args.experts_implementation}; the routed adapter alone (over that loop): "
            f"(b) {rows['routed']['adapter_extra_over_loop_mib']:+.0f} MiB, "
            f"(c) {rows['selected']['adapter_extra_over_loop_mib']:+.0f} MiB; PEFT extra / (b) adapter alone = "
            f"{_fmt_ratio(rows['routed']['memory_ratio_peft_adapter_only'])}"
        )
    print(
        f"times from {len(used)} of {len(rounds)} rounds ({len(clean_rounds)} clean: every variant got >= "
        f"{CLEAN_SHARE * threads:.2f} CPU per wall second)"
    )
    if disturbed:
        print(
            f"WARNING: fewer than {min(3, args.repeats)} clean rounds: other processes competed for the CPUs, "
            "the times are disturbed (all rounds used)"
        )
    if micro:
        print()
        print(micro_table(micro, args.tokens))
    print()
    print(
        f"(a) vs (b), identical A/B: |loss diff| {equivalence['loss_abs_diff']:.2e}, "
        f"max |logits diff| {equivalence['logits_max_abs_diff']:.2e}, "
        f"max |LoRA grad diff| {equivalence['lora_grad_max_abs_diff']:.2e} "
        f"(the adapter moves logits by up to {equivalence['adapter_changes_logits_by']:.2e})"
    )
    for target, ok in verdict.items():
        print(f"{_verdict(ok)}  {target}")
    print(f"load average before {load_before}, after {load_after}; total {time.perf_counter() - wall_start:.0f} s")

    if args.out:
        result = {
            "command": "python -m bench.expert_lora " + " ".join(sys.argv[1:] if argv is None else argv),
            "args": {k: v for k, v in vars(args).items() if k not in ("child", "plan", "out")},
            "machine": {
                "torch": torch.__version__,
                "transformers": _version("transformers"),
                "peft": _version("peft"),
                "python": platform.python_version(),
                "threads": torch.get_num_threads(),
                "cpus": os.cpu_count(),
                "cpu": _cpu_name(),
                "load_before": load_before,
                "load_after": load_after,
                "timings_disturbed": disturbed,
            },
            "memory_method": (
                "each variant in a fresh child process with MALLOC_MMAP_THRESHOLD_=65536 (freed tensors leave RSS at "
                "once); after building the plain model read VmRSS, add the adapter, one warm-up step, reset VmHWM "
                "(/proc/self/clear_refs=5), one forward+backward, read VmHWM; peak_extra = (VmHWM - model RSS) of "
                "the variant minus that of the base model's own forward+backward"
            ),
            "plan_selected": {str(k): {str(e): r for e, r in v.items()} for k, v in plan.items()},
            "routing_profile": profile,
            "variants": rows,
            "timing_rounds": rounds,
            "warmup": warm,
            "memory_children": memory,
            "experts_layer0_micro": micro,
            "equivalence_peft_vs_routed": equivalence,
            "ratios": ratios,
            "targets": {k: _verdict(ok) for k, ok in verdict.items()},
            "total_s": round(time.perf_counter() - wall_start, 1),
        }
        out_path = Path(args.out)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out_path}")
    return 0


def _grad_diff(peft_model, routed_model, num_experts: int) -> float:
    """Max |grad| difference between PEFT's packed expert LoRA grads and the routed per-expert grads."""
    stock = {n: p.grad for n, p in peft_model.named_parameters() if "lora_" in n and p.grad is not None}
    routed = {n: p.grad for n, p in routed_model.named_parameters() if "lora_" in n and p.grad is not None}
    worst = 0.0
    for name, grad in stock.items():
        prefix, proj = name.split(".mlp.experts")[0] + ".mlp.experts", "gate_up" if ".base_layer." in name else "down"
        ab = "A" if ".lora_A." in name else "B"
        if ab == "A":  # [E*r, in] -> per expert [r, in]
            per_expert = grad.reshape(num_experts, -1, grad.shape[-1])
        else:  # [out, r*E] -> per expert [out, r]
            per_expert = grad.reshape(grad.shape[0], -1, num_experts).permute(2, 0, 1)
        for expert in range(num_experts):
            other = routed.get(f"{prefix}.lora_{proj}_{ab}.default.{expert}")
            if other is not None:
                worst = max(worst, float((per_expert[expert] - other).abs().max()))
    return worst


def _rows(args, times, shares, memory, counts, backends) -> dict:
    medians = {v: statistics.median(ts) for v, ts in times.items()}
    mins = {v: min(ts) for v, ts in times.items()}
    extra = {}
    if memory:
        base_peak = memory["base"]["peak_over_model_mib"]
        extra = {v: memory[v]["peak_over_model_mib"] - base_peak for v in VARIANTS}
    rows = {}
    for v in VARIANTS:
        row = {
            "time_s": medians[v],
            "time_min_s": mins[v],
            "times_s": times[v],
            "cpu_share": shares[v],
            "time_ratio_peft": _ratio(medians["peft"], medians[v]),
            "time_ratio_peft_min": _ratio(mins["peft"], mins[v]),
            "trainable": counts[v],
            "params_ratio_all": _ratio(counts["routed"], counts[v]) if v != "base" else None,
            "backend": backends[v],
        }
        if memory:
            row["peak_extra_mib"] = extra[v]
            row["memory_ratio_peft"] = _ratio(extra["peft"], extra[v]) if v != "base" else None
            row["below_base"] = v != "base" and extra[v] <= 0
            if v in ("routed", "selected") and "loop" in memory:  # over the same loop backend without LoRA
                own = memory[v]["peak_over_model_mib"] - memory["loop"]["peak_over_model_mib"]
                row["adapter_extra_over_loop_mib"] = own
                row["memory_ratio_peft_adapter_only"] = _ratio(extra["peft"], own)
        rows[v] = row
    return rows


def _verdict(ok: bool | None) -> str:
    return "SKIP (not measured)" if ok is None else "PASS" if ok else "FAIL"


def _pass(value: float | None, target: float) -> bool:
    return value is not None and value >= target


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":
    raise SystemExit(main())
