"""What `align eval` evaluates: a run dir, a stage/adapter dir, or a model dir, and its DPO reference.

Default reference: a run's DPO adapter is measured against the SFT adapter beside it (the reference its
DPO stage trained against); any other adapter against its base model (adapter disabled, as TRL does
for a fresh adapter); a plain model dir against itself (implicit reward 0, accuracy 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from align.config import Recipe, load_recipe
from align.config.schema import ModelSection, QuantizationSection
from align.errors import ModelError

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
STAGES = ("dpo", "sft")


@dataclass
class Target:
    """A resolved TARGET: the dir holding weights or an adapter, and what is known about it."""

    path: Path
    is_adapter: bool
    recipe: Recipe | None  # the recipe saved with an adapter (beta, base model, held-out data)
    base: str | None  # base model of an adapter
    run_root: Path | None  # the run's OUTPUT_DIR when the target is one of its stages

    @property
    def stage(self) -> str | None:
        return self.path.name if self.run_root is not None else None

    def beta(self, override: float | None = None) -> float:
        """DPO beta of the implicit reward: --beta, else the saved recipe's dpo.beta, else TRL's 0.1."""
        if override is not None:
            return override
        if self.recipe is not None:
            return float(self.recipe.dpo.trainer.get("beta", 0.1))
        return 0.1


def _is_adapter(path: Path) -> bool:
    return all((path / name).is_file() for name in ADAPTER_FILES)


def resolve_target(target: str | Path, base: str | None = None) -> Target:
    """A run's OUTPUT_DIR (its last finished stage), a stage or adapter dir, or a model dir."""
    path = Path(target)
    if not path.exists():
        raise ModelError(f"eval target not found: {target}")
    if not _is_adapter(path) and not (path / "config.json").is_file():
        finished = [path / s for s in STAGES if _is_adapter(path / s)]
        if not finished:
            raise ModelError(f"{target}: not a run dir (no finished sft/ or dpo/), adapter dir or model dir")
        path = finished[0]
    if not _is_adapter(path):
        return Target(path, False, None, None, None)
    recipe = load_recipe(path / "recipe.yaml") if (path / "recipe.yaml").is_file() else None
    name = base or (recipe.model.name_or_path if recipe else None)
    if name is None:
        raise ModelError(f"{path}: adapter without recipe.yaml; pass --base DIR")
    root = path.parent if path.name in STAGES else None
    return Target(path, True, recipe, name, root)


def default_reference(target: Target) -> str | None:
    """'base', a sibling SFT adapter dir, or None (the model is its own reference)."""
    if not target.is_adapter:
        return None
    sft = target.run_root / "sft" if target.run_root is not None else None
    if target.stage == "dpo" and sft is not None and _is_adapter(sft):
        return str(sft)
    return "base"


def _section(target: Target, name: str) -> ModelSection:
    if target.recipe is not None:
        return target.recipe.model.model_copy(update={"name_or_path": name, "adapter_path": None})
    return ModelSection(name_or_path=name, allow_dense=True, chat_template="auto")


def load_target(target: Target, adapter: bool = True):
    """(model in eval mode, tokenizer). adapter=False loads the adapter's base alone (the 'base' reference)."""
    from align.model import load_model, load_tokenizer
    from align.runtime import resolve_runtime

    runtime = resolve_runtime("auto")
    section = _section(target, target.base if target.is_adapter else str(target.path))
    section = section.model_copy(update={"allow_dense": True})
    tokenizer = load_tokenizer(section, path=str(target.path))
    model = load_model(section, QuantizationSection(), runtime)  # adapters are served on the 16-bit base
    if target.is_adapter and adapter:
        model = _with_adapter(model, target.path)
    model.config.output_router_logits = False  # evaluation needs logits only
    return model.to(runtime.device).eval(), tokenizer


def _with_adapter(model, path: Path):
    from peft import PeftModel

    from align.moe.adapters import is_routed_adapter, load_routed

    if is_routed_adapter(path):  # align's routed expert layer: same logits as stock PEFT, less work
        return load_routed(model, path, is_trainable=False)
    return PeftModel.from_pretrained(model, str(path), is_trainable=False)


def reference_target(spec: str, target: Target, base: str | None = None) -> tuple[Target, bool]:
    """(target to load, with its adapter?) for a --ref value: 'base', an adapter dir or a model dir."""
    if spec == "base":
        if not target.is_adapter:
            raise ModelError("--ref base needs an adapter target (a plain model has no base)")
        return target, False
    return resolve_target(spec, base or target.base), True
