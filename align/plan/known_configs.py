"""The model shape the planner needs, read from config.json only (no weights), or from an embedded table."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from align.errors import RecipeError

# Values from the real hub configs (config.json of each repository); no hub is reachable at plan time.
_MIXTRAL_8X7B = {
    "model_type": "mixtral",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 32000,
    "num_local_experts": 8,
    "num_experts_per_tok": 2,
    "tie_word_embeddings": False,
    "max_position_embeddings": 32768,
}
_MIXTRAL_8X22B = {
    **_MIXTRAL_8X7B,
    "hidden_size": 6144,
    "intermediate_size": 16384,
    "num_hidden_layers": 56,
    "num_attention_heads": 48,
    "num_key_value_heads": 8,
    "vocab_size": 32768,
    "max_position_embeddings": 65536,
}
KNOWN_CONFIGS: dict[str, dict] = {
    "mistralai/Mixtral-8x7B-v0.1": _MIXTRAL_8X7B,
    "mistralai/Mixtral-8x7B-Instruct-v0.1": _MIXTRAL_8X7B,
    "mistralai/Mixtral-8x22B-v0.1": _MIXTRAL_8X22B,
    "mistralai/Mixtral-8x22B-Instruct-v0.1": _MIXTRAL_8X22B,
}
_REQUIRED = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "vocab_size",
    "num_local_experts",
    "num_experts_per_tok",
)


@dataclass(frozen=True)
class ModelShape:
    """What the memory arithmetic needs from a Mixtral config."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    experts: int
    top_k: int
    tie_embeddings: bool = False
    name: str = "mixtral"


def shape_from_config(config: dict, name: str = "mixtral") -> ModelShape:
    """A ModelShape from a config.json mapping; RecipeError if it is not a usable Mixtral config."""
    if config.get("model_type") != "mixtral":
        raise RecipeError(
            f"{name}: model_type {config.get('model_type')!r} is not 'mixtral'; align plan sizes Mixtral models only"
        )
    missing = [key for key in _REQUIRED if config.get(key) is None]
    if missing:
        raise RecipeError(f"{name}: config.json lacks {', '.join(missing)}")
    heads = int(config["num_attention_heads"])
    return ModelShape(
        hidden=int(config["hidden_size"]),
        intermediate=int(config["intermediate_size"]),
        layers=int(config["num_hidden_layers"]),
        heads=heads,
        kv_heads=int(config.get("num_key_value_heads") or heads),
        head_dim=int(config.get("head_dim") or config["hidden_size"] // heads),
        vocab=int(config["vocab_size"]),
        experts=int(config["num_local_experts"]),
        top_k=int(config["num_experts_per_tok"]),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        name=name,
    )


def _tiny_config() -> dict:
    """The embedded tiny Mixtral's config (align/tiny.py), for a recipe that builds it on first use."""
    from align.tiny import TINY_SHAPE  # imports transformers: only when the tiny model is not built yet

    return {"model_type": "mixtral", "vocab_size": 32000, "tie_word_embeddings": False, **TINY_SHAPE}


def load_model_shape(name_or_path: str, create_tiny_if_missing: bool = False) -> ModelShape:
    """The shape of a local checkpoint (its config.json), a known hub id, or the tiny model to be built."""
    path = Path(name_or_path)
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise RecipeError(f"{name_or_path}: directory has no config.json")
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise RecipeError(f"{config_file}: cannot read the model config: {err}") from None
        return shape_from_config(config, name_or_path)
    if name_or_path in KNOWN_CONFIGS:
        return shape_from_config(KNOWN_CONFIGS[name_or_path], name_or_path)
    if create_tiny_if_missing and not path.exists():
        return shape_from_config(_tiny_config(), f"{name_or_path} (tiny, built on first run)")
    raise RecipeError(
        f"model {name_or_path!r}: not a local directory with config.json and not a hub id the planner knows "
        f"({', '.join(sorted(KNOWN_CONFIGS))}); no hub is reachable at plan time: download its config.json "
        "into a directory and point model.name_or_path there"
    )
