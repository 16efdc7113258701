"""Model cards (README.md) for adapter dirs and merged exports: hub metadata, stages, data, metrics, recipe.

Only hub-valid metadata goes in the YAML header (the hub rejects a `base_model` that is not a model id),
the recipe is the redacted one (align.config.redact), and nothing here reads credentials.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from align.config import Recipe
from align.config.redact import recipe_dict

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
ROUTING_PNG = "routing.png"
# (eval.json key stem, label) per stage; each is shown as before -> after when both exist
METRICS = {
    "sft": [("eval_loss", "held-out loss"), ("perplexity", "held-out perplexity")],
    "dpo": [
        ("reward_accuracy", "held-out reward accuracy"),
        ("reward_margin", "held-out reward margin"),
        ("logp_accuracy", "policy prefers chosen (held-out)"),
        ("dpo_loss", "held-out DPO loss"),
    ],
}


@dataclass
class CardInput:
    """What a card describes: an adapter or a merged model, its recipe, and each stage's eval.json."""

    kind: Literal["adapter", "merged"]
    recipe: Recipe
    stages: dict[str, dict]  # stage -> its eval.json (in run order)
    model_type: str | None = None
    has_routing_png: bool = False
    has_curves_png: bool = False  # curves.png beside the card: training curves (align/plots.py)
    notes: list[str] = field(default_factory=list)
    base_dir: Path | None = None  # where the base checkpoint lives locally (its README gives the license)


def is_hub_id(name: str) -> bool:
    """Whether `name` is a hub repo id (org/name) rather than a local path."""
    return bool(HUB_ID.match(name)) and not Path(name).exists()


def base_license(base_dir: Path | None, name: str, revision: str | None) -> dict:
    """license / license_name / license_link from the base model's own card, if one is available offline."""
    card = base_dir / "README.md" if base_dir is not None else None
    if (card is None or not card.is_file()) and is_hub_id(name):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "README.md", revision=revision)
        card = Path(cached) if isinstance(cached, str) else None
    if card is None or not card.is_file():
        return {}
    meta = front_matter(card.read_text(encoding="utf-8", errors="replace"))
    return {k: meta[k] for k in ("license", "license_name", "license_link") if k in meta}


def front_matter(text: str) -> dict:
    """The YAML metadata block at the top of a model card ({} when absent or unreadable)."""
    match = re.match(r"^---\s*\n(.*?)\n---\s*\n", text, re.DOTALL)
    if not match:
        return {}
    try:
        data = yaml.safe_load(match[1])
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def metadata(info: CardInput, license_info: dict) -> dict:
    """The hub YAML header."""
    recipe = info.recipe
    meta: dict = {}
    if is_hub_id(recipe.model.name_or_path):
        meta["base_model"] = recipe.model.name_or_path
    meta.update(license_info)
    datasets = sorted(
        {s.path for stage in info.stages for s in _sources(recipe, stage) if is_hub_id(s.path)},
    )
    if datasets:
        meta["datasets"] = datasets
    tags = ["align", *(t for t in (info.model_type,) if t), "moe" if info.model_type == "mixtral" else None]
    tags += ["lora"] if info.kind == "adapter" else ["merged-lora"]
    tags += [*info.stages, "trl"]
    meta["tags"] = [t for t in tags if t]
    meta["library_name"] = "peft" if info.kind == "adapter" else "transformers"
    meta["pipeline_tag"] = "text-generation"
    return meta


def _sources(recipe: Recipe, stage: str) -> list:
    data = getattr(recipe.data, stage)
    return [] if data is None else [*data.train, *data.eval]


def _stage_rows(recipe: Recipe, stage: str, ev: dict) -> list[str]:
    data = recipe.stage_data(stage)
    train = ", ".join(f"`{s.path}`" for s in data.train)
    held = ", ".join(f"`{s.path}`" for s in data.eval) or f"{data.eval_fraction:.0%} of the training mix"
    eval_rows = ev.get("eval_rows", ev.get("pairs_after", "-"))
    return [f"| {stage} | {train} | {ev.get('train_rows', '-')} | {held} | {eval_rows} | {ev.get('steps', '-')} |"]


def _metric_rows(stage: str, ev: dict) -> list[str]:
    rows = []
    for stem, label in METRICS[stage]:
        before, after = ev.get(f"{stem}_before"), ev.get(f"{stem}_after")
        if after is not None:
            start = f"{before:.4g}" if before is not None else "-"
            rows.append(f"| {stage} | {label} | {start} | {after:.4g} |")
    if ev.get("train_loss") is not None:
        rows.append(f"| {stage} | training loss (mean) | - | {ev['train_loss']:.4g} |")
    return rows


def _how_to_load(info: CardInput, here: str) -> str:
    base = info.recipe.model.name_or_path
    chat = (
        'messages = [{"role": "user", "content": "Explain mixture-of-experts in one sentence."}]\n'
        'inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", '
        "return_dict=True)\n"
        "out = model.generate(**inputs, max_new_tokens=128)\n"
        'print(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))\n'
    )
    if info.kind == "adapter":
        load = (
            "from peft import PeftModel\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f'model_id = "{here}"  # or the hub repo id it was pushed to\n'
            f'base = AutoModelForCausalLM.from_pretrained("{base}")\n'
            "model = PeftModel.from_pretrained(base, model_id)\n"
            "tokenizer = AutoTokenizer.from_pretrained(model_id)\n"
        )
    else:
        load = (
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f'model_id = "{here}"  # or the hub repo id it was pushed to\n'
            "model = AutoModelForCausalLM.from_pretrained(model_id)\n"
            "tokenizer = AutoTokenizer.from_pretrained(model_id)\n"
        )
    return f"```python\n{load}{chat}```\n\nor talk to it: `align chat {here}`.\n"


def render_card(info: CardInput, here: str) -> str:
    """The whole README.md text."""
    recipe = info.recipe
    license_info = base_license(info.base_dir, recipe.model.name_or_path, recipe.model.revision)
    meta = yaml.safe_dump(metadata(info, license_info), sort_keys=False, allow_unicode=True)
    what = "LoRA adapter for" if info.kind == "adapter" else "Merged checkpoint (LoRA folded into the weights) of"
    chain = " -> ".join(s.upper() for s in info.stages)
    lines = [f"---\n{meta}---\n", f"# {Path(here).name}\n"]
    lines.append(f"{what} `{recipe.model.name_or_path}`, trained with align ({chain}).\n")
    if not license_info:
        lines.append("License: the base model's card states none here; set it before publishing.\n")
    lines += [f"- {note}" for note in info.notes]
    lines.append("\n## Stages and data\n")
    lines.append("| stage | training data | train rows | held-out data | held-out rows | steps |")
    lines.append("|---|---|---|---|---|---|")
    for stage, ev in info.stages.items():
        lines += _stage_rows(recipe, stage, ev)
    lines.append("\n## Results\n\n| stage | metric | before | after |\n|---|---|---|---|")
    for stage, ev in info.stages.items():
        lines += _metric_rows(stage, ev)
    if info.has_routing_png:
        lines.append("\n## Routing profile\n")
        lines.append(f"![routing profile of the training data through the base model]({ROUTING_PNG})\n")
        lines.append("Share of routed tokens per layer and expert (the data the expert adapters were placed from).")
    if info.has_curves_png:
        lines.append("\n## Training curves\n\n![loss, router aux loss, rewards and learning rate](curves.png)\n")
    lines.append("\n## How to load\n")
    lines.append(_how_to_load(info, here))
    lines.append("## Training recipe\n\nThe resolved recipe (secrets redacted); `align run` accepts it again.\n")
    lines.append("```yaml\n" + yaml.safe_dump(recipe_dict(recipe), sort_keys=False, allow_unicode=True) + "```\n")
    return "\n".join(lines)


def write_card(out_dir: str | Path, info: CardInput, here: str | None = None) -> Path:
    """Write README.md into `out_dir` (a temp dir that is renamed into place afterwards)."""
    path = Path(out_dir) / "README.md"
    path.write_text(render_card(info, here or str(out_dir)), encoding="utf-8")
    return path


def write_stage_card(out_dir: Path, recipe: Recipe, stage: str, evaluation: dict, model_type: str | None) -> Path:
    """The card of a stage's adapter dir (called on its temp dir before the rename); copies the routing figure."""
    root = Path(recipe.output_dir)
    stages = {}
    if stage == "dpo" and evaluation.get("reference", "").startswith("sft") and (root / "sft" / "eval.json").is_file():
        stages["sft"] = json.loads((root / "sft" / "eval.json").read_text())  # DPO continued this adapter
    stages[stage] = evaluation
    routing = root / "routing" / ROUTING_PNG
    if routing.is_file():
        shutil.copyfile(routing, Path(out_dir) / ROUTING_PNG)
    info = CardInput("adapter", recipe, stages, model_type=model_type, has_routing_png=routing.is_file())
    info.has_curves_png = (Path(out_dir) / "curves.png").is_file()
    here = str(root / stage)
    if Path(recipe.model.name_or_path).is_dir():
        info.base_dir = Path(recipe.model.name_or_path)
    return write_card(out_dir, info, here=here)
