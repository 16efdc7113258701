"""`align eval TARGET`: what a model or adapter does on held-out data, written as eval.json + eval.md.

Measured on the policy: summed completion log-probs of held-out preference pairs, SFT loss and
perplexity on held-out conversations, task accuracy judged by code, sample generations, and (optional)
long-context checks. The reference (see align/evaluation/target.py) is loaded after the policy is freed,
so only one model is in memory; the implicit DPO reward then comes from align.evaluate.preference_metrics.
"""

from __future__ import annotations

import gc
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from align.config.schema import Recipe
from align.data.spec import DataSource, StageData
from align.evaluate import preference_metrics
from align.evaluation.target import Target, default_reference, load_target, reference_target, resolve_target
from align.plots import CURVES_PNG

log = logging.getLogger("align")


@dataclass
class EvalRequest:
    """What to measure; None/empty parts are skipped."""

    pref_sources: list[DataSource] = field(default_factory=list)
    sft_sources: list[DataSource] = field(default_factory=list)
    tasks_file: str | None = None
    ref: str | None = None  # None: the target's default reference
    beta: float | None = None
    samples: int = 3
    max_new_tokens: int = 64
    long_context: list[int] | None = None
    max_length: int | None = None


def _rows(tokenizer, sources: list[DataSource], kind: str) -> list[dict]:
    from align.chat import template_allows_system
    from align.data import load_stage

    if not sources:
        return []
    data = StageData(train=sources, shuffle=False)
    allow = template_allows_system(tokenizer)
    return load_stage(data, kind, seed=0, allow_system=allow, log=lambda _m: None).train.to_list()


def _capped(sources: list[DataSource], max_rows: int) -> list[DataSource]:
    return [s.model_copy(update={"max_rows": min(s.max_rows or max_rows, max_rows)}) for s in sources]


def _samples(model, tokenizer, tasks: list[dict], prompts: list[list[dict]], req: EvalRequest) -> dict:
    """Task accuracy (greedy replies judged by code) and the first replies shown as samples."""
    from align.evaluation.generate import generate
    from align.evaluation.tasks import accuracy, judge, to_messages

    out: dict = {}
    if tasks:
        replies = [r[0] for r in generate(model, tokenizer, [to_messages(t) for t in tasks], req.max_new_tokens)]
        out["tasks"] = accuracy(tasks, replies)
        judged = [
            {"prompt": t["prompt"], "reply": r, "correct": judge(t, r)} for t, r in zip(tasks, replies, strict=True)
        ]
        out["samples"] = judged[: req.samples]
        out["task_replies"] = [{"id": t["id"], **j} for t, j in zip(tasks, judged, strict=True)]  # every reply
    elif prompts and req.samples:
        chosen = prompts[: req.samples]
        replies = [r[0] for r in generate(model, tokenizer, chosen, req.max_new_tokens)]
        out["samples"] = [{"prompt": p[-1]["content"], "reply": r} for p, r in zip(chosen, replies, strict=True)]
    return out


def _policy_pass(target: Target, req: EvalRequest, out_dir: Path) -> tuple[dict, object, object]:
    """Everything measured on the policy; returns (results, chosen log-probs, rejected log-probs)."""
    from align.evaluation.make_prefs import read_jsonl
    from align.evaluation.metrics import preference_logps, sft_metrics

    model, tokenizer = load_target(target)
    pref_rows = _rows(tokenizer, req.pref_sources, "preference")
    sft_rows = _rows(tokenizer, req.sft_sources, "sft")
    result: dict = {"pairs": len(pref_rows)}
    pc = pr = None
    if pref_rows:
        pc, pr = preference_logps(model, tokenizer, pref_rows, req.max_length)
    if sft_rows:
        result["sft"] = sft_metrics(model, tokenizer, [r["messages"] for r in sft_rows], req.max_length)
    tasks = read_jsonl(req.tasks_file) if req.tasks_file else []
    prompts = [r["prompt"] for r in pref_rows] or [r["messages"][:-1] for r in sft_rows]
    result.update(_samples(model, tokenizer, tasks, prompts, req))
    if req.long_context:
        from align.evaluation.long_context import long_context
        from align.plots import long_context_figure

        result["long_context"] = long_context(model, tokenizer, req.long_context)
        long_context_figure(result["long_context"], out_dir / "long_context.png", title=str(target.path))
    del model
    gc.collect()
    return result, pc, pr


def _reference_logps(spec: str, target: Target, rows_sources: list[DataSource], req: EvalRequest):
    from align.evaluation.metrics import preference_logps

    ref_target, with_adapter = reference_target(spec, target)
    model, tokenizer = load_target(ref_target, adapter=with_adapter)
    rows = _rows(tokenizer, rows_sources, "preference")
    logps = preference_logps(model, tokenizer, rows, req.max_length)
    del model
    gc.collect()
    return logps


def evaluate_target(target: Target, req: EvalRequest, out_dir: Path) -> dict:
    """Run every requested measurement; write eval.json, eval.md and the figures into `out_dir`."""
    start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    result, pc, pr = _policy_pass(target, req, out_dir)
    spec = req.ref if req.ref is not None else default_reference(target)
    beta = target.beta(req.beta)
    result.update({"target": str(target.path), "stage": target.stage, "beta": beta, "reference": spec or "itself"})
    if pc is not None:
        rc, rr = (pc, pr) if spec is None else _reference_logps(spec, target, req.pref_sources, req)
        result["preference"] = preference_metrics(pc, pr, rc, rr, beta)
    result["data"] = {
        "preference": [s.path for s in req.pref_sources],
        "sft": [s.path for s in req.sft_sources],
        "tasks": req.tasks_file,
    }
    result["seconds"] = round(time.perf_counter() - start, 1)
    _copy_figures(target, out_dir)
    write_report(result, out_dir)
    return result


def _copy_figures(target: Target, out_dir: Path) -> None:
    """Training curves of each stage of the run and the routing heatmap, beside the report."""
    root = target.run_root
    if root is None:
        return
    for stage in ("sft", "dpo"):
        png = root / stage / CURVES_PNG
        if png.is_file():
            shutil.copyfile(png, out_dir / f"curves_{stage}.png")
    routing = root / "routing" / "routing.png"
    if routing.is_file():
        shutil.copyfile(routing, out_dir / "routing.png")


def write_report(result: dict, out_dir: Path) -> None:
    from align.evaluation.report_md import render

    (out_dir / "eval.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    figures = sorted(p.name for p in out_dir.glob("*.png"))
    (out_dir / "eval.md").write_text(render(result, figures), encoding="utf-8")


def _recipe_sources(recipe: Recipe | None, stage: str, given: str | None, max_rows: int) -> list[DataSource]:
    if given:
        return [DataSource(path=given, max_rows=max_rows)]
    data = recipe.data.dpo if recipe is not None and stage == "dpo" else None
    if recipe is not None and stage == "sft":
        data = recipe.data.sft
    return _capped(data.eval, max_rows) if data is not None else []


def eval_command(args) -> str:
    """`align eval`: resolve, measure, write; returns the lines to print."""
    target = resolve_target(args.target, args.base)
    lengths = [int(n) for n in args.lengths.split(",")] if args.long_context else None
    req = EvalRequest(
        pref_sources=_recipe_sources(target.recipe, "dpo", args.data, args.max_rows),
        sft_sources=_recipe_sources(target.recipe, "sft", args.sft_data, args.max_rows),
        tasks_file=args.tasks,
        ref=args.ref,
        beta=args.beta,
        samples=args.samples,
        max_new_tokens=args.max_new_tokens,
        long_context=lengths,
    )
    default_out = target.run_root / "eval" / target.path.name if target.run_root else target.path / "eval"
    out_dir = Path(args.out) if args.out else default_out
    result = evaluate_target(target, req, out_dir)
    from align.evaluation.report_md import summary_lines

    return "\n".join([*summary_lines(result), f"wrote {out_dir}/eval.json and {out_dir}/eval.md"])


def run_report(recipe: Recipe, stages: list[str]) -> Path:
    """Pipeline hook, main process: OUTPUT_DIR/eval/eval.{json,md} from each stage's held-out eval.json,
    the curves and the routing heatmap, plus greedy sample replies of the final model (single process:
    loading a model again after a ZeRO-3 run hangs, transformers 5.24 / DeepSpeed 0.19.8)."""
    from accelerate import PartialState

    start = time.perf_counter()
    root = Path(recipe.output_dir)
    out_dir = root / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    final = root / stages[-1]
    result: dict = {"target": str(final), "stage": stages[-1], "stages": {}}
    for stage in stages:
        if (root / stage / "eval.json").is_file():
            result["stages"][stage] = json.loads((root / stage / "eval.json").read_text(encoding="utf-8"))
    target = resolve_target(final)
    result.update({"beta": target.beta(), "reference": default_reference(target) or "itself"})
    if PartialState().num_processes == 1:
        data = recipe.data.dpo if stages[-1] == "dpo" else recipe.data.sft
        model, tokenizer = load_target(target)
        kind = "preference" if stages[-1] == "dpo" else "sft"
        rows = _rows(tokenizer, _capped(data.eval, 3), kind) if data is not None else []
        prompts = [r["prompt"] if kind == "preference" else r["messages"][:-1] for r in rows]
        result.update(_samples(model, tokenizer, [], prompts, EvalRequest(samples=3)))
        del model
        gc.collect()
    else:
        log.info("sample replies skipped under a multi-process launch; run `align eval %s` afterwards", root)
    _copy_figures(target, out_dir)
    result["seconds"] = round(time.perf_counter() - start, 1)
    write_report(result, out_dir)
    return out_dir / "eval.md"
