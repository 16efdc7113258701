"""Resume after a crash: skip verified finished stages, continue the current one from its latest good checkpoint.

A stage's trainer writes OUTPUT/checkpoints/<stage>/checkpoint-N (adapter, optimizer, scheduler, RNG states,
trainer_state.json last). `prepare_stage` picks the newest checkpoint that verifies, checks that it was
written by the same recipe (OUTPUT/checkpoints/<stage>/recipe.yaml), trims metrics.jsonl back to its step,
and hands it to `Trainer.train(resume_from_checkpoint=...)`, which restores the adapter weights, optimizer,
scheduler, RNG states and data position. A fresh (non-resume) run clears a stage's old checkpoints instead, so
a later --resume can never pick up a checkpoint of an earlier, different run.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from align.config import Recipe, Stage
from align.config.redact import recipe_dict
from align.errors import OutputError, RecipeError
from align.stages.verify import adapter_problem, aside, is_disk_error, reason, recover_previous, stage_dir_problem

log = logging.getLogger("align")

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
RECIPE_FILE = "recipe.yaml"  # in OUTPUT/checkpoints/<stage>/: the stage's recipe when its checkpoints began


def checkpoint_problem(path: Path) -> str | None:
    """Why checkpoint dir `path` cannot be resumed from (None: it can)."""
    try:
        state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return f"no readable trainer_state.json (written last: the save was interrupted?) ({type(err).__name__})"
    step = int(CHECKPOINT.match(path.name)[1])
    if not isinstance(state, dict) or state.get("global_step") != step:
        return f"trainer_state.json says step {state.get('global_step') if isinstance(state, dict) else '?'}"
    return _optimizer_problem(path) or adapter_problem(path)


def _optimizer_problem(path: Path) -> str | None:
    """Optimizer and scheduler state: Trainer's torch zip files, or a DeepSpeed engine dir named by `latest`."""
    latest = path / "latest"
    if latest.is_file():  # DeepSpeed keeps optimizer (and its scheduler) state in its own per-step dir
        tag = latest.read_text(encoding="utf-8", errors="replace").strip()
        engine = path / tag
        if not tag or not engine.is_dir() or not any(engine.iterdir()):
            return f"the DeepSpeed state named by 'latest' ({tag!r}) is missing"
        return None
    for name in ("optimizer.pt", "scheduler.pt"):
        if not (path / name).is_file() or not zipfile.is_zipfile(path / name):
            return f"{name} is missing or truncated"
    return None


def checkpoints(work: Path) -> list[tuple[int, Path]]:
    """(step, dir) of every checkpoint-N dir in `work`, newest first."""
    if not work.is_dir():
        return []
    found = [(int(m[1]), p) for p in work.iterdir() if p.is_dir() and (m := CHECKPOINT.match(p.name))]
    return sorted(found, reverse=True)


def latest_checkpoint(work: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest checkpoint that verifies, and the newer ones that did not (with why)."""
    rejected = []
    for _, path in checkpoints(work):
        problem = checkpoint_problem(path)
        if problem is None:
            return path, rejected
        rejected.append((path, problem))
    return None, rejected


# Stage keys that do not change the training trajectory: a resumed run may change them.
RESUME_FREE = {
    "eval_samples",
    "on_nonfinite",
    "max_nonfinite_skips",
    "save_steps",
    "save_total_limit",
    "save_strategy",
    "logging_steps",
    "per_device_eval_batch_size",
    "ddp_timeout",
    "dataloader_num_workers",
    "disable_tqdm",
}


def stage_fingerprint(data: dict, stage: Stage) -> dict:
    """The parts of a resolved recipe (`recipe_dict` form) that shape one stage's training."""
    section = {k: v for k, v in (data.get(stage) or {}).items() if k not in RESUME_FREE}
    return {
        "model": data.get("model"),
        "lora": data.get("lora"),
        "quantization": data.get("quantization"),
        "data": (data.get("data") or {}).get(stage),
        stage: section,
        "seed": data.get("seed"),
    }


def _flat(value, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def recipe_changes(old: dict, new: dict) -> list[str]:
    """Dotted keys whose values differ, as 'key: old -> new'. Keys the old file lacks (added to the schema
    since, so at their defaults then) are not changes."""
    a, b = _flat(old), _flat(new)
    return [f"{k}: {a[k]!r} -> {b.get(k)!r}" for k in sorted(a) if a[k] != b.get(k)]


def _check_same_recipe(saved: Path, recipe: Recipe, stage: Stage, what: str) -> None:
    """RecipeError when `saved` (a resolved recipe.yaml) differs from `recipe` in what shapes `stage`."""
    if not saved.is_file():
        return
    try:
        old = yaml.safe_load(saved.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        old = None
    if not isinstance(old, dict):
        raise RecipeError(f"--resume: {saved} is unreadable; run without --resume to redo {stage}")
    changes = recipe_changes(stage_fingerprint(old, stage), stage_fingerprint(recipe_dict(recipe), stage))
    if changes:
        shown = "; ".join(changes[:3]) + (f"; and {len(changes) - 3} more" if len(changes) > 3 else "")
        raise RecipeError(
            f"--resume: {what} was made with a different recipe ({shown}); resume with the same recipe, "
            f"or run without --resume to redo {stage}"
        )


def stage_done(recipe: Recipe, stage: Stage) -> dict | None:
    """With resume on: the eval summary of a finished stage whose output verifies (else None).

    Rank 0 puts back an output that a crash left renamed aside; the other ranks read that copy directly,
    so every rank reaches the same verdict without a barrier.
    """
    final = Path(recipe.output_dir) / stage
    if os.environ.get("RANK", "0") == "0":
        recover_previous(final)
    if not recipe.resume:
        return None
    found = final if final.exists() else aside(final)
    if stage_dir_problem(found) is not None:
        return None
    _check_same_recipe(found / "recipe.yaml", recipe, stage, str(final))
    return json.loads((found / "eval.json").read_text(encoding="utf-8"))


def trim_metrics(path: Path, step: int) -> int:
    """Keep metrics.jsonl records up to `step` (the checkpoint's); drop later and torn lines. Returns kept."""
    if not path.exists():
        return 0
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line)
    path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
    return len(kept)


def _clear_old_run(work: Path) -> None:
    """A fresh start: remove an earlier run's checkpoints and metrics (they would mislead a later --resume)."""
    old = checkpoints(work)
    for _, path in old:
        shutil.rmtree(path, ignore_errors=True)
    if old:
        log.info(
            "starting afresh: removed %d checkpoints of an earlier run in %s (--resume continues them)", len(old), work
        )
    (work / "metrics.jsonl").unlink(missing_ok=True)


def prepare_stage(recipe: Recipe, stage: Stage, tmp: Path, work: Path, is_main: bool) -> Path | None:
    """Set up a stage's dirs; with resume on, return the checkpoint to continue from (None: start afresh).

    Every rank computes the same answer from the shared file system; only the main process writes.
    """
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        work.mkdir(parents=True, exist_ok=True)
    if recipe.resume:
        found, rejected = latest_checkpoint(work)
        for path, problem in rejected:
            log.warning("not resuming from %s: %s", path, problem)
        if found is not None:
            _check_same_recipe(work / RECIPE_FILE, recipe, stage, str(work))
            step = int(CHECKPOINT.match(found.name)[1])
            if is_main:
                for path, _ in rejected:  # newer, broken: the resumed run writes these steps again
                    shutil.rmtree(path, ignore_errors=True)
                trim_metrics(work / "metrics.jsonl", step)
            log.info("%s: resuming from %s (step %d)", stage, found, step)
            return found
        log.info("%s: no checkpoint to resume from in %s: starting the stage afresh", stage, work)
    if is_main:
        _clear_old_run(work)
        (work / RECIPE_FILE).write_text(yaml.safe_dump(recipe_dict(recipe), sort_keys=False), encoding="utf-8")
    return None


def check_same_adapter(model, checkpoint: Path, stage: Stage) -> None:
    """RecipeError unless the checkpoint's adapter tensors are exactly the ones the model's adapter has.

    PEFT's `load_adapter` (what Trainer calls on resume) only warns about missing keys, so a different
    expert plan (e.g. a routing profile that changed) would silently resume from partly fresh weights.
    """
    from peft import PeftModel, get_peft_model_state_dict
    from safetensors import safe_open

    if not isinstance(model, PeftModel):
        return
    with safe_open(str(checkpoint / "adapter_model.safetensors"), framework="pt") as f:
        saved = set(f.keys())
    expected = set(get_peft_model_state_dict(model).keys())
    if saved != expected:
        differ = sorted(saved ^ expected)
        raise RecipeError(
            f"--resume: {checkpoint} holds a different adapter ({len(differ)} tensors differ, e.g. {differ[0]}); "
            f"run without --resume to start {stage} afresh"
        )


def training_loss(log_history: list[dict]) -> float | None:
    """Mean training loss over all steps from the trainer's log history (restored on resume).

    Trainer's own `training_loss` divides only the resumed steps' loss by all steps after a resume.
    """
    total = weight = 0.0
    last = 0
    for record in log_history:
        if "loss" in record and "step" in record:
            span = record["step"] - last
            total, weight, last = total + record["loss"] * span, weight + span, record["step"]
    return total / weight if weight else None


@contextmanager
def disk_errors(stage: Stage, work: Path) -> Iterator[None]:
    """A write refused by the disk while a stage trains (a checkpoint save): one error naming what survives."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        if not is_disk_error(err):
            raise
        good, _ = latest_checkpoint(work)
        kept = f"the last good checkpoint {good} is intact" if good else "no complete checkpoint exists yet"
        raise OutputError(
            f"{stage}: writing failed: {reason(err)}; {kept} (a partial newer one is ignored): free space and "
            "rerun with --resume"
        ) from None
