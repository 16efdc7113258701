"""eval.md: the figures of eval.json as a short markdown report (tables, figures, sample replies)."""

from __future__ import annotations

PREFERENCE_ROWS = (
    ("reward_accuracy", "implicit-reward accuracy (chosen ranked above rejected)"),
    ("reward_margin", "mean implicit-reward margin, beta x (log-ratio chosen - log-ratio rejected)"),
    ("logp_accuracy", "policy log-prob prefers chosen"),
    ("logps_chosen", "mean summed log-prob, chosen"),
    ("logps_rejected", "mean summed log-prob, rejected"),
    ("dpo_loss", "DPO loss (sigmoid)"),
)
FIGURE_CAPTIONS = {
    "long_context.png": "passkey retrieval and perplexity vs context length",
    "routing.png": "routing profile of the training data",
}


def _num(x) -> str:
    return f"{x:.4f}" if isinstance(x, float) else str(x)


STAGE_ROWS = (
    ("eval_loss", "held-out loss"),
    ("perplexity", "held-out perplexity"),
    ("reward_accuracy", "implicit-reward accuracy"),
    ("reward_margin", "implicit-reward margin"),
    ("logp_accuracy", "policy prefers chosen"),
    ("logps_chosen", "log-prob chosen"),
    ("logps_rejected", "log-prob rejected"),
)


def _stages(result: dict) -> list[str]:
    """Each stage's held-out figures before -> after training (the stage's own eval.json)."""
    lines = []
    for stage, ev in result.get("stages", {}).items():
        rows = [(label, ev[f"{k}_before"], ev[f"{k}_after"]) for k, label in STAGE_ROWS if f"{k}_after" in ev]
        lines += [f"## {stage}: held-out, before -> after ({ev.get('steps')} steps)", ""]
        lines += ["| metric | before | after |", "|---|---|---|"]
        lines += [f"| {label} | {_num(a)} | {_num(b)} |" for label, a, b in rows]
        lines.append("")
    return lines


def _preference(result: dict) -> list[str]:
    pref = result.get("preference")
    if not pref:
        return []
    lines = [
        f"## Held-out preferences ({pref['pairs']} pairs, beta {result['beta']}, reference: {result['reference']})",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [f"| {label} | {_num(pref[key])} |" for key, label in PREFERENCE_ROWS]
    return [*lines, ""]


def _sft(result: dict) -> list[str]:
    sft = result.get("sft")
    if not sft:
        return []
    return [
        f"## Held-out SFT loss ({sft['sft_rows']} conversations, {sft['sft_tokens']} assistant tokens)",
        "",
        f"loss {sft['sft_loss']:.4f}, perplexity {sft['perplexity']:.3f}",
        "",
    ]


def _tasks(result: dict) -> list[str]:
    tasks = result.get("tasks")
    if not tasks:
        return []
    lines = [f"## Task accuracy, judged by code ({tasks['task_count']} held-out prompts, greedy)", ""]
    lines += ["| task | accuracy |", "|---|---|", f"| all | {tasks['task_accuracy']:.3f} |"]
    lines += [f"| {k} | {v:.3f} |" for k, v in tasks["task_accuracy_by_kind"].items()]
    return [*lines, ""]


def _long_context(result: dict) -> list[str]:
    lc = result.get("long_context")
    if not lc:
        return []
    lengths = sorted({c["length"] for c in lc["passkey"]})
    positions = sorted({c["position"] for c in lc["passkey"]})
    acc = {(c["length"], c["position"]): c["accuracy"] for c in lc["passkey"]}
    lines = ["## Long context", "", "Passkey retrieval accuracy (rows: key position, columns: context tokens):", ""]
    lines += ["| position | " + " | ".join(map(str, lengths)) + " |", "|---" * (len(lengths) + 1) + "|"]
    lines += [f"| {p:.0%} | " + " | ".join(f"{acc[(n, p)]:.2f}" for n in lengths) + " |" for p in positions]
    lines += ["", "Perplexity of the same last tokens given more context:", "", "| context | perplexity |", "|---|---|"]
    lines += [f"| {r['length']} | {r['perplexity']:.3f} |" for r in lc["perplexity"]]
    return [*lines, ""]


def _samples(result: dict) -> list[str]:
    samples = result.get("samples")
    if not samples:
        return []
    lines = ["## Sample replies (greedy, chat template)", ""]
    for s in samples:
        mark = "" if "correct" not in s else (" (correct)" if s["correct"] else " (wrong)")
        prompt = s["prompt"].replace("\n", " ")
        reply = s["reply"].replace("\n", " ") or "(empty)"
        lines += [f"- **prompt**: {prompt}", f"  **reply**{mark}: {reply}"]
    return [*lines, ""]


def render(result: dict, figures: list[str]) -> str:
    """The whole report."""
    lines = [f"# Evaluation of `{result['target']}`", ""]
    if "seconds" in result:
        lines += [f"Stage: {result['stage'] or '-'}. Measured in {result['seconds']} s.", ""]
    for part in (_stages, _preference, _sft, _tasks, _long_context, _samples):
        lines += part(result)
    if figures:
        lines += ["## Figures", ""]
        for name in figures:
            stage = name.removeprefix("curves_").removesuffix(".png")
            caption = FIGURE_CAPTIONS.get(name) or (f"training curves, {stage}" if name.startswith("curves_") else name)
            lines += [f"![{caption}]({name})", ""]
    return "\n".join(lines)


def summary_lines(result: dict) -> list[str]:
    """A few lines for the terminal."""
    lines = [f"eval of {result['target']} (reference: {result['reference']}, beta {result['beta']})"]
    if "preference" in result:
        p = result["preference"]
        lines.append(
            f"  preferences: reward accuracy {p['reward_accuracy']:.3f}, margin {p['reward_margin']:.4f}, "
            f"policy prefers chosen {p['logp_accuracy']:.3f} ({p['pairs']} pairs)"
        )
    if "sft" in result:
        lines.append(
            f"  SFT held-out loss {result['sft']['sft_loss']:.4f}, perplexity {result['sft']['perplexity']:.3f}"
        )
    if "tasks" in result:
        lines.append(
            f"  task accuracy {result['tasks']['task_accuracy']:.3f} ({result['tasks']['task_count']} prompts)"
        )
    if "long_context" in result:
        pk = result["long_context"]["passkey"]
        lines.append(f"  passkey retrieval {sum(c['accuracy'] for c in pk) / len(pk):.3f} over {len(pk)} cells")
    return lines
