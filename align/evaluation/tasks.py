"""Verifiable tasks: templated prompts whose answers code can check (arithmetic, unit conversion,
sorting, format following). The same judge scores held-out accuracy and labels preference pairs.

A task row: {"id", "task", "prompt", "answer" (the gold reply), "expected" (what the judge compares)}.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable

NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")
WORDS = (
    "apple", "river", "garden", "planet", "window", "silver", "rocket", "forest", "candle", "guitar", "orange",
    "bridge", "castle", "dragon", "falcon", "island", "jacket", "ladder", "marble", "needle", "pepper", "rabbit",
)  # fmt: skip
UNITS = (  # (from, to, factor)
    ("kilometers", "meters", 1000),
    ("meters", "centimeters", 100),
    ("kilograms", "grams", 1000),
    ("hours", "minutes", 60),
    ("minutes", "seconds", 60),
    ("liters", "milliliters", 1000),
)
KINDS = ("arithmetic", "units", "sorting", "format")


def _numbers(text: str) -> list[float]:
    return [float(m.replace(",", "")) for m in NUMBER.findall(text)]


def _arithmetic(rng: random.Random) -> tuple[str, str, object]:
    op = rng.choice("+-*")
    a, b = (rng.randint(10, 99), rng.randint(2, 9)) if op == "*" else (rng.randint(10, 99), rng.randint(10, 99))
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    sign = {"+": "+", "-": "-", "*": "×"}[op]
    return f"What is {a} {sign} {b}? Reply with just the number.", str(value), value


def _units(rng: random.Random) -> tuple[str, str, object]:
    src, dst, factor = rng.choice(UNITS)
    amount = rng.randint(2, 25)
    value = amount * factor
    return f"Convert {amount} {src} to {dst}. Reply with just the number.", str(value), value


def _sorting(rng: random.Random) -> tuple[str, str, object]:
    values = rng.sample(range(1, 100), rng.randint(4, 5))
    shown = ", ".join(map(str, values))
    ordered = sorted(values)
    prompt = f"Sort these numbers from smallest to largest: {shown}. Reply with the numbers separated by commas."
    return prompt, ", ".join(map(str, ordered)), ordered


def _format(rng: random.Random) -> tuple[str, str, object]:
    kind, word = rng.randrange(3), rng.choice(WORDS)
    if kind == 0:
        return f"Write the word '{word}' in capital letters and nothing else.", word.upper(), word.upper()
    if kind == 1:
        gold = "-".join([word] * 3)
        return f"Write the word '{word}' three times, joined by dashes, and nothing else.", gold, gold
    a, b = rng.randint(1, 20), rng.randint(1, 20)
    gold = json.dumps({"answer": a + b})
    prompt = f'Reply only with a JSON object {{"answer": N}} where N is the sum of {a} and {b}.'
    return prompt, gold, {"answer": a + b}


MAKERS: dict[str, Callable[[random.Random], tuple[str, str, object]]] = {
    "arithmetic": _arithmetic,
    "units": _units,
    "sorting": _sorting,
    "format": _format,
}


def make_tasks(count: int, seed: int, exclude: set[str] | None = None, prefix: str = "t") -> list[dict]:
    """`count` distinct task rows, kinds in rotation, none whose prompt is in `exclude` (held-out prompts)."""
    rng = random.Random(seed)
    seen = set(exclude or ())
    rows: list[dict] = []
    attempts = 0
    while len(rows) < count:
        attempts += 1
        if attempts > 100 * count + 1000:
            raise ValueError(f"cannot make {count} distinct tasks (the templates have fewer)")
        kind = KINDS[len(rows) % len(KINDS)]
        prompt, answer, expected = MAKERS[kind](rng)
        if prompt in seen:
            continue
        seen.add(prompt)
        rows.append(
            {"id": f"{prefix}{len(rows)}", "task": kind, "prompt": prompt, "answer": answer, "expected": expected}
        )
    return rows


def judge(task: dict, response: str) -> bool:
    """Whether `response` solves `task`: numbers compare by value (last number in the reply), sorting by
    the list of numbers, format tasks exactly (surrounding whitespace and a final period forgiven)."""
    text = response.strip()
    kind, expected = task["task"], task["expected"]
    if kind in ("arithmetic", "units"):
        numbers = _numbers(text)
        return bool(numbers) and abs(numbers[-1] - float(expected)) < 1e-6
    if kind == "sorting":
        return _numbers(text) == [float(x) for x in expected]
    if kind == "format" and isinstance(expected, dict):
        try:
            return json.loads(text.strip("`").removeprefix("json").strip()) == expected
        except json.JSONDecodeError:
            return False
    if kind == "format":
        return text.rstrip(".") == expected
    raise ValueError(f"unknown task kind {kind!r}")


def accuracy(tasks: list[dict], responses: list[str]) -> dict:
    """Overall and per-kind share of responses the judge accepts."""
    hits = [judge(t, r) for t, r in zip(tasks, responses, strict=True)]
    by_kind: dict[str, list[bool]] = {}
    for task, hit in zip(tasks, hits, strict=True):
        by_kind.setdefault(task["task"], []).append(hit)
    return {
        "task_accuracy": sum(hits) / max(len(hits), 1),
        "task_count": len(hits),
        "task_accuracy_by_kind": {k: sum(v) / len(v) for k, v in sorted(by_kind.items())},
    }


def to_messages(task: dict) -> list[dict]:
    """The task's user turn (what the model is asked)."""
    return [{"role": "user", "content": task["prompt"]}]
