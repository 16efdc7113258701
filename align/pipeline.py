"""`align run`: the recipe's stages in order, each starting from what the previous one wrote."""

from __future__ import annotations

import gc
import json
import logging
import time
from pathlib import Path

import torch
from accelerate import PartialState

from align.config import Recipe, Stage
from align.stages.dpo import run_dpo
from align.stages.resume import disk_errors, stage_done
from align.stages.sft import run_sft

log = logging.getLogger("align")

RUNNERS = {"sft": run_sft, "dpo": run_dpo}


def run_pipeline(recipe: Recipe, stages: list[Stage] | None = None) -> dict:
    """Run `stages` (default: the recipe's) and write OUTPUT_DIR/summary.json on the main process."""
    summary: dict = {"output_dir": str(Path(recipe.output_dir).resolve()), "stages": {}}
    for stage in stages or recipe.stages:
        done = stage_done(recipe, stage)
        if done is not None:  # --resume: a verified output of the same recipe exists
            log.info("%s: complete in %s (verified): skipped", stage, Path(recipe.output_dir) / stage)
            summary["stages"][stage] = {**done, "skipped": "complete"}
            continue
        start = time.perf_counter()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        with disk_errors(stage, Path(recipe.output_dir) / "checkpoints" / stage):
            result = RUNNERS[stage](recipe=recipe)
        result["seconds"] = round(time.perf_counter() - start, 1)
        if torch.cuda.is_available():  # what `align plan` predicts, measured
            result["cuda_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        summary["stages"][stage] = result
        gc.collect()  # the stage's model and trainer go before the next one loads
    state = PartialState()
    summary["world_size"] = state.num_processes
    if state.is_main_process:
        path = Path(recipe.output_dir) / "summary.json"
        path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        from align.evaluation.report import run_report  # eval.md + figures (align/evaluation/, align/plots.py)

        summary["report"] = str(run_report(recipe, list(summary["stages"])))
        path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        if recipe.export.merge or recipe.hub.push:  # merged checkpoint and/or push (align/export/finish.py)
            from align.export.finish import finish_run

            summary.update(finish_run(recipe, list(summary["stages"])[-1]))
            path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def format_summary(summary: dict) -> str:
    """What a user reads at the end of a run: where outputs are and what was measured."""
    lines = [f"outputs: {summary['output_dir']}"]
    heatmap = Path(summary["output_dir"]) / "routing" / "routing.png"
    if heatmap.exists():
        lines.append(f"  routing profile of the training data: {heatmap}")
    for stage, r in summary["stages"].items():
        took = "already complete, skipped" if "skipped" in r else f"{r.get('seconds')} s"
        where = f"  {stage}: {summary['output_dir']}/{stage}/  ({r.get('steps')} steps, {took})"
        lines.append(where)
        if "eval_loss_before" in r:
            lines.append(f"    held-out loss {r['eval_loss_before']:.3f} -> {r['eval_loss_after']:.3f}")
        if "reward_accuracy_before" in r:
            lines.append(
                f"    held-out reward accuracy {r['reward_accuracy_before']:.3f} -> {r['reward_accuracy_after']:.3f}"
                f" (margin {r['reward_margin_after']:.3f}; policy prefers chosen "
                f"{r['logp_accuracy_before']:.3f} -> {r['logp_accuracy_after']:.3f})"
            )
    if "report" in summary:
        lines.append(f"  eval report (tables, curves, sample replies): {summary['report']}")
    if "export" in summary:
        lines.append(f"  merged checkpoint: {summary['export']}/")
    if "hub" in summary:
        hub = summary["hub"]
        lines.append(f"  pushed to {hub['url']} ({hub['uploaded']} files uploaded, {hub['unchanged']} unchanged)")
    return "\n".join(lines)
