"""Build what a stage needs from a recipe: runtime, tokenizer, data, model, and the adapter to train."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from accelerate import PartialState
from peft import LoraConfig
from transformers import set_seed

from align.chat import template_allows_system
from align.config import Recipe, Stage
from align.data import StageDatasets, load_stage
from align.lora import lora_config
from align.model import MOE_MODEL_TYPES, load_model, load_tokenizer
from align.moe.adapters import wrap
from align.moe.metrics import RoutingMetrics, probe_batch
from align.moe.routing import expert_plan
from align.moe.zero3 import register_moe_leaves
from align.runtime import Runtime, resolve_runtime
from align.stages.args import training_args
from align.stages.common import StagePaths, load_adapter, stage_complete, trainable_parameters
from align.stages.guards import NonFiniteGuard
from align.stages.inputs import check_vocab, prompt_fits
from align.stages.metrics import MetricsLogger
from align.stages.resume import check_same_adapter, prepare_stage, training_loss
from align.stages.shards import DataShards
from align.tiny import build_tiny_mixtral

log = logging.getLogger("align")


@dataclass
class StageSetup:
    """Everything a stage's trainer is built from."""

    recipe: Recipe
    stage: Stage
    runtime: Runtime
    tokenizer: object
    model: object
    peft_config: LoraConfig | None  # None when `model` already carries the adapter to train
    init_adapter: Path | None
    data: StageDatasets
    output_dir: Path
    is_main: bool
    args: object  # the stage's SFTConfig / DPOConfig
    paths: StagePaths
    resume_from: Path | None = None  # the checkpoint Trainer.train continues (align run --resume)
    shards: DataShards = field(default_factory=DataShards)  # what each rank trained on (summary.json)

    def callbacks(self, metrics_path: Path) -> list:
        """Routing metrics (MoE models; they must run before the logger sees the logs), then metrics.jsonl."""
        out = []
        if self.model.config.model_type in MOE_MODEL_TYPES:
            probe = probe_batch(self.tokenizer, self.data.train)
            out.append(RoutingMetrics(probe, self.model.config.num_experts_per_tok))
        section = self.recipe.stage_section(self.stage)
        guard = NonFiniteGuard(self.stage, section.on_nonfinite, section.max_nonfinite_skips, self.paths.work)
        return [*out, guard, self.shards, MetricsLogger(metrics_path, self.stage)]

    def train(self, trainer) -> float:
        """`trainer.train()`, continuing `resume_from` when set; returns the mean training loss of all steps."""
        if self.resume_from is not None:
            check_same_adapter(trainer.model, self.resume_from, self.stage)
        result = trainer.train(resume_from_checkpoint=str(self.resume_from) if self.resume_from else None)
        if self.resume_from is None:
            return result.training_loss
        return training_loss(trainer.state.log_history) or result.training_loss

    def held_out(self):
        """The stage's held-out rows, capped at the recipe's `eval_samples` (None: no held-out data)."""
        limit = self.recipe.stage_section(self.stage).eval_samples
        if self.data.eval is None or limit is None:
            return self.data.eval
        return self.data.eval.select(range(min(limit, len(self.data.eval))))

    def log_trainable(self, model) -> None:
        trainable, total = trainable_parameters(model)
        log.info(
            "%s: %s trainable of %s parameters (%.2f%%)",
            self.stage,
            f"{trainable:,}",
            f"{total:,}",
            100.0 * trainable / max(total, 1),
        )


def initial_adapter(recipe: Recipe, stage: Stage, output_dir: Path) -> Path | None:
    """DPO continues the SFT adapter of this run when there is one; else the recipe's adapter_path."""
    if stage == "dpo" and stage_complete(output_dir / "sft"):
        return output_dir / "sft"
    return Path(recipe.model.adapter_path) if recipe.model.adapter_path else None


def ensure_backbone(recipe: Recipe, state: PartialState) -> None:
    """Build the embedded tiny Mixtral where the recipe asks for it and it is missing (main process)."""
    path = Path(recipe.model.name_or_path)
    if not recipe.model.create_tiny_if_missing or path.exists():
        return
    with state.main_process_first():
        if state.is_main_process and not path.exists():
            log.info("building the embedded tiny Mixtral at %s", path)
            build_tiny_mixtral(path, seed=recipe.seed)


def build_setup(recipe: Recipe, stage: Stage) -> StageSetup:
    """Load tokenizer, data and model for `stage`; decide which adapter gets trained."""
    runtime = resolve_runtime(recipe.model.dtype)
    output_dir = Path(recipe.output_dir)
    paths = StagePaths(output_dir, stage)
    # The training arguments come first: they set up the distributed state (use_cpu -> gloo DDP on CPU;
    # a DeepSpeed launch -> the engine's process group and ZeRO-3 init for from_pretrained).
    args = training_args(recipe, stage, runtime, paths.work)
    state = PartialState()
    resume_from = prepare_stage(recipe, stage, paths.tmp, paths.work, state.is_main_process)
    ensure_backbone(recipe, state)
    init = initial_adapter(recipe, stage, output_dir)
    # The tokenizer travels with the adapter, so DPO renders exactly what SFT trained on.
    tokenizer = load_tokenizer(
        recipe.model, path=str(init) if init and (init / "tokenizer_config.json").exists() else None
    )
    data = load_stage(
        recipe.stage_data(stage),
        "sft" if stage == "sft" else "preference",
        seed=recipe.seed,
        allow_system=template_allows_system(tokenizer),
        log=log.info if state.is_main_process else (lambda _msg: None),
        check=prompt_fits(tokenizer, args.max_length, stage, args.truncation_mode),
    )
    if state.is_main_process:
        log.info("%s", data.report.summary())
    model = load_model(recipe.model, recipe.quantization, runtime)
    check_vocab(tokenizer, model, recipe.model.name_or_path)
    moe = model.config.model_type in MOE_MODEL_TYPES
    peft = None
    set_seed(recipe.seed)  # LoRA A init draws from torch's RNG, which each process seeds at random
    if init is not None:
        log.info("%s starts from the adapter in %s", stage, init)
        model = load_adapter(model, init)
    elif moe and recipe.lora.implementation == "routed" and recipe.lora.experts != "none":
        plan = expert_plan(recipe.lora, model, tokenizer, data.train, output_dir / "routing", state.is_main_process)
        model = wrap(model, lora_config(recipe.lora, moe=moe), plan)
    else:
        peft = lora_config(recipe.lora, moe=moe)
    register_moe_leaves(model)
    return StageSetup(
        recipe,
        stage,
        runtime,
        tokenizer,
        model,
        peft,
        init,
        data,
        output_dir,
        state.is_main_process,
        args,
        paths,
        resume_from,
    )
