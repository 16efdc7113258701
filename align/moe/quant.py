"""4-bit fused experts: NF4/FP4 per expert with bitsandbytes, dequantized per expert on its routed tokens.

bitsandbytes quantizes only nn.Linear, so `load_in_4bit` leaves transformers-5 fused experts (~96% of
Mixtral's weights) in 16 bit (bitsandbytes issue 1849, open in 0.50). Here each expert's gate_up
[2I, H] and down [H, I] matrix is quantized on its own (blocks of 64, optional double quantization);
forward and backward go through `bnb.matmul_4bit`, which dequantizes again in backward instead of
keeping a 16-bit copy. `QuantizedExperts` subclasses `MixtralExperts` so PEFT's custom-layer dispatch
and align's routed expert LoRA wrap it like the 16-bit module.

The packed bytes are frozen `nn.Parameter`s viewed as `quant_storage` (bitsandbytes' own trick for
Params4bit): DeepSpeed ZeRO-3 partitions parameters, not buffers, so with storage = the model dtype each
rank keeps 1/N of the 4-bit experts and the MoE leaf gathers them per layer. Storage must equal the dtype
the engine casts the model to (bf16 on GPU): a cast between float storages would scramble the packed bytes.
The small quantization states (absmax, nested absmax, code) stay replicated on every rank.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from transformers.models.mixtral.modeling_mixtral import MixtralExperts

from align.moe.routed_math import routed_experts


class QuantizedExperts(MixtralExperts):
    """The experts of one Mixtral layer, each projection of each expert stored in 4 bit."""

    def __init__(
        self,
        experts: MixtralExperts,
        quant_type: str = "nf4",
        double_quant: bool = True,
        compute_dtype: torch.dtype = torch.float32,
        quant_storage: torch.dtype | None = None,
    ):
        nn.Module.__init__(self)
        import bitsandbytes.functional as bnbf

        quant_storage = quant_storage or experts.gate_up_proj.dtype  # see the module docstring

        self.num_experts, self.hidden_dim = experts.num_experts, experts.hidden_dim
        self.intermediate_dim, self.act_fn = experts.intermediate_dim, experts.act_fn
        self.compute_dtype = compute_dtype
        self.states: dict[str, list] = {"gate_up": [], "down": []}
        for name, weight in (("gate_up", experts.gate_up_proj), ("down", experts.down_proj)):
            for e in range(self.num_experts):
                packed, state = bnbf.quantize_4bit(
                    weight.data[e].contiguous(),
                    blocksize=64,
                    quant_type=quant_type,
                    compress_statistics=double_quant,
                    quant_storage=quant_storage,
                )
                self.register_parameter(f"{name}_{e}", nn.Parameter(packed, requires_grad=False))
                self.states[name].append(state)

    def _apply(self, fn, recurse=True):
        """Move the packed bytes with the module but never cast them: `.to(bf16)`/`.half()` (DeepSpeed's bf16
        engine calls `module.bfloat16()`) would reinterpret 4-bit codes stored as floats as numbers."""
        storage = {name: p.dtype for name, p in self._parameters.items()}
        for p in self._parameters.values():
            p.data = p.data.view(torch.uint8)  # integer tensors are moved, not cast
        try:
            return super()._apply(fn, recurse)
        finally:
            for name, p in self._parameters.items():
                p.data = p.data.view(storage[name])

    @property
    def weight(self) -> torch.Tensor:
        """A packed tensor: PEFT 0.21 `_replace_module` reads `child.weight.device` to place new adapters."""
        return self.gate_up_0

    def _linear(self, name: str, expert: int) -> Callable[[torch.Tensor], torch.Tensor]:
        import bitsandbytes as bnb

        packed, state = getattr(self, f"{name}_{expert}"), self.states[name][expert]
        if state.absmax.device != packed.device:  # moved with .to(): quant states are not buffers
            state.to(packed.device)
        return lambda x: bnb.matmul_4bit(x.to(self.compute_dtype), packed.t(), quant_state=state).to(x.dtype)

    def weights_of(self, expert: int):
        """(gate_up, down) of one expert as 4-bit linear maps."""
        return self._linear("gate_up", expert), self._linear("down", expert)

    def dequantized(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The 16-bit stacks [E, 2I, H] and [E, H, I] (merging, export)."""
        import bitsandbytes.functional as bnbf

        stack = {
            name: torch.stack(
                [
                    bnbf.dequantize_4bit(getattr(self, f"{name}_{e}"), self.states[name][e])
                    for e in range(self.num_experts)
                ]
            )
            for name in ("gate_up", "down")
        }
        return stack["gate_up"], stack["down"]

    def forward(self, hidden_states, top_k_index, top_k_weights):
        return routed_experts(hidden_states, top_k_index, top_k_weights, self.weights_of, self.num_experts, self.act_fn)


def expert_weights(experts: MixtralExperts) -> Callable[[int], tuple]:
    """expert index -> (gate_up, down) as tensors (16-bit module) or 4-bit linear maps."""
    if isinstance(experts, QuantizedExperts):
        return experts.weights_of
    return lambda e: (experts.gate_up_proj[e], experts.down_proj[e])


def quantize_experts(
    model: nn.Module,
    quant_type: str = "nf4",
    double_quant: bool = True,
    compute_dtype: torch.dtype = torch.float32,
    quant_storage: torch.dtype | None = None,
) -> int:
    """Replace every MixtralExperts in `model` by QuantizedExperts (frees the 16-bit weights); returns the count."""
    targets = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, MixtralExperts) and not isinstance(m, QuantizedExperts)
    ]
    for name, experts in targets:
        parent = model.get_submodule(name.rsplit(".", 1)[0])
        setattr(
            parent,
            name.rsplit(".", 1)[1],
            QuantizedExperts(experts, quant_type, double_quant, compute_dtype, quant_storage),
        )
        del experts
    return len(targets)
