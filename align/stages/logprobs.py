"""Per-token log-probabilities through the LM head in row tiles: the CPU-friendly twin of TRL's fused head.

TRL 1.16 scores tokens with `ChunkedLogProbFunction`: on a device without Triton (any CPU) it folds each
`[4096 tokens, 32768 vocab]` tile with about eight full-size torch temporaries forward and as many backward.
Each temporary is a fresh 100-500 MB allocation that glibc serves with mmap, so the kernel zero-fills every
page again: measured on 2 cores with a 32k vocabulary, as much system time (page faults) as compute. Here a
tile is `ROWS` tokens (16 MB at 32k vocab), reused through the call, and folded with fused torch kernels
(`logsumexp`, in-place `exp_`), so the head costs its three matmuls and little else.
"""

from __future__ import annotations

import torch
from trl.trainer.utils import maybe_gather_lm_head_ctx

ROWS = 128  # tokens per tile: measured fastest of 64-512 on 2 cores (hidden 256, vocab 32000)
OUTPUTS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


class TiledLogProbs(torch.autograd.Function):
    """log p(target) of `hidden @ weight.T` per row, plus optional metrics (no gradient through those).

    Returns (log_probs, entropy, log_sum_sq_probs, mean_logits, is_top1), None where not asked for; the same
    fields and conventions as TRL's `ChunkedLogProbFunction` (is_top1: the target is the FIRST maximum).
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, outputs: tuple[str, ...]):
        n, vocab = hidden.shape[0], weight.shape[0]
        h32, w32 = hidden.float(), weight.float()  # fp32 tiles whatever the model dtype (no copy in fp32)
        stats = {name: h32.new_empty(n) for name in OUTPUTS[:-1] if name in outputs}
        target_logit, log_z = h32.new_empty(n), h32.new_empty(n)
        is_top1 = torch.empty(n, dtype=torch.bool, device=hidden.device) if "is_top1" in outputs else None
        tile_buf = h32.new_empty(min(ROWS, n), vocab)
        prob_buf = torch.empty_like(tile_buf) if {"entropy", "log_sum_sq_probs"} & set(outputs) else None
        for start in range(0, n, ROWS):
            end = min(start + ROWS, n)
            tile, rows, t = tile_buf[: end - start], slice(start, end), targets[start:end]
            torch.mm(h32[rows], w32.t(), out=tile)
            lz = torch.logsumexp(tile, dim=-1)
            log_z[rows] = lz
            target_logit[rows] = tile.gather(1, t[:, None]).squeeze(1)
            if "mean_logits" in stats:
                stats["mean_logits"][rows] = tile.mean(-1)
            if is_top1 is not None:
                is_top1[rows] = _target_is_first_max(tile, t, target_logit[rows])
            if prob_buf is not None:
                p = prob_buf[: end - start]
                torch.sub(tile, lz[:, None], out=p).exp_()
                if "log_sum_sq_probs" in stats:
                    stats["log_sum_sq_probs"][rows] = 2 * torch.linalg.vector_norm(p, dim=-1).log()
                if "entropy" in stats:  # H = log Z - sum_v p_v z_v (p is not needed after this)
                    stats["entropy"][rows] = lz - p.mul_(tile).sum(-1)
        ctx.save_for_backward(hidden, weight, targets, log_z)
        ctx.mark_non_differentiable(*(x for x in (*stats.values(), is_top1) if x is not None))
        log_probs = target_logit - log_z
        return (
            log_probs.to(hidden.dtype),
            stats.get("entropy"),
            stats.get("log_sum_sq_probs"),
            stats.get("mean_logits"),
            is_top1,
        )

    @staticmethod
    def backward(ctx, grad_log_probs, *_unused):
        hidden, weight, targets, log_z = ctx.saved_tensors
        if grad_log_probs is None or not ctx.needs_input_grad[0]:
            return None, None, None, None
        # d log p_t / d z_v = 1[v = t] - p_v; only the hidden states get a gradient (the LM head is frozen)
        grad = grad_log_probs.float()
        # ZeRO-3: the caller gathered the head for the forward (packing._score); the recomputation here runs
        # after that context closed, so gather again (as TRL 1.16's ChunkedLogProbFunction.backward does)
        with maybe_gather_lm_head_ctx(weight):
            h32, w32 = hidden.float(), weight.float()
            grad_hidden = torch.empty_like(h32)
            tile_buf = h32.new_empty(min(ROWS, hidden.shape[0]), weight.shape[0])
            for start in range(0, hidden.shape[0], ROWS):
                end = min(start + ROWS, hidden.shape[0])
                tile, rows = tile_buf[: end - start], slice(start, end)
                torch.mm(h32[rows], w32.t(), out=tile)
                tile.sub_(log_z[rows, None]).exp_().mul_(-grad[rows, None])
                tile.scatter_add_(1, targets[rows, None], grad[rows, None])
                torch.mm(tile, w32, out=grad_hidden[rows])
        return grad_hidden.to(hidden.dtype), None, None, None


def _target_is_first_max(tile: torch.Tensor, targets: torch.Tensor, target_logit: torch.Tensor) -> torch.Tensor:
    """argmax(tile) == target, as TRL counts it (a tie with an earlier token is not top-1); one `amax` pass over
    the tile, and an `argmax` only on the rows whose target reaches the maximum."""
    hit = target_logit >= tile.amax(-1)
    rows = hit.nonzero().flatten()
    if rows.numel():
        hit[rows] = tile[rows].argmax(-1) == targets[rows]
    return hit


def tiled_log_probs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, outputs: tuple[str, ...]):
    """Per-row log-probs of `targets` under `hidden @ weight.T` ([n, H], [V, H], [n]); see TiledLogProbs."""
    if weight.requires_grad:
        raise ValueError("tiled_log_probs trains no LM head: freeze lm_head (LoRA) or use TRL's fused head")
    return TiledLogProbs.apply(hidden, weight, targets, tuple(outputs))
