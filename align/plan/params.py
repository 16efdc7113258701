"""Exact parameter counts of a Mixtral config, by part, and the LoRA parameters a recipe trains."""

from __future__ import annotations

from dataclasses import dataclass

from align.plan.known_configs import ModelShape

ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class ParamCounts:
    """Parameters of the whole model, by part."""

    embeddings: int
    attention: int
    router: int
    experts: int
    norms: int
    lm_head: int

    @property
    def total(self) -> int:
        return self.embeddings + self.attention + self.router + self.experts + self.norms + self.lm_head


def module_dims(m: ModelShape) -> dict[str, tuple[int, int]]:
    """(in, out) of each Linear a LoRA can target, plus the embeddings (PEFT Embedding LoRA)."""
    return {
        "q_proj": (m.hidden, m.heads * m.head_dim),
        "k_proj": (m.hidden, m.kv_heads * m.head_dim),
        "v_proj": (m.hidden, m.kv_heads * m.head_dim),
        "o_proj": (m.heads * m.head_dim, m.hidden),
        "lm_head": (m.hidden, m.vocab),
        "embed_tokens": (m.vocab, m.hidden),
    }


def layer_attention_params(m: ModelShape) -> int:
    """q, k, v, o of one layer (no biases in Mixtral)."""
    dims = module_dims(m)
    return sum(dims[name][0] * dims[name][1] for name in ATTENTION_MODULES)


def expert_params(m: ModelShape) -> int:
    """One expert: gate and up (2 x I x H, fused as gate_up_proj) and down (H x I)."""
    return 3 * m.hidden * m.intermediate


def param_counts(m: ModelShape) -> ParamCounts:
    """Exact counts, as `sum(p.numel())` of a transformers 5 MixtralForCausalLM would give."""
    return ParamCounts(
        embeddings=m.vocab * m.hidden,
        attention=m.layers * layer_attention_params(m),
        router=m.layers * m.experts * m.hidden,
        experts=m.layers * m.experts * expert_params(m),
        norms=(2 * m.layers + 1) * m.hidden,
        lm_head=0 if m.tie_embeddings else m.vocab * m.hidden,
    )


def active_params(m: ModelShape) -> int:
    """Parameters one token uses: everything but the experts it is not routed to."""
    counts = param_counts(m)
    return counts.total - m.layers * (m.experts - m.top_k) * expert_params(m)


@dataclass(frozen=True)
class LoraShape:
    """The adapters a recipe trains, reduced to what sizes them."""

    r: int
    modules: tuple[str, ...] = ATTENTION_MODULES  # PEFT target_modules that exist in Mixtral
    expert_rank_sum: int = 0  # sum of ranks over the adapted (layer, expert) pairs
    adapted_share: float = 1.0  # share of routed token-slots that reach an adapted expert
    implementation: str = "routed"  # routed (align) or peft (target_parameters, dense delta each forward)
    router: str = "frozen"  # frozen, lora or full


def lora_params(m: ModelShape, lora: LoraShape) -> dict[str, int]:
    """Trainable parameters by part: attention (target_modules), experts, router."""
    dims = module_dims(m)
    per_layer = {"q_proj", "k_proj", "v_proj", "o_proj"}
    attention = sum(lora.r * sum(dims[name]) * (m.layers if name in per_layer else 1) for name in lora.modules)
    experts = lora.expert_rank_sum * (2 * m.hidden + 3 * m.intermediate)
    router = 0
    if lora.router == "lora":
        router = m.layers * lora.r * (m.hidden + m.experts)
    elif lora.router == "full":
        router = m.layers * m.experts * m.hidden
    return {"attention": attention, "experts": experts, "router": router}
