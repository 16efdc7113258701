"""Which TRL config fields a recipe's `sft:`/`dpo:` sections may set, and their type checks.

Any field of TRL's SFTConfig/DPOConfig (TrainingArguments included) passes through, validated
against its annotation. Keys TRL removed get an error naming what replaced them.
"""

from __future__ import annotations

import dataclasses
import typing
from enum import Enum
from functools import cache
from typing import Any

from pydantic import TypeAdapter, ValidationError

# Removed or renamed upstream; recipes written for older TRL still carry them.
REMOVED: dict[str, str] = {
    "max_prompt_length": "TRL 1.x removed it: DPO truncates the whole sequence; set dpo.max_length "
    "(and dpo.truncation_mode: keep_end to keep completions)",
    "max_completion_length": "TRL 1.x removed it: set dpo.max_length (total prompt + completion length)",
    "rpo_alpha": "TRL 1.x removed it: use loss_type: [sigmoid, sft] with loss_weights: [1.0, ALPHA]",
    "reference_free": "TRL 1.x removed it: align's reference is the frozen SFT policy (or the base model "
    "when there is no SFT adapter)",
    "ref_adapter_name": "TRL 1.x removed it: align sets the reference to the frozen SFT adapter itself",
    "model_adapter_name": "TRL 1.x removed it: align trains the adapter it loaded from the SFT stage",
    "max_seq_length": "TRL renamed it: use max_length",
    "evaluation_strategy": "transformers renamed it: use eval_strategy",
    "warmup_ratio": "transformers 5 removed it: warmup_steps below 1 is a fraction of the training steps",
}

# Set elsewhere in the recipe, so they have one home.
OWNED_BY_ALIGN: dict[str, str] = {
    "output_dir": "use the top-level output_dir (each stage writes OUTPUT_DIR/<stage>/)",
    "seed": "use the top-level seed",
    "data_seed": "use the top-level seed",
    "model_init_kwargs": "use the model: section",
    "ref_model_init_kwargs": "use the model: section",
    "push_to_hub": "pushing is done by `align push` / the hub: section",
    "hub_token": "tokens never go in recipes: use HF_TOKEN or `hf auth login`",
    "resume_from_checkpoint": "use `align run --resume`",
}


@cache
def trl_config_class(stage: str) -> type:
    """TRL's config dataclass for a stage."""
    from trl import DPOConfig, SFTConfig  # slow import: only when a recipe is validated

    return {"sft": SFTConfig, "dpo": DPOConfig}[stage]


@cache
def trl_field_types(stage: str) -> dict[str, Any]:
    """Field name -> type annotation of the stage's TRL config (init fields only)."""
    cls = trl_config_class(stage)
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")}


@cache
def _adapter(annotation: Any) -> TypeAdapter:
    return TypeAdapter(annotation)


def check_trl_value(stage: str, key: str, value: Any) -> Any:
    """Validate one value against the TRL field's annotation; raise ValueError with the expected type."""
    annotation = trl_field_types(stage)[key]
    try:
        checked = _adapter(annotation).validate_python(value)
    except ValidationError as err:
        if value is False and _accepts_no(annotation):  # YAML 1.1 reads `save_strategy: no` as false
            return check_trl_value(stage, key, "no")
        expected = getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
        reason = err.errors()[0]["msg"]
        raise ValueError(f"expected {expected}, got {value!r} ({reason})") from None
    return _plain(checked)


def _accepts_no(annotation: Any) -> bool:
    """Whether a field takes the string 'no' (save/eval/logging strategies)."""
    try:
        _adapter(annotation).validate_python("no")
    except ValidationError:
        return False
    return True


def _plain(value: Any) -> Any:
    """Enums (e.g. SchedulerType) back to their string value, so the recipe stays plain YAML data."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
