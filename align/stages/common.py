"""What every stage shares: paths, model + adapter set-up, and the one atomic writer of outputs."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from peft import PeftModel

from align.card import write_stage_card
from align.config import Recipe, Stage, recipe_to_yaml
from align.errors import ModelError
from align.moe.adapters import export_stock, is_routed_adapter, load_routed
from align.plots import stage_curves
from align.stages.verify import replace_dir, save_failures, verify_stage_dir

log = logging.getLogger("align")

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# Written by Trainer.save_model but not part of a stage's outputs: a pickle, and TRL's frozen copy
# of the SFT adapter used as DPO reference (identical to OUTPUT/sft).
NOT_OUTPUTS = ("training_args.bin", "ref")


@dataclass
class StagePaths:
    """OUTPUT/<stage>/ (final, appears atomically), its temp twin, and the trainer's work dir."""

    root: Path
    stage: Stage
    final: Path = field(init=False)
    tmp: Path = field(init=False)
    work: Path = field(init=False)

    def __post_init__(self):
        self.final = self.root / self.stage
        self.tmp = self.root / f".{self.stage}.tmp"
        self.work = self.root / "checkpoints" / self.stage

    @property
    def metrics(self) -> Path:
        return self.work / "metrics.jsonl"


def stage_complete(path: Path) -> bool:
    """A stage dir counts as complete only if its adapter files are there (it appears by rename)."""
    return all((path / name).is_file() for name in ADAPTER_FILES)


def load_adapter(model, adapter_dir: str | Path):
    """Wrap `model` with a saved LoRA adapter, trainable (the stock PEFT format)."""
    if not stage_complete(Path(adapter_dir)):
        raise ModelError(f"no LoRA adapter at {adapter_dir} (expected {', '.join(ADAPTER_FILES)})")
    if is_routed_adapter(adapter_dir):  # stock format on disk, align's routed expert layer in memory
        return load_routed(model, adapter_dir, is_trainable=True)
    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)


def trainable_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    # under ZeRO-3 a parameter's local tensor is an empty shard; DeepSpeed keeps the real size in ds_numel
    sizes = [(getattr(p, "ds_numel", p.numel()), p.requires_grad) for p in model.parameters()]
    trainable = sum(n for n, grad in sizes if grad)
    total = sum(n for n, _ in sizes)
    return trainable, total


def save_stage(trainer, tokenizer, recipe: Recipe, paths: StagePaths, evaluation: dict) -> Path:
    """Save adapter + tokenizer + recipe + metrics + eval to a temp dir, verify, then rename into place.

    Every rank calls this (ZeRO-3 gathers the adapter collectively); only the main process writes. A failed
    write leaves the previous output in place and raises OutputError (align/stages/verify.py).
    """
    accelerator = trainer.accelerator
    with save_failures(paths.stage, paths.tmp, paths.final, paths.work):
        trainer.save_model(str(paths.tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            _write_outputs(trainer, tokenizer, recipe, paths, evaluation)
    accelerator.wait_for_everyone()
    return paths.final


def _write_outputs(trainer, tokenizer, recipe: Recipe, paths: StagePaths, evaluation: dict) -> None:
    """Main process: complete the temp dir, verify it loads, swap it in for the previous output."""
    export_stock(trainer.accelerator.unwrap_model(trainer.model), paths.tmp)
    for name in NOT_OUTPUTS:
        target = paths.tmp / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    tokenizer.save_pretrained(paths.tmp)
    (paths.tmp / "recipe.yaml").write_text(recipe_to_yaml(recipe), encoding="utf-8")
    (paths.tmp / "eval.json").write_text(json.dumps(evaluation, indent=2) + "\n", encoding="utf-8")
    if paths.metrics.exists():
        shutil.copyfile(paths.metrics, paths.tmp / "metrics.jsonl")
        stage_curves(paths.tmp, paths.stage)  # curves.png: loss, aux loss, rewards, lr (align/plots.py)
    write_stage_card(paths.tmp, recipe, paths.stage, evaluation, trainer.model.config.model_type)  # README.md
    verify_stage_dir(paths.tmp)
    replace_dir(paths.tmp, paths.final)
