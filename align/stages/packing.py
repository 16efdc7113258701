"""Padding-free training forward: a padded batch is packed into few rows, attention kept inside each sequence.

TRL pads every batch to its longest sequence and runs the whole rectangle through the model, and on CPU its fused
LM head scores every position, padding and prompt included. align's forward (installed by `install`) takes the
same padded batch, packs its sequences into rows of the batch's own width (first-fit decreasing), runs the
backbone on the packed rows with per-sequence `position_ids` (transformers 5 turns position resets into a
block-diagonal causal mask for sdpa and eager, and into varlen kernels for flash attention), and scores only the
positions that have a label. It returns TRL's `FusedCausalLMOutput` in the padded layout, so TRL's losses and
metrics run unchanged: the same math on the same batch, without the padding.
"""

from __future__ import annotations

import functools
import logging
import types
from dataclasses import dataclass

import torch
from peft import PeftModel
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func
from trl.kernels import ChunkedLogProbFunction
from trl.trainer.utils import FusedCausalLMOutput, maybe_gather_lm_head_ctx

from align.stages.logprobs import tiled_log_probs

log = logging.getLogger("align")

# Architectures whose attention reads packed sequences from position_ids (transformers 5 masking utils).
PACKED_MODEL_TYPES = {"mixtral", "mistral", "llama", "qwen2"}
SFT_OUTPUTS = ("log_probs", "entropy", "is_top1")  # what TRL 1.16's SFTTrainer reads
DPO_OUTPUTS = ("log_probs", "entropy", "mean_logits", "is_top1")  # ... and DPOTrainer (+ log_sum_sq_probs: WPO)
_TRL_VOCAB_CHUNK = 32768  # TRL's own vocabulary tile (trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE)


@dataclass
class PackPlan:
    """Where each real token of a right-padded [B, T] batch goes in a packed [rows, cols] batch."""

    rows: int
    cols: int
    source: torch.Tensor  # [N] flat index of each real token in the padded [B * T] batch
    dest: torch.Tensor  # [N] its flat index in the packed [rows * cols] batch
    position_ids: torch.Tensor  # [rows, cols]: 0.. within each sequence (and within each row's padding tail)
    valid: torch.Tensor  # [rows, cols] bool: a real token


def is_right_padded(attention_mask: torch.Tensor) -> bool:
    """Every row is ones then zeros (TRL's collators pad on the right)."""
    return bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all())


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Bins of sequence indices, each summing to <= capacity, longest sequences placed first."""
    bins: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        target = next((b for b, free in enumerate(room) if free >= lengths[index]), None)
        if target is None:
            bins.append([])
            room.append(capacity)
            target = len(bins) - 1
        bins[target].append(index)
        room[target] -= lengths[index]
    return bins


def pack_plan(attention_mask: torch.Tensor) -> PackPlan:
    """Pack the sequences of a right-padded batch into rows as wide as its longest sequence."""
    batch, width = attention_mask.shape
    lengths = attention_mask.sum(-1).tolist()
    bins = first_fit_decreasing(lengths, width)
    source, dest, positions = [], [], torch.zeros(len(bins), width, dtype=torch.long)
    for row, members in enumerate(bins):
        col = 0
        for seq in members:
            n = lengths[seq]
            source.append(torch.arange(n) + seq * width)
            dest.append(torch.arange(n) + row * width + col)
            positions[row, col : col + n] = torch.arange(n)
            col += n
        positions[row, col:] = torch.arange(width - col)  # the tail is its own (ignored) sequence
    dest_t = torch.cat(dest) if dest else torch.zeros(0, dtype=torch.long)
    valid = torch.zeros(len(bins) * width, dtype=torch.bool)
    valid[dest_t] = True
    device = attention_mask.device
    return PackPlan(
        rows=len(bins),
        cols=width,
        source=(torch.cat(source) if source else torch.zeros(0, dtype=torch.long)).to(device),
        dest=dest_t.to(device),
        position_ids=positions.to(device),
        valid=valid.view(len(bins), width).to(device),
    )


def pack(values: torch.Tensor, plan: PackPlan, fill=0) -> torch.Tensor:
    """[B, T] -> [rows, cols] (padding = fill)."""
    out = values.new_full((plan.rows * plan.cols,), fill)
    out[plan.dest] = values.reshape(-1)[plan.source]
    return out.view(plan.rows, plan.cols)


def packed_index(plan: PackPlan, batch: int, width: int) -> torch.Tensor:
    """[B * T] -> flat index in the packed batch of each padded position (-1: padding)."""
    index = torch.full((batch * width,), -1, dtype=torch.long, device=plan.dest.device)
    index[plan.source] = plan.dest
    return index


def _score(hidden: torch.Tensor, lm_head: torch.nn.Linear, targets: torch.Tensor, outputs: tuple[str, ...]):
    """Per-token fields for the selected rows only: align's tiles on CPU, TRL's kernel (Triton) elsewhere.

    Under ZeRO-3 the head's weight is a shard outside its module's forward: gather it as TRL 1.16's own fused head
    does (inside the model's forward, so DeepSpeed re-fetches it for backward).
    """
    with maybe_gather_lm_head_ctx(lm_head.weight, lm_head.bias):
        if hidden.device.type == "cpu":
            return tiled_log_probs(hidden, lm_head.weight, targets, outputs)
        return ChunkedLogProbFunction.apply(
            hidden, lm_head.weight, lm_head.bias, targets, 1.0, _TRL_VOCAB_CHUNK, None, 1.0, outputs
        )


def _backbone(model, input_ids, attention_mask, kwargs):
    """Run the decoder on packed rows when the batch is right-padded; else as given. Returns (out, plan)."""
    unpadded = attention_mask is None or bool(attention_mask.all())
    if unpadded or kwargs.get("position_ids") is not None or not is_right_padded(attention_mask):
        return model.base_model(input_ids=input_ids, attention_mask=attention_mask, **kwargs), None
    plan = pack_plan(attention_mask)
    out = model.base_model(input_ids=pack(input_ids, plan), position_ids=plan.position_ids, **kwargs)
    return out, plan


def packed_fused_forward(
    self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs
):
    """TRL's `fused_lm_head=True` forward, padding-free; anything else goes to the forward it replaced."""
    lm_head = self.get_output_embeddings()
    plain_head = type(lm_head) is torch.nn.Linear and lm_head.bias is None and not lm_head.weight.requires_grad
    if not fused_lm_head or args or shift_labels is not None or labels is None or not plain_head:
        extra = {"shift_labels": shift_labels, "num_items_in_batch": num_items_in_batch}
        extra = {k: v for k, v in extra.items() if v is not None}
        return self._align_replaced_forward(*args, fused_lm_head=fused_lm_head, labels=labels, **extra, **kwargs)
    input_ids, attention_mask = kwargs.pop("input_ids"), kwargs.pop("attention_mask", None)
    kwargs["use_cache"] = False
    config = self.config.get_text_config()
    if getattr(config, "output_router_logits", False):
        kwargs.setdefault("output_router_logits", True)
    out, plan = _backbone(self, input_ids, attention_mask, kwargs)
    batch, width = input_ids.shape
    mask = labels[:, 1:] != -100
    positions = torch.arange(width - 1, device=labels.device).expand(batch, -1) + width * torch.arange(
        batch, device=labels.device
    ).unsqueeze(1)  # flat index of the position that predicts each label
    rows = positions[mask]
    hidden = out.last_hidden_state.reshape(-1, out.last_hidden_state.size(-1))
    selected = hidden[rows if plan is None else packed_index(plan, batch, width)[rows]]
    fields = _score(selected, lm_head, labels[:, 1:][mask], self._align_outputs)
    log_probs, entropy, log_sum_sq, mean_logits, is_top1 = (
        None if x is None else x.new_zeros(mask.shape).masked_scatter(mask, x) for x in fields
    )
    loss = -log_probs.sum() / (mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch)
    aux_loss = None
    if kwargs.get("output_router_logits"):
        valid = attention_mask if plan is None else plan.valid.long()
        aux_loss = load_balancing_loss_func(
            out.router_logits, config.num_local_experts, config.num_experts_per_tok, valid
        )
        loss = loss + getattr(config, "router_aux_loss_coef", 0.0) * aux_loss
    return FusedCausalLMOutput(
        loss=loss,
        log_probs=log_probs,
        entropy=entropy,
        log_sum_sq_probs=log_sum_sq,
        mean_logits=mean_logits,
        is_top1=is_top1,
        label_mask=mask,
        aux_loss=aux_loss,
    )


def install(model, outputs: tuple[str, ...]) -> bool:
    """Replace the fused-LM-head forward TRL put on the (unwrapped) causal LM; False if not supported.

    Call after TRL's trainer __init__ (which installs its own); non-fused calls still reach the original.
    """
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    model_type = base.config.get_text_config().model_type
    if model_type not in PACKED_MODEL_TYPES:
        log.info("padding-free forward: not used for model type '%s' (supported: %s)", model_type, PACKED_MODEL_TYPES)
        return False
    if getattr(base, "_align_outputs", None) is None:
        base._align_replaced_forward = base.forward
    base._align_outputs = tuple(outputs)

    @functools.wraps(type(base).forward)  # like TRL: generate validates its kwargs against this signature
    def forward(self, *args, **kwargs):
        return packed_fused_forward(self, *args, **kwargs)

    base.forward = types.MethodType(forward, base)
    return True
