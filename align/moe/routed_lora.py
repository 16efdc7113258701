"""`RoutedLoraExperts`: a PEFT LoRA layer for transformers-5 fused Mixtral experts, routed per expert.

It plugs into PEFT through `LoraConfig._register_custom_module` (PEFT 0.21's custom-layer API), so PEFT
owns the adapter lifecycle: several adapters (TRL's frozen "ref" copy for DPO), enable/disable,
requires_grad, state dicts. Which experts get an adapter and at what rank is a per-layer plan attached to
the experts module before wrapping (`attach_plan`); experts outside the plan get no update.
"""

from __future__ import annotations

import math

import torch
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers.models.mixtral.modeling_mixtral import MixtralExperts

from align.moe.quant import QuantizedExperts, expert_weights
from align.moe.routed_math import ExpertFactors, routed_experts

PLAN_ATTR = "_align_expert_plan"  # on a MixtralExperts module: {expert index: rank}
FACTOR_NAMES = ("lora_gate_up_A", "lora_gate_up_B", "lora_down_A", "lora_down_B")


def attach_plan(experts: nn.Module, plan: dict[int, int]) -> None:
    """Tell the layer that will wrap `experts` which experts to adapt, at which rank."""
    setattr(experts, PLAN_ATTR, {int(e): int(r) for e, r in plan.items() if r > 0})


class RoutedLoraExperts(nn.Module, LoraLayer):
    """LoRA on the fused gate_up/down expert weights, applied only to the tokens routed to each expert."""

    adapter_layer_names = FACTOR_NAMES
    other_param_names = ("r", "lora_alpha", "scaling", "lora_dropout", "expert_ranks")

    def __init__(
        self, base_layer: nn.Module, adapter_name: str, config=None, r: int = 8, lora_alpha: float = 8, **kwargs
    ) -> None:
        nn.Module.__init__(self)
        LoraLayer.__init__(self, base_layer)
        for name in FACTOR_NAMES:
            setattr(self, name, nn.ModuleDict())
        self.expert_ranks: dict[str, dict[int, int]] = {}
        self.update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config)
        self._active_adapter = adapter_name

    def _get_in_out_features(self, module: nn.Module) -> tuple[int, int]:
        return module.hidden_dim, module.hidden_dim

    @property
    def experts(self) -> MixtralExperts:
        return self.get_base_layer()

    def update_layer(self, adapter_name: str, r: int, lora_alpha: float, config=None, **kwargs) -> None:
        """Create `adapter_name`'s per-expert factors (A: kaiming-uniform like PEFT, B: zeros)."""
        base = self.experts
        plan = getattr(base, PLAN_ATTR, None)
        if plan is None:  # no plan attached: every expert at the config's rank
            plan = dict.fromkeys(range(base.num_experts), r)
        dropout = float(config.lora_dropout) if config is not None else 0.0
        hidden, inter = base.hidden_dim, base.intermediate_dim
        device = next(iter(base.state_dict().values())).device  # 16-bit or packed 4-bit params
        shapes = {
            "lora_gate_up_A": lambda k: (k, hidden),
            "lora_gate_up_B": lambda k: (2 * inter, k),
            "lora_down_A": lambda k: (k, inter),
            "lora_down_B": lambda k: (hidden, k),
        }
        for name, shape in shapes.items():
            params = nn.ParameterDict()
            for expert, rank in sorted(plan.items()):
                weight = torch.zeros(shape(rank), dtype=torch.float32, device=device)
                if name.endswith("_A"):
                    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
                params[str(expert)] = nn.Parameter(weight)
            getattr(self, name)[adapter_name] = params
        self.r[adapter_name] = max(plan.values(), default=0)
        self.lora_alpha[adapter_name] = lora_alpha
        self.expert_ranks[adapter_name] = dict(plan)
        self.scaling[adapter_name] = {e: lora_alpha / k for e, k in plan.items()}
        self.lora_dropout[adapter_name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.set_adapter(self.active_adapters)

    def factors(self, adapter: str, expert: int, dtype: torch.dtype) -> ExpertFactors | None:
        """Expert `expert`'s factors in `adapter`, cast to the compute dtype, or None if not adapted."""
        key = str(expert)
        if key not in self.lora_gate_up_A[adapter]:
            return None
        get = lambda name: getattr(self, name)[adapter][key].to(dtype)  # noqa: E731
        return ExpertFactors(
            get("lora_gate_up_A"),
            get("lora_gate_up_B"),
            get("lora_down_A"),
            get("lora_down_B"),
            self.scaling[adapter][expert],
        )

    def _active(self) -> list[str]:
        if self.disable_adapters or self.merged:
            return []
        return [a for a in self.active_adapters if a in self.lora_gate_up_A and len(self.lora_gate_up_A[a])]

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor):
        active = self._active()
        if not active:
            return self.experts(hidden_states, top_k_index, top_k_weights)
        base = self.experts
        dtype = hidden_states.dtype

        def factors_of(expert: int) -> list[ExpertFactors]:
            found = (self.factors(a, expert, dtype) for a in active)
            return [f for f in found if f is not None]

        dropout = self.lora_dropout[active[0]]
        out = routed_experts(
            hidden_states,
            top_k_index,
            top_k_weights,
            expert_weights(base),
            base.num_experts,
            base.act_fn,
            factors_of,
            dropout=None if isinstance(dropout, nn.Identity) else dropout,
        )
        if torch.is_grad_enabled():
            out = out + self._unrouted_zero(active, top_k_index).to(out.dtype)
        return out

    def _unrouted_zero(self, active: list[str], top_k_index: torch.Tensor) -> torch.Tensor:
        """0 x the factors of adapted experts that got no token, so they still get a (zero) gradient.

        Without it DDP waits forever for their gradients (find_unused_parameters=False), and ranks that
        routed differently would disagree on which parameters have gradients.
        """
        hit = set(torch.unique(top_k_index).tolist())
        zero = torch.zeros((), dtype=torch.float32, device=top_k_index.device)
        for adapter in active:
            for name in FACTOR_NAMES:
                for key, param in getattr(self, name)[adapter].items():
                    if int(key) not in hit and param.requires_grad:
                        zero = zero + param.sum() * 0.0
        return zero

    def delta(self, adapter: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense deltas (gate_up [E, 2I, H], down [E, H, I]) of one adapter: for merging and export only."""
        base = self.experts
        gu = torch.zeros_like(base.gate_up_proj, dtype=torch.float32)
        dn = torch.zeros_like(base.down_proj, dtype=torch.float32)
        for expert in self.expert_ranks[adapter]:
            f = self.factors(adapter, expert, torch.float32)
            gu[expert] = f.scale * f.gate_up_B @ f.gate_up_A
            dn[expert] = f.scale * f.down_B @ f.down_A
        return gu, dn

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Add the adapters' deltas to the base expert weights (for export; training never merges)."""
        base = self.experts
        if isinstance(base, QuantizedExperts):
            raise ValueError("cannot merge into 4-bit experts: load the base model in 16 bit to merge")
        for adapter in adapter_names or self.active_adapters:
            if adapter in self.merged_adapters or adapter not in self.lora_gate_up_A:
                continue
            gu, dn = self.delta(adapter)
            merged_gu = base.gate_up_proj.data + gu.to(base.gate_up_proj.dtype)
            merged_dn = base.down_proj.data + dn.to(base.down_proj.dtype)
            if safe_merge and not (torch.isfinite(merged_gu).all() and torch.isfinite(merged_dn).all()):
                raise ValueError(f"merging adapter {adapter} produced non-finite expert weights")
            base.gate_up_proj.data, base.down_proj.data = merged_gu, merged_dn
            self.merged_adapters.append(adapter)

    def unmerge(self) -> None:
        """Subtract merged adapters again."""
        base = self.experts
        while self.merged_adapters:
            gu, dn = self.delta(self.merged_adapters.pop())
            base.gate_up_proj.data -= gu.to(base.gate_up_proj.dtype)
            base.down_proj.data -= dn.to(base.down_proj.dtype)

    def __repr__(self) -> str:
        plans = {a: len(p) for a, p in self.expert_ranks.items()}
        return f"RoutedLoraExperts(experts={self.experts.num_experts}, adapted={plans})"
