"""The text `align plan` prints: one breakdown per stage, the verdict, and the biggest lever."""

from __future__ import annotations

from align.config.schema import Recipe
from align.plan.distributed import parallel_from
from align.plan.estimate import Estimate, StageInput, estimate
from align.plan.levers import combined, levers
from align.plan.params import active_params, param_counts
from align.plan.recipe_input import stage_inputs
from align.plan.units import GIB, fmt_count, fmt_gib, gib, parse_size

DEFAULT_GPU_MEM = "80GiB"
WIDTH = 100


def verdict(total: float, limit: float) -> str:
    """FITS / DOES NOT FIT with the headroom or the excess."""
    if total <= limit:
        return f"FITS ({gib(limit - total):.1f} GiB headroom of {gib(limit):.0f} GiB)"
    return f"DOES NOT FIT ({gib(total - limit):.1f} GiB over {gib(limit):.0f} GiB)"


def breakdown_lines(est: Estimate) -> list[str]:
    """The rows of one stage's breakdown, GPU and CPU columns in GiB."""
    lines = [f"  {'part':<32} {'detail':<46} {'GiB/GPU':>8} {'CPU GiB':>8}"]
    section = None
    for row in est.rows:
        if row.section != section:
            section = row.section
            lines.append(f"  [{section}]")
        cpu = fmt_gib(row.cpu) if row.cpu else f"{'':>8}"
        lines.append(f"    {row.name:<30} {row.detail:<46} {fmt_gib(row.gpu)} {cpu}".rstrip())
    lines.append(f"  {'TOTAL per GPU':<79} {fmt_gib(est.gpu_total)}")
    if est.cpu_total:
        lines.append(f"  {'CPU RAM per node (offloaded)':<88} {fmt_gib(est.cpu_total)}")
    return lines


def activation_note(est: Estimate) -> str:
    """Activations with and without gradient checkpointing, whichever the recipe uses."""
    on, off = (est.acts, est.acts_other) if est.stage.work.gradient_checkpointing else (est.acts_other, est.acts)
    return (
        f"  activations: {gib(on.peak):.2f} GiB with gradient checkpointing, {gib(off.peak):.2f} GiB without "
        f"(LM-head tile {gib(est.acts.logits_tile):.2f} GiB; one layer saves {gib(est.acts.per_layer):.2f} GiB)"
    )


def stage_report(est: Estimate, limit: float) -> list[str]:
    """Header, breakdown, verdict and levers of one stage."""
    s = est.stage
    w = s.work
    what = "chosen + rejected, " if s.stage == "dpo" else ""
    head = (
        f"== {s.stage.upper()}: micro-batch {w.sequences} sequences ({what}max_length {w.seq_len}), "
        f"gradient checkpointing {'on' if w.gradient_checkpointing else 'off'}"
    )
    lines = [head, *breakdown_lines(est), activation_note(est)]
    if s.stage == "dpo" and w.reference_forward:
        lines.append("  reference log-probs: no-grad forward, same weights with the adapter swapped (no second model)")
    if w.eval_sequences:
        lines.append(
            f"  held-out eval: {w.eval_sequences} seq x {w.seq_len} tok, no grad, full logits: "
            f"{gib(est.eval_total):.2f} GiB/GPU" + (" (the stage's peak)" if est.eval_total > est.gpu_total else "")
        )
    lines.append(f"  VERDICT: {verdict(est.peak, limit)}")
    return lines + (lever_lines(s, limit) if est.peak > limit else [])


def lever_lines(s: StageInput, limit: float) -> list[str]:
    """The biggest lever, up to three alternatives, and a greedy combination when no single lever fits."""
    options = levers(s, limit)
    if not options:
        return []
    best = options[0]
    lines = [f"  BIGGEST LEVER: {best.action} -> {gib(best.gpu_total):.1f} GiB/GPU ({_fits(best.fits)})"]
    lines += [f"    or: {lev.action} -> {gib(lev.gpu_total):.1f} GiB/GPU" for lev in options[1:4]]
    if not best.fits:
        path = combined(s, limit)
        steps = "; then ".join(lev.action for lev in path)
        lines.append(f"  COMBINED: {steps} -> {gib(path[-1].gpu_total):.1f} GiB/GPU ({_fits(path[-1].fits)})")
    return lines


def _fits(fits: bool) -> str:
    return "FITS" if fits else "still over"


def header_lines(est: Estimate, limit: float, notes: list[str]) -> list[str]:
    """Model, parameters and layout, common to all stages."""
    s = est.stage
    m = s.model
    counts = param_counts(m)
    quant = "4-bit attention + experts" if s.quant else "no quantization"
    lines = [
        f"align plan: {m.name}",
        f"  {fmt_count(counts.total)} parameters ({fmt_count(active_params(m))} active per token): "
        f"{m.layers} layers, hidden {m.hidden}, {m.experts} experts top-{m.top_k}, vocab {m.vocab}; {quant}",
        f"  layout: {s.parallel.source}; GPU memory {gib(limit):.0f} GiB each",
    ]
    lines += [f"  note: {note}" for note in notes]
    return lines


ASSUMPTIONS = (
    "assumptions: compute in the model dtype (bf16 unless model.dtype says otherwise); LoRA weights fp32 "
    "(PEFT), AdamW fused; sequences padded/packed to max_length with an explicit mask; TRL 1.16's chunked "
    "log-prob head (no full logits); CUDA context + fragmentation 1.5 GiB. Formulas: docs/memory.md"
)


def render(recipe: Recipe, accelerate_config: str | None, gpus: int | None, gpu_mem: str | None) -> str:
    """The whole report for a recipe."""
    limit = parse_size(gpu_mem or DEFAULT_GPU_MEM)
    parallel = parallel_from(accelerate_config, gpus)
    inputs, notes = stage_inputs(recipe, parallel)
    estimates = [estimate(s) for s in inputs]
    lines = header_lines(estimates[0], limit, notes)
    for est in estimates:
        lines += ["", *stage_report(est, limit)]
    worst = max(estimates, key=lambda e: e.peak)
    lines += [
        "",
        f"OVERALL: {verdict(worst.peak, limit)} (largest stage: {worst.stage.stage})",
        *_wrap(ASSUMPTIONS),
    ]
    return "\n".join(lines) + "\n"


def _wrap(text: str, width: int = WIDTH) -> list[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        if len(line) + len(word) + 1 > width:
            lines.append(line)
            line = "  "
        line = f"{line} {word}" if line.strip() else f"{line}{word}"
    return [*lines, line] if line.strip() else lines


__all__ = ["GIB", "render", "verdict"]
