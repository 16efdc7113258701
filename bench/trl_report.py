"""Figures and checks of bench.trl_compare: per-path step statistics, MFU, ratios, first-step loss agreement."""

from __future__ import annotations

import math
import statistics

from bench.trl_paths import LABELS, Shape

# first-step losses (and SFT gradient norms) of paths that compute the same math agree to float32 rounding (~1e-7
# relative; the trainer logs them unrounded): anything larger is a real difference
LOSS_RTOL = 1e-5
# DPO's gradient is the difference of the chosen and rejected log-prob gradients (nearly equal at step 1), so
# summation-order noise (PEFT sums tokens into a dense dW, the routed layer per token) shows at ~1e-5 (measured)
GRAD_RTOL = 1e-4
# after one AdamW step: its first update is ~ lr * sign(grad), so float noise in near-zero gradient components
# moves the second loss by up to ~1e-4 relative (measured) while a wrong gradient moves it by far more
STEP2_RTOL = 1e-3


def forward_flops(shape: Shape, vocab: int, tokens: int, scored: int, sum_sq: int) -> float:
    """Model FLOPs of one forward: dense per-token work on `tokens`, causal attention on the sequences, and the
    LM head on the `scored` (labelled) tokens only, the ones the loss needs. LoRA terms (rank 16) are left out."""
    h, hd = shape.hidden, shape.hidden // shape.heads
    per_token = 2 * h * shape.heads * hd * 2 + 2 * 2 * h * shape.kv_heads * hd  # q, o; k, v
    per_token += 2 * h * shape.experts + shape.top_k * 3 * 2 * h * shape.intermediate  # router, experts
    attention = 2 * 2 * shape.heads * hd * sum_sq / 2  # QK^T and AV, causal half
    return shape.layers * (per_token * tokens + attention) + 2 * h * vocab * scored


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def path_summary(run: dict, shape: Shape, vocab: int, peak_gflops: float) -> dict:
    """Statistics of one path's measured steps (warm-up left out)."""
    steps = run["steps"][shape.warmup :]
    wall = sum(s["wall_s"] for s in steps)
    tokens = sum(s["tokens"] for s in steps)
    flops = sum(3 * forward_flops(shape, vocab, s["tokens"], s["scored"], s["sum_sq_lengths"]) for s in steps)
    losses = [r for r in run["log"] if "loss" in r]
    peaks = [s["peak_mib"] - s["rss_start_mib"] for s in steps if s["peak_mib"] is not None]
    return {
        "steps_measured": len(steps),
        "s_per_step_median": _median([s["wall_s"] for s in steps]),
        "tokens_per_s": tokens / wall,
        "scored_tokens_per_s": sum(s["scored"] for s in steps) / wall,
        "tokens_per_step": tokens / len(steps),
        "padding_share": 1 - tokens / sum(s["positions"] for s in steps),
        "cpu_share_median": _median([s["cpu_s"] / s["wall_s"] for s in steps]),
        "sys_share_of_cpu": sum(s["sys_s"] for s in steps) / max(sum(s["cpu_s"] for s in steps), 1e-9),
        "minor_faults_per_step": _median([s["minor_faults"] for s in steps]),
        "step_peak_over_start_mib": _median(peaks),
        "rss_max_mib": max((s["peak_mib"] or s["rss_start_mib"]) for s in steps),
        "model_gflops_per_s": flops / wall / 1e9,
        "mfu": flops / wall / 1e9 / peak_gflops,
        "first_losses": [r["loss"] for r in losses[:2]],
        "first_log": {k: v for k, v in (losses[0] if losses else {}).items() if isinstance(v, int | float)},
        "trainable": run["trainable"],
        "reference_cache": run.get("reference_cache"),
        "steps": run["steps"],
    }


def _close(a: float, b: float, rtol: float = LOSS_RTOL) -> bool:
    return abs(a - b) <= rtol * max(abs(a), abs(b), 1.0)


def checks(paths: dict, stage: str) -> dict:
    """Same math: every path's first-step loss agrees; (a) and (b) (same adapters) also agree on step 2 and, in
    DPO, on the first step's policy log-probs (the first DPO loss is log 2 by construction: policy == reference)."""
    # DPO: (a') starts from its own (attention-only) SFT adapter; SFT with bfd packing trains other batches
    same_start = [n for n in paths if n != ("trl_attn" if stage == "dpo" else "align_bfd")]
    first = {name: paths[name]["first_losses"][0] for name in same_start if paths[name]["first_losses"]}
    out = {"first_step_loss": first, "first_step_loss_equal": len(first) > 1 and _all_close(first.values())}
    if "trl" in paths and "align" in paths:
        a, b = paths["trl"], paths["align"]
        norms = [a["first_log"].get("grad_norm"), b["first_log"].get("grad_norm")]
        out["first_step_grad_norm_trl_vs_align"] = norms
        out["first_step_grad_norm_equal"] = None not in norms and _close(*norms, GRAD_RTOL)
        if len(a["first_losses"]) > 1 and len(b["first_losses"]) > 1:
            out["second_step_loss_trl_vs_align"] = [a["first_losses"][1], b["first_losses"][1]]
            out["second_step_loss_equal"] = _close(a["first_losses"][1], b["first_losses"][1], STEP2_RTOL)
        if stage == "dpo":
            keys = ("logps/chosen", "logps/rejected")
            pairs = {k: [a["first_log"].get(k), b["first_log"].get(k)] for k in keys}
            out["first_step_logps_trl_vs_align"] = pairs
            out["first_step_logps_equal"] = all(None not in v and _close(*v) for v in pairs.values())
    return out


def _all_close(values) -> bool:
    values = list(values)
    return all(_close(values[0], v) for v in values[1:])


def first_epoch_tokens_per_s(path: dict, rows: int, batch: int) -> float | None:
    """align's DPO tokens/s in a first epoch: the reference precompute (when it ran) spread over the epoch's steps."""
    cache = (path.get("reference_cache") or {}).get("train")
    if not cache or cache["hit"]:
        return None
    steps = path["steps"]
    per_step = cache["seconds"] / math.ceil(rows / batch)
    wall = sum(s["wall_s"] for s in steps[-path["steps_measured"] :]) + per_step * path["steps_measured"]
    return path["tokens_per_step"] * path["steps_measured"] / wall


def stage_summary(runs: dict, shape: Shape, stage: str, vocab: int, peak_gflops: float) -> dict:
    paths = {name: path_summary(run, shape, vocab, peak_gflops) for name, run in runs.items() if name[0] != "_"}
    ratios = {}
    if "align" in paths and stage == "dpo":
        first = first_epoch_tokens_per_s(paths["align"], runs["_rows"], shape.batch)
        paths["align"]["tokens_per_s_first_epoch"] = first
        if first is not None and "trl" in paths:
            ratios["tokens_per_s_first_epoch_align_over_trl"] = first / paths["trl"]["tokens_per_s"]
    for name in [n for n in paths if n.startswith("align")]:
        for base in ("trl", "trl_attn"):
            if base in paths:
                ratios[f"tokens_per_s_{name}_over_{base}"] = paths[name]["tokens_per_s"] / paths[base]["tokens_per_s"]
                if name == "align":
                    ratios[f"step_peak_{base}_minus_align_mib"] = (
                        paths[base]["step_peak_over_start_mib"] - paths["align"]["step_peak_over_start_mib"]
                    )
    return {"paths": paths, "ratios": ratios, "checks": checks(paths, stage), "build_s": runs.get("_build_s")}


def table(summary: dict, title: str) -> str:
    head = (
        f"{title:<38} {'tok/s':>8} {'s/step':>7} {'tok/step':>8} {'pad':>5} {'cpu':>5} {'sys':>5} "
        f"{'peak+MiB':>8} {'MFU':>6} {'loss@1':>9} {'loss@2':>9}"
    )
    lines = [head, "-" * len(head)]
    for name, p in summary["paths"].items():
        losses = [f"{x:9.4f}" for x in p["first_losses"]] + [f"{'-':>9}"] * (2 - len(p["first_losses"]))
        lines.append(
            f"{LABELS[name]:<38} {p['tokens_per_s']:8.0f} {p['s_per_step_median']:7.2f} {p['tokens_per_step']:8.0f} "
            f"{p['padding_share']:5.0%} {p['cpu_share_median']:5.2f} {p['sys_share_of_cpu']:5.0%} "
            f"{p['step_peak_over_start_mib']:8.0f} {p['mfu']:6.1%} {' '.join(losses)}"
        )
    for key, value in summary["ratios"].items():
        lines.append(f"  {key}: {value:.2f}" + ("x" if key.startswith("tokens") else ""))
    lines.append("  checks: " + ", ".join(f"{k}={v}" for k, v in summary["checks"].items() if k.endswith("equal")))
    return "\n".join(lines)


def _row(name: str, p: dict, base: dict | None, peak_rss: dict, stage: str) -> str:
    ratio = f"{p['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else "-"
    rss = peak_rss.get(name, {}).get(stage)
    rss_text = f"{rss:.0f}" if rss is not None else "-"
    return (
        f"| {LABELS[name]} | {p['tokens_per_s']:.0f} | {ratio} | {p['s_per_step_median']:.2f} | "
        f"{p['cpu_share_median']:.2f} | {p['sys_share_of_cpu']:.0%} | {p['step_peak_over_start_mib']:.0f} | "
        f"{rss_text} | {p['mfu']:.1%} | {p['first_losses'][0]:.5f} |"
    )


def markdown(result: dict) -> str:
    """The tables of docs/performance.md from a results JSON (`python -m bench.trl_report FILE`)."""
    head = (
        "| path | tokens/s | vs (a) | s/step (median) | CPU share | sys of CPU | step RSS growth MiB | "
        "peak RSS MiB | MFU | loss step 1 |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    config, lines = result["configs"][0], []
    shape = config["shape"]
    for stage in ("sft", "dpo"):
        summary = config[stage]
        lines.append(
            f"\n**{stage.upper()}** ({config['name']}: hidden {shape['hidden']}, {shape['layers']} layers, "
            f"{shape['experts']} experts top-{shape['top_k']}, max_length {shape['max_length']}, "
            f"batch {shape['batch']}, "
            f"{summary['paths']['align']['steps_measured']} measured steps)\n\n{head}"
        )
        base = summary["paths"].get("trl")
        for name, p in summary["paths"].items():
            lines.append(_row(name, p, None if name == "trl" else base, result.get("peak_rss_mib", {}), stage))
        first = summary["ratios"].get("tokens_per_s_first_epoch_align_over_trl")
        if first:
            lines.append(f"\nalign's first epoch, its reference precompute included: {first:.2f}x (a).")
        checks = {k: v for k, v in summary["checks"].items() if k.endswith("equal")}
        lines.append("\nchecks: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in checks.items()))
    if len(result["configs"]) > 1:
        lines.append("\n" + scaling_table(result["configs"]))
    return "\n".join(lines) + "\n"


def scaling_table(configs: list[dict]) -> str:
    """One line per configuration: (a) and align tokens/s per stage, the ratios, align's MFU."""
    lines = [
        "| configuration | tokens/step SFT / DPO | SFT (a) | SFT align | SFT ratio | DPO (a) | DPO align | DPO ratio "
        "| DPO ratio, 1st epoch | align MFU SFT / DPO | same losses |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in configs:
        sft, dpo = c["sft"]["paths"], c["dpo"]["paths"]
        first = c["dpo"]["ratios"].get("tokens_per_s_first_epoch_align_over_trl")
        same = all(v for s in ("sft", "dpo") for k, v in c[s]["checks"].items() if k.endswith("loss_equal"))
        lines.append(
            f"| {c['name']} ({c['data']}) "
            f"| {sft['align']['tokens_per_step']:.0f} / {dpo['align']['tokens_per_step']:.0f} "
            f"| {sft['trl']['tokens_per_s']:.0f} | {sft['align']['tokens_per_s']:.0f} "
            f"| {sft['align']['tokens_per_s'] / sft['trl']['tokens_per_s']:.2f}x | {dpo['trl']['tokens_per_s']:.0f} "
            f"| {dpo['align']['tokens_per_s']:.0f} | {dpo['align']['tokens_per_s'] / dpo['trl']['tokens_per_s']:.2f}x "
            f"| {'-' if first is None else f'{first:.2f}x'} | {sft['align']['mfu']:.1%} / {dpo['align']['mfu']:.1%} "
            f"| {'yes' if same else 'NO'} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    import json
    import sys

    print(markdown(json.loads(open(sys.argv[1]).read())))
