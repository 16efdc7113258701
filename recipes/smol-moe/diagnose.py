"""Why DPO changed greedy task accuracy (docs/results.md): on the held-out tasks, per model,

- the mean log-prob of a gold answer token and P(end-of-turn) right after the full gold answer;
- on the prompts the SFT model got wrong: how often the whole gold reply is more likely than the SFT
  model's greedy (wrong) reply.

    python recipes/smol-moe/diagnose.py runs/smol-moe/eval/sft-replies/eval.json runs/smol-moe/sft runs/smol-moe/dpo

The first argument is an `align eval --tasks` result of the SFT model (its `task_replies`).
"""

from __future__ import annotations

import json
import sys

import torch

from align.evaluation.make_prefs import read_jsonl
from align.evaluation.metrics import preference_logps
from align.evaluation.target import load_target, resolve_target

TASKS = "runs/smol-moe/data/tasks_eval.jsonl"


@torch.no_grad()
def gold_token_stats(model, tokenizer, tasks: list[dict]) -> tuple[float, float]:
    """(mean log-prob of gold answer tokens, mean P(<|im_end|>) right after the gold answer)."""
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    content, stop = [], []
    for task in tasks:
        messages = [{"role": "user", "content": task["prompt"]}]
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
        reply = [{"role": "assistant", "content": task["answer"]}]
        full = tokenizer.apply_chat_template(messages + reply, return_dict=True)["input_ids"]
        logps = model(torch.tensor([full])).logits[0].log_softmax(-1)
        tokens = [logps[i - 1, full[i]].item() for i in range(len(prompt), len(full))]
        k = full[len(prompt) :].index(end)
        content += tokens[:k]
        stop.append(torch.tensor(tokens[k]).exp().item())
    return sum(content) / len(content), sum(stop) / len(stop)


def main(sft_eval: str, models: list[str]) -> None:
    tasks = read_jsonl(TASKS)
    replies = {r["id"]: r for r in json.loads(open(sft_eval).read())["task_replies"]}
    pairs = [
        {
            "prompt": [{"role": "user", "content": t["prompt"]}],
            "chosen": [{"role": "assistant", "content": t["answer"]}],
            "rejected": [{"role": "assistant", "content": replies[t["id"]]["reply"] or "?"}],
        }
        for t in tasks
    ]
    wrong = torch.tensor([i for i, t in enumerate(tasks) if not replies[t["id"]]["correct"]])
    for name in models:
        model, tokenizer = load_target(resolve_target(name))
        token_logp, p_end = gold_token_stats(model, tokenizer, tasks)
        gold, greedy = preference_logps(model, tokenizer, pairs)
        above = int((gold - greedy)[wrong].gt(0).sum())
        print(
            f"{name}: gold answer token log-prob {token_logp:.3f}, P(<|im_end|> after gold) {p_end:.3f}, "
            f"gold reply above SFT's greedy reply on {above} of {len(wrong)} prompts SFT got wrong",
            flush=True,
        )
        del model


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
