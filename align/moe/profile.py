"""Routing profile of a Mixtral model: how each layer's router spreads real tokens over its experts.

Forward hooks on every `MixtralTopKRouter` (`model.model.layers[i].mlp.gate`) see the router logits
of each batch; `routing_stats` reduces them at once to per-expert counts (`LayerCounts`), which merge
batch after batch, so no logits are kept. `summarize` turns counts into shares, entropy and imbalance.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers.models.mixtral.modeling_mixtral import MixtralTopKRouter

from align.data.schemas import RowError, check_conversation, detect_format, to_messages, to_preference


@dataclass
class LayerCounts:
    """Accumulable routing counts of one layer: sums over tokens, so batches merge by addition."""

    routed: torch.Tensor  # [E] float64: tokens that have the expert in their top-k
    gate_mass: torch.Tensor  # [E] float64: sum over tokens of the expert's full-softmax probability
    entropy_sum: float  # sum over tokens of the router entropy (nats, full softmax)
    tokens: int  # non-padding tokens counted
    top_k: int

    @classmethod
    def zeros(cls, num_experts: int, top_k: int) -> LayerCounts:
        """Empty counts, the start of a stream."""
        empty = torch.zeros(num_experts, dtype=torch.float64)
        return cls(routed=empty, gate_mass=empty.clone(), entropy_sum=0.0, tokens=0, top_k=top_k)

    @property
    def num_experts(self) -> int:
        """E, the number of experts these counts cover."""
        return int(self.routed.numel())

    def merge(self, other: LayerCounts) -> LayerCounts:
        """Counts of both streams together (a new object; neither input changes)."""
        if (self.num_experts, self.top_k) != (other.num_experts, other.top_k):
            raise ValueError(
                f"cannot merge counts of {self.num_experts} experts top-{self.top_k} "
                f"with {other.num_experts} experts top-{other.top_k}"
            )
        return LayerCounts(
            routed=self.routed + other.routed,
            gate_mass=self.gate_mass + other.gate_mass,
            entropy_sum=self.entropy_sum + other.entropy_sum,
            tokens=self.tokens + other.tokens,
            top_k=self.top_k,
        )


def routing_stats(router_logits: torch.Tensor, top_k: int, mask: torch.Tensor | None = None) -> LayerCounts:
    """Counts of one batch of router logits [T, E] (padding, mask False, left out), as the router picks."""
    num_experts = router_logits.shape[-1]
    logits = router_logits.detach().reshape(-1, num_experts)
    if mask is not None:
        mask = mask.reshape(-1).to(device=logits.device, dtype=torch.bool)
        if mask.numel() != logits.shape[0]:
            raise ValueError(f"mask has {mask.numel()} entries for {logits.shape[0]} tokens of router logits")
        logits = logits[mask]
    # Top-k exactly as MixtralTopKRouter chooses: on the float32 softmax.
    chosen = torch.topk(torch.softmax(logits.float(), dim=-1), top_k, dim=-1).indices
    routed = torch.bincount(chosen.reshape(-1), minlength=num_experts).to(torch.float64)
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    probs = log_probs.exp()
    entropy = -(probs * log_probs).nan_to_num(0.0).sum(dim=-1)  # p=0 with log p=-inf adds nothing
    return LayerCounts(
        routed=routed.cpu(),
        gate_mass=probs.sum(dim=0).cpu(),
        entropy_sum=float(entropy.sum()),
        tokens=int(logits.shape[0]),
        top_k=top_k,
    )


def summarize(counts: LayerCounts) -> dict:
    """Shares, mean entropy and imbalance of one layer's counts (plain floats, JSON-ready)."""
    if counts.tokens == 0:
        raise ValueError("no tokens were routed in this layer: nothing to summarize")
    num_experts = counts.num_experts
    token_share = counts.routed / (counts.tokens * counts.top_k)
    mean = token_share.mean()
    return {
        "token_share": token_share.tolist(),
        "gate_share": (counts.gate_mass / counts.tokens).tolist(),
        "entropy": counts.entropy_sum / counts.tokens,
        "max_entropy": math.log(num_experts),
        "imbalance": float(token_share.max()) * num_experts,
        "cv": float(token_share.std(correction=0) / mean),  # population std over the E experts
        "tokens": counts.tokens,
    }


@dataclass
class RoutingProfile:
    """Per-layer routing summaries of a model on some data; saved and loaded as JSON."""

    layers: list[dict]
    num_experts: int
    top_k: int
    tokens: int

    def token_share_matrix(self) -> list[list[float]]:
        """Token shares as rows of layers by columns of experts (for a heatmap)."""
        return [list(layer["token_share"]) for layer in self.layers]

    def to_json(self, path: str | Path) -> Path:
        """Write the profile as indented JSON; return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"num_experts": self.num_experts, "top_k": self.top_k, "tokens": self.tokens, "layers": self.layers}
        path.write_text(json.dumps(data, indent=2) + "\n")
        return path

    @classmethod
    def from_json(cls, path: str | Path) -> RoutingProfile:
        """Read a profile written by `to_json`."""
        data = json.loads(Path(path).read_text())
        return cls(layers=data["layers"], num_experts=data["num_experts"], top_k=data["top_k"], tokens=data["tokens"])


def find_routers(model: nn.Module) -> dict[int, list[MixtralTopKRouter]]:
    """Every Mixtral router in the model, by layer index (a PEFT modules_to_save wrapper holds two)."""
    layers: dict[int, list[MixtralTopKRouter]] = {}
    seen: list[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, MixtralTopKRouter):
            continue
        found = re.search(r"layers\.(\d+)\.", name)
        index = int(found.group(1)) if found else len(seen)
        seen.append(name)
        layers.setdefault(index, []).append(module)
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no MixtralTopKRouter: the routing profile needs a Mixtral MoE model "
            "(transformers 5, routers at model.model.layers[i].mlp.gate)"
        )
    return dict(sorted(layers.items()))


def _model_device(model: nn.Module) -> torch.device:
    """Where the model's first parameter lives (inputs go there)."""
    return next(model.parameters()).device


def profile_model(model: nn.Module, batches: Iterable[dict], max_tokens: int | None = None) -> RoutingProfile:
    """Run batches through the model without grad and profile every layer's routing of non-padding tokens."""
    routers = find_routers(model)
    first = next(iter(routers.values()))[0]
    num_experts, top_k = first.num_experts, first.top_k
    counts = {index: LayerCounts.zeros(num_experts, top_k) for index in routers}
    current: dict[str, torch.Tensor | None] = {"mask": None}

    def hook_for(index: int):
        def hook(module: nn.Module, args: tuple, output: tuple) -> None:
            counts[index] = counts[index].merge(routing_stats(output[0], module.top_k, current["mask"]))

        return hook

    was_training, seen = model.training, 0
    handles = [r.register_forward_hook(hook_for(i)) for i, group in routers.items() for r in group]
    try:
        model.eval()
        device = _model_device(model)
        with torch.no_grad():
            for batch in batches:
                input_ids = batch["input_ids"].to(device)
                attention_mask = batch.get("attention_mask")
                attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device)
                current["mask"] = attention_mask.reshape(-1).bool()
                model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
                seen += int(current["mask"].sum())
                if max_tokens is not None and seen >= max_tokens:
                    break
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if seen == 0:
        raise ValueError("no non-padding tokens to profile: the batches were empty")
    layers = [{"layer": index, **summarize(c)} for index, c in counts.items()]
    return RoutingProfile(layers=layers, num_experts=num_experts, top_k=top_k, tokens=seen)


def conversations_from_rows(rows: Iterable[dict], allow_system: bool = False) -> list[list[dict]]:
    """Conversations to profile: an SFT row gives one; a preference row gives prompt+chosen and prompt+rejected.

    SFT rows may be messages, alpaca or sharegpt shaped; a system turn is merged into the first user turn
    unless `allow_system` (the Mixtral-Instruct template has no system role).
    """
    out: list[list[dict]] = []
    for number, row in enumerate(rows, start=1):
        try:
            fmt = detect_format(row)
            if fmt == "preference":
                pair, _ = to_preference(row, allow_system=allow_system)
                out += [pair["prompt"] + pair["chosen"], pair["prompt"] + pair["rejected"]]
            else:
                out.append(check_conversation(to_messages(row, fmt), allow_system=allow_system)[0])
        except RowError as err:
            raise RowError(f"row {number}: {err}") from None
    return out


def _pad(rows: list[list[int]], pad_id: int) -> dict:
    """Right-pad token id lists into input_ids / attention_mask LongTensors."""
    width = max(len(ids) for ids in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, ids in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def batches_from_conversations(
    tokenizer, conversations: list[list[dict]], batch_size: int, max_length: int
) -> Iterator[dict]:
    """Render conversations with the chat template, cut at max_length, and yield right-padded batches."""
    if batch_size < 1 or max_length < 1:
        raise ValueError(f"batch_size and max_length must be >= 1, got {batch_size} and {max_length}")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("the tokenizer has neither a pad token nor an eos token to pad with")
    for start in range(0, len(conversations), batch_size):
        rows = []
        for messages in conversations[start : start + batch_size]:
            encoded = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)
            rows.append(list(encoded["input_ids"])[:max_length])
        yield _pad(rows, pad_id)
