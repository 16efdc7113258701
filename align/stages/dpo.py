"""DPO stage: TRL DPOTrainer from the SFT adapter; reference = the frozen SFT policy. build -> train -> save."""

from __future__ import annotations

import logging

from transformers import PrinterCallback
from trl.trainer.utils import use_adapter

from align.evaluate import evaluate_preferences
from align.moe.zero3 import gathered_layers
from align.stages.common import save_stage
from align.stages.setup import StageSetup, build_setup
from align.stages.trainers import AlignDPOTrainer

log = logging.getLogger("align")


def reference_context(model):
    """The context in which the policy model computes reference log-probs, as DPOTrainer does.

    With an SFT adapter, TRL keeps a frozen copy named "ref"; with a fresh adapter the reference is
    the base model (adapters disabled).
    """
    adapter = "ref" if "ref" in model.peft_config else None
    return lambda: use_adapter(model, adapter_name=adapter)


def _evaluate(trainer, setup: StageSetup, rows: list[dict], reference) -> dict[str, float]:
    if not rows:
        return {}
    args = trainer.args
    return evaluate_preferences(
        trainer.model,
        setup.tokenizer,
        rows,
        beta=args.beta,
        reference=reference,
        max_length=args.max_length,
        batch_size=args.per_device_eval_batch_size,
    )


def build_trainer(s: StageSetup) -> AlignDPOTrainer:
    """The stage's DPO trainer: TRL's, with align's padding-free forward and the on-disk reference cache
    (OUTPUT_DIR/cache/reference, used when `precompute_ref_log_probs` is on, align's default)."""
    trainer = AlignDPOTrainer(
        model=s.model,
        ref_model=None,
        args=s.args,
        train_dataset=s.data.train,
        processing_class=s.tokenizer,
        peft_config=s.peft_config,
        callbacks=s.callbacks(s.paths.metrics),
        packed_forward=s.recipe.dpo.packed_forward,
        ref_cache_dir=s.output_dir / "cache" / "reference",
    )
    trainer.remove_callback(PrinterCallback)  # raw log dicts on stdout; MetricsLogger reports instead
    return trainer


def run_dpo(setup: StageSetup | None = None, **kwargs) -> dict:
    """Run the DPO stage of a recipe; returns the stage's eval summary (held-out reward accuracy etc.)."""
    s = setup or build_setup(stage="dpo", **kwargs)
    paths = s.paths
    trainer = build_trainer(s)
    s.log_trainable(trainer.model)
    held_out = s.held_out()
    rows = [] if held_out is None else held_out.to_list()
    # Before training the policy IS the reference: accuracy 0.5 by construction; logp_accuracy says
    # whether the starting (SFT) policy already prefers the chosen answers.
    with gathered_layers(trainer.model):  # ZeRO-3: the engine does not exist before train()
        before = _evaluate(trainer, s, rows, reference=None)
    train_loss = s.train(trainer)
    after = _evaluate(trainer, s, rows, reference=reference_context(trainer.model))
    evaluation = {
        "stage": "dpo",
        "train_rows": len(s.data.train),
        "reference": "sft adapter (frozen)" if s.init_adapter else "base model (adapter disabled)",
        "train_loss": train_loss,
        "steps": trainer.state.global_step,
        "data_shards": s.shards.report,
        **{f"{k}_before": v for k, v in before.items()},
        **{f"{k}_after": v for k, v in after.items()},
    }
    save_stage(trainer, s.tokenizer, s.recipe, paths, evaluation)
    if rows:
        log.info(
            "DPO held-out reward accuracy %.3f -> %.3f (margin %.3f)",
            before["reward_accuracy"],
            after["reward_accuracy"],
            after["reward_margin"],
        )
    return evaluation
