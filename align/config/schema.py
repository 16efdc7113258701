"""The recipe schema: one typed section per concept. Defaults live here and nowhere else."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from align.data.spec import StageData
from align.security import check_repo_id
from align.strict import StrictModel

Stage = Literal["sft", "dpo"]
STAGES: tuple[Stage, ...] = ("sft", "dpo")


class ModelSection(StrictModel):
    """Which backbone to load and how."""

    name_or_path: str = Field(description="Local checkpoint directory or hub model id (Mixtral architecture).")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Weights/compute dtype. auto: float32 on CPU (bf16 is 60-100x slower there), bf16 on GPU.",
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = Field("sdpa", description="Attention kernel.")
    experts_implementation: Literal["grouped_mm", "batched_mm", "eager"] | None = Field(
        None, description="Fused-experts backend (transformers 5); None keeps the library's default."
    )
    trust_remote_code: bool = Field(False, description="Run code shipped with the checkpoint. Off unless you trust it.")
    allow_pickle_weights: bool = Field(
        False,
        description="Accept pickle (.bin) weights when a checkpoint has no safetensors; unpickling can run code.",
    )
    allow_dense: bool = Field(False, description="Accept a non-MoE (dense) architecture.")
    router_aux_loss_coef: float | None = Field(
        None,
        ge=0,
        description="Weight of the router load-balancing loss; None keeps the model config's value.",
    )
    chat_template: Literal["auto", "mixtral", "keep"] = Field(
        "auto",
        description="auto: keep the tokenizer's template if it marks assistant turns, else install Mixtral-Instruct's.",
    )
    create_tiny_if_missing: bool = Field(
        False,
        description="Build the embedded tiny Mixtral at name_or_path when that directory does not exist.",
    )
    adapter_path: str | None = Field(
        None,
        description="Start from this LoRA adapter (used by a stage that has no earlier stage in this run).",
    )


class TopP(StrictModel):
    """Per layer, the most-used experts until their routed-token share reaches top_p."""

    top_p: float = Field(gt=0, le=1, description="Cumulative routed-token share to cover in each layer.")


class TopK(StrictModel):
    """Per layer, the k most-used experts."""

    top_k_per_layer: int = Field(gt=0, description="Experts kept per layer.")


ExpertPolicy = Literal["all", "none"] | TopP | TopK | dict[int, list[int]]


class LoraSection(StrictModel):
    """LoRA adapters: attention modules, the fused experts (routed, expert-aware) and the router."""

    r: int = Field(16, gt=0, description="LoRA rank (the mean expert rank with rank_by_load).")
    alpha: float = Field(32, gt=0, description="LoRA scaling numerator (scale = alpha / rank).")
    dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="LoRA dropout (attention and routed experts; PEFT forbids it on target_parameters).",
    )
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], description="Linear modules to adapt."
    )
    experts: ExpertPolicy = Field(
        "all",
        description="Experts to adapt: all, none, {top_p: p}, {top_k_per_layer: k} or {layer: [experts]}; "
        "top_p/top_k use the routing profile of the stage's training data.",
    )
    implementation: Literal["routed", "peft"] = Field(
        "routed",
        description="routed: align's expert LoRA (only routed tokens, any selection); peft: PEFT target_parameters "
        "(every expert, dense delta each forward).",
    )
    rank_by_load: bool = Field(False, description="Rank of each selected expert proportional to its routed share.")
    min_rank: int = Field(2, gt=0, description="Smallest expert rank with rank_by_load.")
    max_rank: int | None = Field(None, gt=0, description="Largest expert rank with rank_by_load (default 4 x r).")
    routing_profile: str | None = Field(
        None, description="routing.json from `align profile-experts`; computed on the fly when selection needs it."
    )
    profile_max_tokens: int = Field(20000, gt=0, description="Tokens profiled when the profile is computed on the fly.")
    router: Literal["frozen", "lora", "full"] = Field(
        "frozen", description="Router (mlp.gate): frozen, LoRA-adapted, or fully trained."
    )

    @model_validator(mode="after")
    def _consistent(self) -> LoraSection:
        dense_peft = self.implementation == "peft" and self.experts != "none"
        if self.dropout and (dense_peft or self.router == "lora"):
            raise ValueError(
                "lora.dropout must be 0 with PEFT target_parameters (implementation: peft or router: lora); "
                "routed experts (implementation: routed) accept dropout"
            )
        if self.implementation == "peft" and (self.experts not in ("all", "none") or self.rank_by_load):
            raise ValueError("implementation: peft adapts every expert at one rank; use implementation: routed")
        return self

    def policy(self):
        """The expert policy as plain data for align.moe.placement."""
        return self.experts.model_dump() if isinstance(self.experts, StrictModel) else self.experts


class QuantizationSection(StrictModel):
    """bitsandbytes 4-bit loading (QLoRA)."""

    load_in_4bit: bool = Field(False, description="Load the base weights in 4 bit.")
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type.")
    bnb_4bit_use_double_quant: bool = Field(True, description="Quantize the quantization constants too.")
    bnb_4bit_compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Dtype of the dequantized matmuls; auto follows model.dtype."
    )
    bnb_4bit_quant_storage: Literal["auto", "uint8", "bfloat16", "float16", "float32"] = Field(
        "auto",
        description="Storage dtype of packed weights; auto matches model dtype so ZeRO-3 can shard them.",
    )


class DataSection(StrictModel):
    """Data of each stage."""

    sft: StageData | None = Field(None, description="SFT conversations.")
    dpo: StageData | None = Field(None, description="Preference pairs.")


class StageSection(StrictModel):
    """Align's own per-stage keys. Every other key of `sft:`/`dpo:` is a TRL config field (validated)."""

    eval_samples: int | None = Field(
        256, gt=0, description="Held-out rows align evaluates before and after the stage (None: all)."
    )
    on_nonfinite: Literal["stop", "skip"] = Field(
        "stop",
        description="A NaN/Inf loss or gradient: stop the stage (last good checkpoint kept) or skip that update.",
    )
    max_nonfinite_skips: int = Field(
        10, ge=0, description="With on_nonfinite: skip, stop the stage after this many skipped updates."
    )
    packed_forward: bool = Field(
        True,
        description="Padding-free training forward: each batch's sequences packed into rows (attention kept inside "
        "each sequence), the LM head scores only labelled tokens; same loss as the padded batch.",
    )
    trainer: dict[str, Any] = Field(default_factory=dict, description="(filled by the loader) TRL fields.")


class ExportSection(StrictModel):
    """What `align run` writes after its last stage besides the adapters (same as `align export --merge`)."""

    merge: bool = Field(
        False, description="Write OUTPUT_DIR/final: the base with the final adapter merged in (stock Mixtral shards)."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="dtype of the merged weights; auto keeps the base checkpoint's."
    )
    max_shard_size: str = Field("5GB", description="Largest safetensors shard of the merged checkpoint.")


class HubSection(StrictModel):
    """Push the result to a Hugging Face hub at the end of `align run` (token: HF_TOKEN or `hf auth login`)."""

    push: bool = Field(False, description="Upload at the end of the run (one commit; repo created if missing).")
    repo_id: str | None = Field(None, description="Target repo, e.g. my-org/mixtral-8x7b-mydpo-lora.")
    private: bool = Field(False, description="Create the repo private (a repo that exists keeps its visibility).")
    revision: str = Field("main", description="Branch to commit to (created from main if missing).")
    folder: Literal["adapter", "merged"] = Field(
        "adapter", description="adapter: the final stage's adapter dir; merged: OUTPUT_DIR/final (exported first)."
    )

    @field_validator("repo_id")
    @classmethod
    def _valid_repo_id(cls, repo_id: str | None) -> str | None:
        return None if repo_id is None else check_repo_id(repo_id)

    @model_validator(mode="after")
    def _repo_when_pushing(self) -> HubSection:
        if self.push and not self.repo_id:
            raise ValueError("hub.push is true but hub.repo_id is missing")
        return self


class Recipe(StrictModel):
    """A whole recipe: model, adapters, data, stages and their trainer settings."""

    model: ModelSection
    lora: LoraSection = Field(default_factory=LoraSection)
    quantization: QuantizationSection = Field(default_factory=QuantizationSection)
    data: DataSection = Field(default_factory=DataSection)
    sft: StageSection = Field(default_factory=StageSection)
    dpo: StageSection = Field(default_factory=StageSection)
    export: ExportSection = Field(default_factory=ExportSection)
    hub: HubSection = Field(default_factory=HubSection)
    stages: list[Stage] = Field(default_factory=lambda: ["sft", "dpo"], description="Stages to run, in order.")
    output_dir: str = Field("runs/align", description="Where every stage writes OUTPUT_DIR/<stage>/.")
    seed: int = Field(42, description="Seed for data mixing, shuffling and training.")
    resume: bool = Field(
        False,
        description="Skip stages whose verified output exists; continue the current one from its latest checkpoint "
        "(same as `align run --resume`).",
    )

    @field_validator("stages")
    @classmethod
    def _stage_order(cls, stages: list[str]) -> list[str]:
        if not stages:
            raise ValueError("stages is empty: list at least one of sft, dpo")
        if len(set(stages)) != len(stages):
            raise ValueError(f"stages lists a stage twice: {stages}")
        if stages != sorted(stages, key=STAGES.index):
            raise ValueError(f"stages must run in the order sft, dpo; got {stages}")
        return stages

    @model_validator(mode="after")
    def _data_for_stages(self) -> Recipe:
        for stage in self.stages:
            if getattr(self.data, stage) is None:
                raise ValueError(f"stage '{stage}' is listed in stages but data.{stage} is missing")
        return self

    def stage_data(self, stage: Stage) -> StageData:
        """The data section of a stage (validated to exist for listed stages)."""
        return self.data.sft if stage == "sft" else self.data.dpo  # type: ignore[return-value]

    def stage_section(self, stage: Stage) -> StageSection:
        """The `sft:` or `dpo:` section."""
        return self.sft if stage == "sft" else self.dpo
