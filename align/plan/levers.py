"""What to change when a stage does not fit: each lever re-planned, the biggest saving first."""

from __future__ import annotations

from dataclasses import dataclass, replace

from align.plan.estimate import Quant, StageInput, estimate

ZERO3_SIZES = (2, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class Lever:
    """A change to the recipe or launch, and the per-GPU total it leads to."""

    action: str
    gpu_total: float
    fits: bool
    applied: StageInput  # the stage with the change made


def _lever(action: str, changed: StageInput, limit: float) -> Lever:
    total = estimate(changed).peak
    return Lever(action, total, total <= limit, changed)


def _gc(s: StageInput, limit: float) -> Lever | None:
    if s.work.gradient_checkpointing:
        return None
    changed = replace(s, work=replace(s.work, gradient_checkpointing=True))
    return _lever(f"turn on gradient checkpointing ({s.stage}.gradient_checkpointing: true)", changed, limit)


def _four_bit(s: StageInput, limit: float) -> Lever | None:
    if s.quant is not None:
        return None
    changed = replace(s, quant=Quant(), work=replace(s.work, quantized_experts=True))
    return _lever("4-bit experts and attention (quantization.load_in_4bit: true)", changed, limit)


def _zero3(s: StageInput, limit: float) -> Lever | None:
    p = s.parallel
    sharded = p.kind == "zero" and p.zero_stage >= 3
    sizes = [n for n in ZERO3_SIZES if n > p.gpus] if sharded or p.gpus == 1 else [p.gpus]
    best = None
    for n in sizes:
        layout = replace(p, kind="zero", gpus=n, gpus_per_node=min(n, 8), zero_stage=3, source=f"ZeRO-3 x{n}")
        action = f"DeepSpeed ZeRO-3 across {n} GPUs (accelerate_configs/deepspeed_zero3.yaml)"
        if sharded:
            action = f"spread ZeRO-3 over {n} GPUs instead of {p.gpus} (num_processes: {n})"
        best = _lever(action, replace(s, parallel=layout), limit)
        if best.fits:
            break
    return best


def _offload(s: StageInput, limit: float) -> Lever | None:
    p = s.parallel
    if p.kind != "zero" or p.zero_stage < 3:
        return None
    if not p.offload_optimizer:
        changed = replace(s, parallel=replace(p, offload_optimizer=True))
        return _lever("offload optimizer states to CPU (offload_optimizer_device: cpu)", changed, limit)
    if not p.offload_param:
        changed = replace(s, parallel=replace(p, offload_param=True))
        return _lever("offload parameters to CPU (offload_param_device: cpu)", changed, limit)
    return None


def _batch(s: StageInput, limit: float) -> Lever | None:
    per_seq = 2 if s.stage == "dpo" else 1
    batch = s.work.sequences // per_seq
    lever = None
    for size in range(batch - 1, 0, -1):
        action = (
            f"lower {s.stage}.per_device_train_batch_size to {size} "
            f"(gradient_accumulation_steps x{batch / size:g} keeps the effective batch)"
        )
        lever = _lever(action, replace(s, work=replace(s.work, sequences=size * per_seq)), limit)
        if lever.fits:
            break
    return lever


def _length(s: StageInput, limit: float) -> Lever | None:
    length, lever = s.work.seq_len, None
    while length > 256:
        length //= 2
        lever = _lever(
            f"lower {s.stage}.max_length to {length}", replace(s, work=replace(s.work, seq_len=length)), limit
        )
        if lever.fits:
            break
    return lever


def _fewer_experts(s: StageInput, limit: float) -> Lever | None:
    lora, m = s.lora, s.model
    keep = max(m.top_k, m.experts // 4)
    if lora.expert_rank_sum <= m.layers * keep * lora.r:
        return None
    fewer = replace(lora, expert_rank_sum=m.layers * keep * lora.r, adapted_share=min(1.0, 2 * keep / m.experts))
    return _lever(f"adapt fewer experts (lora.experts: {{top_k_per_layer: {keep}}})", replace(s, lora=fewer), limit)


def _eval_batch(s: StageInput, limit: float) -> Lever | None:
    est = estimate(s)
    lever, size = None, s.work.eval_sequences
    while est.eval_total > est.gpu_total and size > 1:
        size //= 2
        lever = _lever(
            f"lower {s.stage}.per_device_eval_batch_size to {size}",
            replace(s, work=replace(s.work, eval_sequences=size)),
            limit,
        )
        if lever.fits:
            break
    return lever


LEVERS = (_gc, _four_bit, _zero3, _offload, _batch, _length, _fewer_experts, _eval_batch)


def levers(s: StageInput, limit: float) -> list[Lever]:
    """Every applicable lever, those that make the stage fit first, then by the per-GPU total they lead to."""
    found = [lever for make in LEVERS if (lever := make(s, limit)) is not None]
    return sorted(found, key=lambda lever: (not lever.fits, lever.gpu_total))


def combined(s: StageInput, limit: float, steps: int = 3) -> list[Lever]:
    """Greedy: pull the biggest lever, re-plan, repeat until the stage fits (at most `steps` levers)."""
    path: list[Lever] = []
    while len(path) < steps:
        options = levers(path[-1].applied if path else s, limit)
        if not options:
            break
        path.append(options[0])
        if options[0].fits:
            break
    return path
