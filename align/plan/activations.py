"""Activation memory of one micro-batch: tensors autograd saves, and the largest transient on top of them.

Derived from the code that runs (transformers 5.24 Mixtral, PEFT 0.21 LoRA, align's routed expert LoRA, TRL 1.16's
chunked log-prob LM head) and checked tensor by tensor with autograd's saved-tensor hooks; see docs/memory.md.
Notation: T tokens per micro-batch, H hidden, I intermediate, k experts per token, b compute bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from align.plan.known_configs import ModelShape
from align.plan.params import LoraShape, expert_params, module_dims

FP32 = 4
INDEX = 8  # int64 indices (top-k choices)
TOKEN_CHUNK = 4096  # TRL 1.16 chunked log-prob: tokens per projection tile
VOCAB_CHUNK = 32768  # ... and vocabulary columns per tile
CPU_FWD_TILES = 3.0  # fp32 tile-sized temporaries of TRL's torch fallback (forward), besides the tile itself
CPU_BWD_TILES = 7.25  # ... (backward: logits, probabilities, one-hot, gradient and their temporaries)


@dataclass(frozen=True)
class Workload:
    """One micro-batch on one device, and how it is computed."""

    sequences: int  # sequences per forward (DPO: chosen + rejected)
    seq_len: int
    gradient_checkpointing: bool
    compute_bytes: int = 2  # 2: bf16/fp16, 4: fp32
    adapter_bytes: int = 4  # PEFT keeps LoRA weights in fp32 (autocast_adapter_dtype)
    device: str = "cuda"  # cuda: TRL's Triton log-prob kernel; cpu: its torch fallback
    masked: bool = True  # padded or packed batch: explicit mask, K/V repeated to every head
    reference_forward: bool = False  # DPO: a no-grad forward through the same model (adapter swapped)
    quantized_experts: bool = False  # 4-bit experts: one expert dequantized at a time
    eval_sequences: int = 0  # align's held-out forward: sequences per batch (0: no held-out evaluation)

    @property
    def tokens(self) -> int:
        return self.sequences * self.seq_len


@dataclass(frozen=True)
class Activations:
    """Peak activation bytes of a training micro-step and its parts."""

    saved: float  # held from forward to backward (all layers + LM head)
    transient: float  # largest short-lived working set on top of `saved`
    per_layer: float  # saved by one decoder layer without checkpointing
    head: float  # saved by the final norm and the chunked log-prob head
    logits_tile: float  # largest LM-head working set (forward or backward)

    @property
    def peak(self) -> float:
        return self.saved + self.transient


def expert_slot_elems(m: ModelShape, lora: LoraShape, stock: bool) -> float:
    """Elements saved per routed (token, expert) pair of one layer."""
    h, i = m.hidden, m.intermediate
    if stock:  # transformers' experts: gate_up output (2I), activation (I), weighted output (H)
        return h + 3 * i
    adapted = 3 * h + 4 * i + 2 * lora.r  # input, gate_up (2I), act (I), mid (I), output x2, LoRA A outputs
    plain = 2 * h + 3 * i  # routed layer, expert without adapter
    return lora.adapted_share * adapted + (1 - lora.adapted_share) * plain


def attention_saved(m: ModelShape, lora: LoraShape, w: Workload) -> float:
    """Bytes one attention block saves: norm input, LoRA inputs, q/k/v/out, logsumexp, mask."""
    t, b, ab = w.tokens, w.compute_bytes, w.adapter_bytes
    dims = module_dims(m)
    qd, kvd = m.heads * m.head_dim, (m.heads if w.masked else m.kv_heads) * m.head_dim
    total = t * m.hidden * FP32  # RMSNorm keeps its input in fp32
    total += t * (2 * qd + 2 * kvd) * b + t * m.heads * FP32  # sdpa: q, k, v, out (+ logsumexp)
    if w.masked:
        total += w.sequences * w.seq_len * w.seq_len * b  # additive mask saved by each layer's sdpa
    qkv = [name for name in ("q_proj", "k_proj", "v_proj") if name in lora.modules]
    if qkv:  # LoRA A saves its input: shared when dtypes match, else one cast copy per module
        total += t * m.hidden * (b if ab == b else ab * len(qkv))
    if "o_proj" in lora.modules and ab != b:  # o's LoRA input is sdpa's output itself, unless it is cast
        total += t * qd * ab
    total += sum(t * lora.r * ab for name in lora.modules if name in dims)
    return total


def moe_saved(m: ModelShape, lora: LoraShape, w: Workload) -> float:
    """Bytes one MoE block saves: norm input, router, experts (routed LoRA, stock, or PEFT's dense delta)."""
    t, b = w.tokens, w.compute_bytes
    total = t * m.hidden * FP32  # post-attention RMSNorm input, fp32
    total += t * m.experts * (FP32 + b) + t * m.top_k * (INDEX + 2 * FP32)  # softmax, logits kept, top-k
    stock = lora.expert_rank_sum == 0 or lora.implementation == "peft"
    total += t * m.top_k * expert_slot_elems(m, lora, stock) * b
    if lora.implementation == "peft" and lora.expert_rank_sum:
        total += m.experts * expert_params(m) * b  # W + B@A of every expert, kept for the input gradient
    if lora.router == "lora":
        total += t * (m.hidden + lora.r) * w.adapter_bytes
    elif lora.router == "full":
        total += t * m.hidden * b
    return total


def layer_saved(m: ModelShape, lora: LoraShape, w: Workload) -> float:
    """Bytes one decoder layer saves for backward without checkpointing."""
    return attention_saved(m, lora, w) + moe_saved(m, lora, w)


def checkpoint_saved(m: ModelShape, w: Workload) -> float:
    """Bytes one checkpointed layer keeps: its input hidden states and the router logits (aux loss)."""
    return w.tokens * (m.hidden + m.experts) * w.compute_bytes


def head_saved(m: ModelShape, w: Workload) -> float:
    """Final norm input (fp32), the LM head's copy of the hidden states, rotary tables, per-token outputs."""
    t, b = w.tokens, w.compute_bytes
    return t * m.hidden * (FP32 + b) + 2 * w.seq_len * m.head_dim * b + 8 * t * FP32


def logits_transient(m: ModelShape, w: Workload) -> tuple[float, float]:
    """(forward, backward) working set of TRL's chunked log-prob head: never the full B x S x V logits."""
    n = w.sequences * (w.seq_len - 1)
    tile = min(n, TOKEN_CHUNK) * min(m.vocab, VOCAB_CHUNK)
    b = w.compute_bytes
    grad_hidden = n * m.hidden * (FP32 + (b if b != FP32 else 0))
    if w.device == "cuda":  # Triton folds each tile in place
        return tile * b, tile * b + grad_hidden
    upcast = FP32 if b != FP32 else 0
    return tile * (b + upcast + CPU_FWD_TILES * FP32), tile * (b + upcast + CPU_BWD_TILES * FP32) + grad_hidden


def layer_transient(m: ModelShape, lora: LoraShape, w: Workload) -> float:
    """Working set of one layer's backward (or no-grad forward): gradients of its largest intermediates."""
    t, b = w.tokens, w.compute_bytes
    qd = m.heads * m.head_dim
    work = t * (4 * m.hidden + 4 * qd) * b  # grad of the residual stream, q/k/v/out gradients
    per_expert = 2 * t * m.top_k / m.experts  # tokens of a busy expert (2x the mean share)
    work += per_expert * (3 * m.hidden + 6 * m.intermediate) * b
    if w.quantized_experts:
        work += expert_params(m) * b  # one expert dequantized
    if lora.implementation == "peft" and lora.expert_rank_sum:
        work += m.experts * expert_params(m) * max(b, w.adapter_bytes)  # the dense delta B@A being built
    return work


def activations(m: ModelShape, lora: LoraShape, w: Workload) -> Activations:
    """Peak activation memory of one forward+backward, with or without per-layer gradient checkpointing."""
    per_layer = layer_saved(m, lora, w)
    head = head_saved(m, w)
    fwd, bwd = logits_transient(m, w)
    work = layer_transient(m, lora, w)
    if not w.gradient_checkpointing:
        return Activations(m.layers * per_layer + head, max(fwd, bwd, work), per_layer, head, max(fwd, bwd))
    kept = m.layers * checkpoint_saved(m, w)
    # The LM head's backward runs with its saved tensors; then backward recomputes one layer at a time (its saved
    # tensors come back, the head's are gone). A DPO reference forward runs layer by layer on top of the head's.
    head_peak = max(fwd, bwd, work if w.reference_forward else 0)
    transient = max(head + head_peak, per_layer + work)
    return Activations(kept, transient, per_layer, head, max(fwd, bwd))


def eval_transient(m: ModelShape, lora: LoraShape, w: Workload) -> float:
    """align's held-out forward (no grad, plain model call): full logits in the compute dtype + 2 fp32 copies.

    SFT's held-out loss upcasts the logits for the cross-entropy (transformers' loss), DPO's takes a float
    log_softmax: B x S x V x (b + 2 x 4) either way; the layers' no-grad working set is usually smaller.
    """
    if not w.eval_sequences:
        return 0.0
    ew = replace(w, sequences=w.eval_sequences)
    return max(ew.tokens * m.vocab * (w.compute_bytes + 2 * FP32), layer_transient(m, lora, ew))
