"""Recipe schema, strict loading, dotted overrides, redaction."""

from align.config.loader import apply_overrides, load_recipe, read_yaml, recipe_from_dict
from align.config.redact import recipe_to_yaml, redact
from align.config.schema import STAGES, Recipe, Stage

__all__ = [
    "STAGES",
    "Recipe",
    "Stage",
    "apply_overrides",
    "load_recipe",
    "read_yaml",
    "recipe_from_dict",
    "recipe_to_yaml",
    "redact",
]
