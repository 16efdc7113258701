"""`align make-prefs`: verifiable tasks -> SFT conversations (gold answers) and, with --model,
preference pairs from the model's own samples, chosen = judged correct, rejected = judged wrong.

Files written to OUT_DIR (all JSONL, one row per line):
  tasks_sft.jsonl / sft_train.jsonl   SFT prompts and their gold conversations
  tasks_dpo.jsonl                     DPO prompts (disjoint from the SFT and held-out prompts)
  tasks_eval.jsonl / sft_eval.jsonl   held-out prompts (task accuracy) and their gold conversations
  prefs_train.jsonl / prefs_eval.jsonl (--model) pairs on the DPO / held-out prompts; stats in prefs_stats.json
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from align.evaluation.tasks import judge, make_tasks, to_messages

log = logging.getLogger("align")


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSONL file (blank lines ignored)."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def _gold(task: dict) -> dict:
    return {"messages": [*to_messages(task), {"role": "assistant", "content": task["answer"]}], "task": task["task"]}


def write_tasks(out_dir: str | Path, train: int, held_out: int, seed: int = 0) -> dict[str, Path]:
    """Held-out, SFT and DPO prompts (pairwise disjoint) and the gold SFT conversations."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    eval_tasks = make_tasks(held_out, seed=seed, prefix="eval-")
    sft_tasks = make_tasks(train, seed=seed + 1, exclude={t["prompt"] for t in eval_tasks}, prefix="sft-")
    taken = {t["prompt"] for t in eval_tasks + sft_tasks}
    dpo_tasks = make_tasks(train, seed=seed + 2, exclude=taken, prefix="dpo-")
    files = {
        "tasks_eval": (eval_tasks, out / "tasks_eval.jsonl"),
        "tasks_sft": (sft_tasks, out / "tasks_sft.jsonl"),
        "tasks_dpo": (dpo_tasks, out / "tasks_dpo.jsonl"),
        "sft_train": ([_gold(t) for t in sft_tasks], out / "sft_train.jsonl"),
        "sft_eval": ([_gold(t) for t in eval_tasks], out / "sft_eval.jsonl"),
    }
    for rows, path in files.values():
        _write_jsonl(path, rows)
    return {name: path for name, (_, path) in files.items()}


def pair_from_samples(task: dict, samples: list[str]) -> tuple[dict | None, str]:
    """One preference pair from a prompt's samples, and why (or why not).

    chosen: the first correct sample, else the gold answer (the model never solved it); rejected: the
    first wrong sample. A prompt the model always solves gives no pair: there is nothing to prefer.
    """
    correct = [s for s in samples if judge(task, s)]
    wrong = [s for s in samples if not judge(task, s) and s.strip()]
    if not wrong:
        return None, "all_correct"
    chosen, source = (correct[0], "sampled") if correct else (task["answer"], "gold")
    row = {
        "prompt": to_messages(task),
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": wrong[0]}],
        "task": task["task"],
        "id": task["id"],
        "chosen_source": source,
    }
    return row, f"chosen_{source}"


def sample_prefs(tasks: list[dict], model, tokenizer, samples: int, temperature: float, seed: int) -> tuple[list, dict]:
    """Pairs for `tasks` from `samples` sampled replies each; stats say how often the model was right."""
    from align.evaluation.generate import generate

    replies = generate(
        model, tokenizer, [to_messages(t) for t in tasks], max_new_tokens=32, batch_size=8,
        samples=samples, temperature=temperature, seed=seed,
    )  # fmt: skip
    pairs, reasons = [], {"all_correct": 0, "chosen_sampled": 0, "chosen_gold": 0}
    correct = 0
    for task, replies_of_task in zip(tasks, replies, strict=True):
        correct += sum(judge(task, r) for r in replies_of_task)
        pair, why = pair_from_samples(task, replies_of_task)
        reasons[why] += 1
        if pair is not None:
            pairs.append(pair)
    stats = {"prompts": len(tasks), "pairs": len(pairs), "sample_accuracy": correct / max(1, samples * len(tasks))}
    return pairs, {**stats, **reasons}


def make_prefs(
    out_dir: str | Path,
    train: int,
    held_out: int,
    seed: int = 0,
    model_path: str | None = None,
    base: str | None = None,
    samples: int = 4,
    temperature: float = 1.0,
) -> dict:
    """Write the task and SFT files; with `model_path` also sample, judge and write preference pairs."""
    files = write_tasks(out_dir, train, held_out, seed)
    result: dict = {"files": {k: str(v) for k, v in files.items()}}
    if model_path is None:
        return result
    from align.evaluation.target import load_target, resolve_target

    model, tokenizer = load_target(resolve_target(model_path, base))
    out = Path(out_dir)
    start = time.perf_counter()
    for split, name in (("train", "tasks_dpo"), ("eval", "tasks_eval")):
        pairs, stats = sample_prefs(read_jsonl(files[name]), model, tokenizer, samples, temperature, seed)
        _write_jsonl(out / f"prefs_{split}.jsonl", pairs)
        result[f"prefs_{split}"] = stats
        log.info("prefs_%s: %s", split, stats)
    result.update({"model": str(model_path), "samples": samples, "temperature": temperature})
    result["seconds"] = round(time.perf_counter() - start, 1)
    (out / "prefs_stats.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result
