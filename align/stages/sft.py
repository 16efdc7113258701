"""SFT stage: TRL SFTTrainer on conversations, loss on assistant tokens only. build -> train -> save."""

from __future__ import annotations

import logging
import math
from contextlib import nullcontext

import torch
from transformers import PrinterCallback

from align.moe.zero3 import gathered_layers
from align.stages.common import save_stage
from align.stages.setup import StageSetup, build_setup
from align.stages.trainers import AlignSFTTrainer

log = logging.getLogger("align")


@torch.no_grad()
def heldout_loss(trainer, before_training: bool) -> float:
    """Token-weighted held-out loss on assistant tokens, over every rank's share of the eval set.

    align's own loop rather than `trainer.evaluate()`: under DeepSpeed, evaluating before `train()`
    builds an inference engine and the training engine is then never created (transformers 5.24).
    """
    model = trainer.model
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=trainer.accelerator.device)
    try:
        with gathered_layers(model) if before_training else nullcontext():  # ZeRO-3 engine exists only after
            for batch in trainer.get_eval_dataloader():
                inputs = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
                count = (inputs["labels"][:, 1:] != -100).sum()
                loss = model(**inputs, use_cache=False, output_router_logits=False).loss  # cross-entropy only
                total += torch.stack([loss.double() * count, count.double()])
    finally:
        model.train(was_training)
    total = trainer.accelerator.reduce(total, reduction="sum")
    return (total[0] / total[1].clamp(min=1)).item()


def _loss_metrics(trainer, when: str) -> dict[str, float]:
    if trainer.eval_dataset is None:
        return {}
    loss = heldout_loss(trainer, before_training=when == "before")
    return {f"eval_loss_{when}": loss, f"perplexity_{when}": math.exp(min(loss, 50.0))}


def build_trainer(s: StageSetup) -> AlignSFTTrainer:
    """The stage's SFT trainer (TRL's, with align's padding-free forward unless the recipe turns it off)."""
    trainer = AlignSFTTrainer(
        model=s.model,
        args=s.args,
        train_dataset=s.data.train,
        eval_dataset=s.held_out(),
        processing_class=s.tokenizer,
        peft_config=s.peft_config,
        callbacks=s.callbacks(s.paths.metrics),
        packed_forward=s.recipe.sft.packed_forward,
    )
    trainer.remove_callback(PrinterCallback)  # raw log dicts on stdout; MetricsLogger reports instead
    return trainer


def run_sft(setup: StageSetup | None = None, **kwargs) -> dict:
    """Run the SFT stage of a recipe; returns the stage's eval summary."""
    s = setup or build_setup(stage="sft", **kwargs)
    paths = s.paths
    trainer = build_trainer(s)
    s.log_trainable(trainer.model)
    held_rows = 0 if trainer.eval_dataset is None else len(s.held_out())  # the model card's data sizes
    evaluation = {"stage": "sft", "train_rows": len(s.data.train), "eval_rows": held_rows}
    evaluation.update(_loss_metrics(trainer, "before"))
    train_loss = s.train(trainer)
    evaluation.update(_loss_metrics(trainer, "after"))
    evaluation.update({"train_loss": train_loss, "steps": trainer.state.global_step, "data_shards": s.shards.report})
    save_stage(trainer, s.tokenizer, s.recipe, paths, evaluation)
    if "eval_loss_before" in evaluation:
        log.info("SFT held-out loss %.3f -> %.3f", evaluation["eval_loss_before"], evaluation["eval_loss_after"])
    return evaluation
