"""SFT stage: TRL SFTTrainer on conversations, loss on assistant tokens only. build -> train -> save."""

from __future__ import annotations

import logging
import math

from transformers import PrinterCallback
from trl import SFTTrainer

from align.moe.zero3 import register_moe_leaves
from align.stages.args import training_args
from align.stages.common import StagePaths, prepare_dirs, save_stage
from align.stages.setup import StageSetup, build_setup

log = logging.getLogger("align")


def _loss_metrics(trainer, when: str) -> dict[str, float]:
    if trainer.eval_dataset is None:
        return {}
    loss = trainer.evaluate()["eval_loss"]
    return {f"eval_loss_{when}": loss, f"perplexity_{when}": math.exp(min(loss, 50.0))}


def run_sft(setup: StageSetup | None = None, **kwargs) -> dict:
    """Run the SFT stage of a recipe; returns the stage's eval summary."""
    s = setup or build_setup(stage="sft", **kwargs)
    paths = StagePaths(s.output_dir, "sft")
    prepare_dirs(paths, s.is_main)
    args = training_args(s.recipe, "sft", s.runtime, paths.work)
    register_moe_leaves(s.model)  # after the args: they switch ZeRO-3 on
    trainer = SFTTrainer(
        model=s.model,
        args=args,
        train_dataset=s.data.train,
        eval_dataset=s.data.eval,
        processing_class=s.tokenizer,
        peft_config=s.peft_config,
        callbacks=s.callbacks(paths.metrics),
    )
    trainer.remove_callback(PrinterCallback)  # raw log dicts on stdout; MetricsLogger reports instead
    s.log_trainable(trainer.model)
    evaluation = {"stage": "sft", "train_rows": len(s.data.train), **_loss_metrics(trainer, "before")}
    result = trainer.train()
    evaluation.update(_loss_metrics(trainer, "after"))
    evaluation.update({"train_loss": result.training_loss, "steps": trainer.state.global_step})
    save_stage(trainer, s.tokenizer, s.recipe, paths, evaluation)
    if "eval_loss_before" in evaluation:
        log.info("SFT held-out loss %.3f -> %.3f", evaluation["eval_loss_before"], evaluation["eval_loss_after"])
    return evaluation
