"""Per-device memory of one training stage: weights, adapters, gradients, optimizer, activations (pure arithmetic)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from align.plan.activations import FP32, Activations, Workload, activations, eval_transient
from align.plan.known_configs import ModelShape
from align.plan.params import LoraShape, layer_attention_params, lora_params, param_counts
from align.plan.units import GIB, fmt_count

CUDA_ALLOWANCE = 1.5 * GIB  # CUDA context, cuBLAS workspace, caching-allocator fragmentation (assumed)
ADAM_STATES = 2  # exp_avg, exp_avg_sq
PACKED_4BIT = 0.5  # bytes per parameter of the packed 4-bit codes, without quantization constants


@dataclass(frozen=True)
class Quant:
    """bitsandbytes-style 4-bit storage: 0.5 byte/param + one absmax per block (itself 8-bit with double quant)."""

    double_quant: bool = True
    blocksize: int = 64

    @property
    def bytes_per_param(self) -> float:
        if self.double_quant:  # 8-bit absmax per block + an fp32 absmax per 256 blocks
            return 0.5 + 1 / self.blocksize + FP32 / (self.blocksize * 256)
        return 0.5 + FP32 / self.blocksize


@dataclass(frozen=True)
class Parallel:
    """How the stage is spread over GPUs (from the accelerate config and --gpus)."""

    kind: str = "single"  # single, ddp, zero (DeepSpeed ZeRO stage `zero_stage`)
    gpus: int = 1
    gpus_per_node: int = 1
    zero_stage: int = 0
    offload_optimizer: bool = False
    offload_param: bool = False
    bf16_master: bool = False  # DeepSpeed bf16: trainable params in bf16, fp32 master copy in the optimizer
    source: str = "single GPU (default)"


@dataclass(frozen=True)
class StageInput:
    """Everything one stage's plan depends on."""

    stage: str
    model: ModelShape
    lora: LoraShape
    work: Workload
    parallel: Parallel
    weight_bytes: int = 2  # model.dtype of the unquantized weights
    quant: Quant | None = None
    ref_adapter_copy: bool = False  # DPO continuing an SFT adapter: TRL keeps a frozen 'ref' copy of it


@dataclass(frozen=True)
class Row:
    """One line of the breakdown: bytes on each GPU and in CPU RAM per node."""

    section: str
    name: str
    detail: str
    gpu: float
    cpu: float = 0.0


@dataclass(frozen=True)
class Estimate:
    """The breakdown of one stage and the activations with the other checkpointing setting."""

    stage: StageInput
    rows: tuple[Row, ...]
    acts: Activations
    acts_other: Activations
    eval_total: float = 0.0  # per-GPU peak of the held-out evaluation (0: none)

    @property
    def gpu_total(self) -> float:
        """Per-GPU peak of the training step."""
        return sum(row.gpu for row in self.rows)

    @property
    def peak(self) -> float:
        """Per-GPU peak of the stage: its training step or its held-out evaluation."""
        return max(self.gpu_total, self.eval_total)

    @property
    def cpu_total(self) -> float:
        return sum(row.cpu for row in self.rows)


def _dtype_name(n_bytes: float) -> str:
    return {2: "bf16", 4: "fp32"}.get(n_bytes, f"{n_bytes}B")


def weight_rows(s: StageInput) -> list[Row]:
    """Base weights by part; 4-bit covers attention Linears and the experts, the rest stays 16-bit."""
    counts = param_counts(s.model)
    quantized = {"attention", "experts"} if s.quant else set()
    parts = [
        ("embeddings", counts.embeddings),
        ("attention", counts.attention),
        ("router", counts.router),
        ("experts", counts.experts),
        ("norms", counts.norms),
        ("lm_head", counts.lm_head),
    ]
    rows = []
    for part, n in parts:
        if not n:
            continue
        if part in quantized:
            per, detail = s.quant.bytes_per_param, f"4-bit ({s.quant.bytes_per_param:.3f} B/p)"
        else:
            per = FP32 if (part == "norms" and s.quant) else s.weight_bytes
            detail = _dtype_name(per)
        if part in quantized and s.parallel.kind == "zero":
            # packed 4-bit bytes are (frozen) parameters: ZeRO-3 partitions them; the quantization constants
            # (absmax, nested absmax, code) are plain tensors every rank keeps whole
            packed = PACKED_4BIT
            detail = f"4-bit packed ({packed:.3f} B/p)"
            rows.append(_placed(s.parallel, "weights", part, f"{fmt_count(n)}, {detail}", n * packed, "param"))
            constants = f"{part} 4-bit constants"
            detail = f"absmax + code ({per - packed:.3f} B/p), replicated"
            rows.append(_placed(s.parallel, "weights", constants, detail, n * (per - packed), "replicated"))
            continue
        rows.append(_placed(s.parallel, "weights", part, f"{fmt_count(n)}, {detail}", n * per, "param"))
    if s.parallel.kind == "zero" and s.parallel.zero_stage >= 3:
        rows.append(
            Row(
                "weights", "ZeRO-3 gathered layers", "current + prefetched layer, unsharded", 2 * _layer_weight_bytes(s)
            )
        )
    return rows


def _layer_weight_bytes(s: StageInput) -> float:
    """Bytes of one decoder layer's weights as stored (what ZeRO-3 gathers to compute it)."""
    m = s.model
    big = layer_attention_params(m) + m.experts * 3 * m.hidden * m.intermediate
    per = s.quant.bytes_per_param if s.quant else s.weight_bytes
    return big * per + (m.experts * m.hidden + 2 * m.hidden) * s.weight_bytes


def _placed(p: Parallel, section: str, name: str, detail: str, total: float, kind: str) -> Row:
    """A row's bytes after ZeRO sharding (kind: param, grad, optim) and CPU offload."""
    # "replicated": tensors that are not parameters (4-bit quantization constants), which ZeRO never partitions
    shard_from = {"param": 3, "grad": 2, "optim": 1, "replicated": 99}[kind]
    sharded = p.kind == "zero" and p.zero_stage >= shard_from
    per_gpu = total / p.gpus if sharded else total
    offloaded = (kind == "optim" and p.offload_optimizer) or (kind == "param" and p.offload_param and sharded)
    if sharded:
        detail += f", /{p.gpus}"
    if offloaded:
        return Row(section, name, detail + ", on CPU", 0.0, per_gpu * p.gpus_per_node)
    return Row(section, name, detail, per_gpu)


def trainable_rows(s: StageInput) -> list[Row]:
    """LoRA parameters, their gradients and AdamW states (fp32; DeepSpeed bf16 adds an fp32 master copy)."""
    parts = lora_params(s.model, s.lora)
    n = sum(parts.values())
    p = s.parallel
    held = 2 if p.bf16_master else s.work.adapter_bytes
    split = " + ".join(f"{fmt_count(v)} {k}" for k, v in parts.items() if v)
    rows = [_placed(p, "adapters", "LoRA (trainable)", f"{split or 'none'}, {_dtype_name(held)}", n * held, "param")]
    if s.ref_adapter_copy:
        rows.append(
            _placed(p, "adapters", "LoRA 'ref' copy (frozen)", "DPO reference = SFT adapter", n * held, "param")
        )
    rows.append(_placed(p, "training", "gradients", _dtype_name(held), n * held, "grad"))
    optim = ADAM_STATES * FP32 + (FP32 if p.bf16_master else 0)
    label = "AdamW 2 states fp32" + (" + fp32 master" if p.bf16_master else "")
    rows.append(_placed(p, "training", "optimizer states", label, n * optim, "optim"))
    if p.kind == "ddp":
        rows.append(Row("training", "DDP gradient buckets", "flat copy of the gradients", n * held))
    return rows


def activation_rows(acts: Activations, w: Workload) -> list[Row]:
    """Saved activations and the largest transient of one micro-batch."""
    ckpt = "checkpointed" if w.gradient_checkpointing else "no checkpointing"
    shape = f"{w.sequences} seq x {w.seq_len} tok, {ckpt}"
    return [
        Row("activations", "saved for backward", shape, acts.saved),
        Row("activations", "peak working set", "LM-head tile / layer backward", acts.transient),
    ]


def estimate(s: StageInput, allowance: float | None = None) -> Estimate:
    """The per-device breakdown of stage `s` (allowance: CUDA overhead, default 1.5 GiB on cuda, 0 on cpu)."""
    acts = activations(s.model, s.lora, s.work)
    other = activations(s.model, s.lora, replace(s.work, gradient_checkpointing=not s.work.gradient_checkpointing))
    rows = weight_rows(s) + trainable_rows(s) + activation_rows(acts, s.work)
    if allowance is None:
        allowance = CUDA_ALLOWANCE if s.work.device == "cuda" else 0.0
    if allowance:
        rows.append(Row("runtime", "CUDA context + fragmentation", "assumed", allowance))
    held = sum(row.gpu for row in rows if row.section not in ("activations",) and row.name != "gradients")
    evaluation = held + eval_transient(s.model, s.lora, s.work) if s.work.eval_sequences else 0.0
    return Estimate(s, tuple(rows), acts, other, evaluation)
