"""Secrets never leave the process: redaction for saved recipes, logs and model cards."""

from __future__ import annotations

from typing import Any

import yaml

from align.config.schema import Recipe
from align.security import NOT_SECRET, REDACTED, SECRET_KEY, scrub  # noqa: F401  (one definition of a secret key)


def redact(value: Any, key: str = "") -> Any:
    """A copy of `value` with string values under secret-looking keys replaced by '***', and any secret
    (an HF_TOKEN-like environment value, an hf_... token) hidden wherever else it was written."""
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    if isinstance(value, str) and SECRET_KEY.search(key) and not NOT_SECRET.search(key):
        return REDACTED
    return scrub(value) if isinstance(value, str) else value


def recipe_dict(recipe: Recipe) -> dict[str, Any]:
    """The resolved recipe as plain data, TRL keys folded back into their stage section, redacted."""
    data = recipe.model_dump(mode="json")
    for stage in ("sft", "dpo"):
        section = data[stage]
        section.update(section.pop("trainer"))
    return redact(data)


def recipe_to_yaml(recipe: Recipe) -> str:
    """The resolved, redacted recipe as YAML, loadable again by `load_recipe`."""
    return yaml.safe_dump(recipe_dict(recipe), sort_keys=False, allow_unicode=True)
