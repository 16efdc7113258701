"""How many GPUs and how the stage is sharded: from an accelerate config (and its DeepSpeed json) and --gpus."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from align.errors import RecipeError
from align.plan.estimate import Parallel


def read_accelerate_config(path: str) -> dict[str, Any]:
    """The accelerate YAML (or JSON) config as a mapping; RecipeError if it cannot be read."""
    file = Path(path)
    if not file.is_file():
        raise RecipeError(f"accelerate config not found: {path}")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise RecipeError(f"{path}: not a readable accelerate config: {err}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: an accelerate config is a mapping, got {type(data).__name__}")
    return data


def _deepspeed_json(ds: dict[str, Any], config_path: str) -> dict[str, Any]:
    """The DeepSpeed json named by deepspeed_config_file (as given, or next to the accelerate config)."""
    name = ds.get("deepspeed_config_file")
    if not name:
        return {}
    for candidate in (Path(name), Path(config_path).parent / name):
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                raise RecipeError(f"{candidate}: not a readable DeepSpeed config: {err}") from None
            if not isinstance(data, dict):
                raise RecipeError(f"{candidate}: a DeepSpeed config is a JSON object")
            return data
    raise RecipeError(f"{config_path}: deepspeed_config_file {name!r} not found")


def _zero_settings(config: dict[str, Any], config_path: str) -> tuple[int, bool, bool, bool]:
    """(zero stage, offload optimizer, offload params, bf16) of a DEEPSPEED accelerate config."""
    ds = config.get("deepspeed_config") or {}
    file = _deepspeed_json(ds, config_path)
    zero = file.get("zero_optimization") or {}
    stage = int(zero.get("stage", ds.get("zero_stage", 0)) or 0)

    def offloaded(json_key: str, yaml_key: str) -> bool:
        device = (zero.get(json_key) or {}).get("device") if zero else None
        return str(device or ds.get(yaml_key) or "none").lower() in ("cpu", "nvme")

    bf16_json = (file.get("bf16") or {}).get("enabled")
    bf16 = bf16_json is True or (bf16_json in (None, "auto") and str(config.get("mixed_precision")) == "bf16")
    return (
        stage,
        offloaded("offload_optimizer", "offload_optimizer_device"),
        offloaded("offload_param", "offload_param_device"),
        bf16,
    )


def parallel_from(accelerate_config: str | None, gpus: int | None) -> Parallel:
    """The Parallel layout: --gpus wins over the config's num_processes (the total over all machines)."""
    if gpus is not None and gpus < 1:
        raise RecipeError(f"--gpus {gpus}: must be at least 1")
    if accelerate_config is None:
        n = gpus or 1
        if n == 1:
            return Parallel(source="1 GPU")
        return Parallel("ddp", n, n, source=f"{n} GPUs, plain DDP (no accelerate config)")
    config = read_accelerate_config(accelerate_config)
    machines = max(int(config.get("num_machines") or 1), 1)
    n = gpus or int(config.get("num_processes") or 1) or 1
    per_node = max(n // machines, 1)
    kind = str(config.get("distributed_type", "NO")).upper()
    name = Path(accelerate_config).name
    if kind == "DEEPSPEED":
        stage, off_opt, off_param, bf16 = _zero_settings(config, accelerate_config)
        label = f"{n} GPUs, DeepSpeed ZeRO-{stage}" + (" + optimizer offload" if off_opt else "")
        label += (" + param offload" if off_param else "") + f" ({name})"
        return Parallel("zero", n, per_node, stage, off_opt, off_param and stage >= 3, bf16, label)
    if kind == "FSDP":  # FULL_SHARD shards like ZeRO-3
        return Parallel("zero", n, per_node, 3, False, False, False, f"{n} GPUs, FSDP planned as ZeRO-3 ({name})")
    if n == 1:
        return Parallel(source=f"1 GPU ({name})")
    return Parallel("ddp", n, per_node, source=f"{n} GPUs, DDP, full replica per GPU ({name})")
