"""The recipe reference in the README, generated from the schema (a test keeps them equal)."""

from __future__ import annotations

from pydantic import BaseModel

from align.config.schema import (
    DataSection,
    ExportSection,
    HubSection,
    LoraSection,
    ModelSection,
    QuantizationSection,
    Recipe,
    StageSection,
)
from align.data.spec import DataSource, StageData

SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("(top level)", Recipe),
    ("model", ModelSection),
    ("lora", LoraSection),
    ("quantization", QuantizationSection),
    ("data", DataSection),
    ("data.sft / data.dpo", StageData),
    ("data.*.train[] / data.*.eval[]", DataSource),
    ("sft / dpo (align's keys)", StageSection),
    ("export", ExportSection),
    ("hub", HubSection),
]
NESTED = {"model", "lora", "quantization", "data", "sft", "dpo", "trainer", "export", "hub"}


def _type_name(annotation) -> str:
    text = getattr(annotation, "__name__", None) if not getattr(annotation, "__args__", None) else None
    return (text or str(annotation)).replace("typing.", "").replace("align.data.spec.", "").replace("|", "or")


def _default(field) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    return "" if isinstance(value, BaseModel) else f"`{value!r}`"


def markdown() -> str:
    """Markdown tables: one per section, a row per key (type, default, description)."""
    parts = []
    for title, model in SECTIONS:
        rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            if title == "(top level)" and name in NESTED or name == "trainer":
                continue
            desc = (field.description or "").replace("|", "\\|")
            rows.append(f"| `{name}` | {_type_name(field.annotation)} | {_default(field)} | {desc} |")
        parts.append(f"#### `{title}`\n\n" + "\n".join(rows))
    parts.append(
        "#### `sft` / `dpo` (TRL's keys)\n\nEvery other key of `sft:` and `dpo:` is a field of TRL's `SFTConfig` / "
        "`DPOConfig` (TrainingArguments included), checked against its type; keys TRL removed are errors that name "
        "their replacement. align's defaults: `report_to: none`, `logging_steps: 1`, `save_strategy: no`, "
        "`assistant_only_loss: true` (SFT), `precompute_ref_log_probs: true` (DPO; cached on disk in "
        "OUTPUT_DIR/cache/reference), and on CPU `use_cpu: true`, `bf16: false`."
    )
    return "\n\n".join(parts) + "\n"


def update_readme(path: str = "README.md") -> None:
    """Rewrite the README's generated recipe reference (`python -m align.config.reference`)."""
    from pathlib import Path

    readme = Path(path)
    text = readme.read_text()
    start, end = "<!-- recipe-reference:start -->\n", "<!-- recipe-reference:end -->"
    head, tail = text[: text.index(start) + len(start)], text[text.index(end) :]
    readme.write_text(head + markdown() + tail)


if __name__ == "__main__":
    update_readme()
