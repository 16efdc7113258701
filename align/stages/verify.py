"""Verified, atomic stage outputs: an adapter dir counts only if it loads, and a failed save loses nothing.

`save_stage` (align/stages/common.py) writes OUTPUT/.<stage>.tmp, calls `verify_stage_dir` on it, then
`replace_dir` swaps it in: the previous OUTPUT/<stage> is renamed aside first and deleted only after the new
one is in place, so at every instant one complete output exists (`recover_previous` undoes a crash in
between). `save_failures` turns a failed write (disk full, read-only, quota) into one clear error that says
what is intact.
"""

from __future__ import annotations

import errno
import json
import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import yaml
from safetensors import SafetensorError, safe_open

from align.errors import OutputError

log = logging.getLogger("align")

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# errno values that mean "the disk/filesystem refused the write", not a bug in align
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EACCES, errno.EFBIG}


def adapter_problem(adapter_dir: Path) -> str | None:
    """Why `adapter_dir` is not a loadable LoRA adapter (None: it is).

    Reads the config and every tensor of the safetensors file (headers are checked against the file
    size by safetensors, so a truncated file fails), and requires finite LoRA A/B tensors.
    """
    config_path, weights = adapter_dir / ADAPTER_CONFIG, adapter_dir / ADAPTER_WEIGHTS
    if not config_path.is_file() or not weights.is_file():
        found = "adapter_model.bin (a pickle: not accepted)" if (adapter_dir / "adapter_model.bin").exists() else ""
        return f"missing {ADAPTER_CONFIG if not config_path.is_file() else ADAPTER_WEIGHTS}" + (
            f"; found {found}" if found else ""
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        return f"{ADAPTER_CONFIG} is not valid JSON ({err})"
    if not isinstance(config, dict) or config.get("peft_type") != "LORA" or not config.get("r"):
        return f"{ADAPTER_CONFIG} is not a LoRA config (peft_type LORA and r expected)"
    try:
        with safe_open(str(weights), framework="pt") as f:
            keys = list(f.keys())
            if not any("lora_" in k for k in keys):
                return f"{ADAPTER_WEIGHTS} holds no LoRA tensors ({len(keys)} tensors)"
            for key in keys:
                if not torch.isfinite(f.get_tensor(key)).all():
                    return f"{ADAPTER_WEIGHTS}: tensor {key} has NaN/Inf values"
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        return f"{ADAPTER_WEIGHTS} cannot be read ({str(err)[:200]})"
    return None


def stage_dir_problem(stage_dir: Path) -> str | None:
    """Why `stage_dir` is not a complete stage output (adapter + eval.json + recipe.yaml); None if it is."""
    if not stage_dir.is_dir():
        return "does not exist"
    problem = adapter_problem(stage_dir)
    if problem:
        return problem
    try:
        json.loads((stage_dir / "eval.json").read_text(encoding="utf-8"))
        yaml.safe_load((stage_dir / "recipe.yaml").read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as err:
        return f"eval.json / recipe.yaml unreadable ({str(err)[:200]})"
    return None


def verify_stage_dir(stage_dir: Path) -> None:
    """Raise OutputError unless `stage_dir` is a complete, loadable stage output."""
    problem = stage_dir_problem(stage_dir)
    if problem:
        raise OutputError(f"{stage_dir}: the saved output does not verify: {problem}")


def aside(final: Path) -> Path:
    """Where `replace_dir` moves the previous output while the new one is renamed in."""
    return final.with_name(f".{final.name}.old")


def replace_dir(tmp: Path, final: Path) -> None:
    """Move verified `tmp` to `final`; the previous `final` is removed only once the new one is in place."""
    old = aside(final)
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def recover_previous(final: Path) -> None:
    """After a crash between the two renames of `replace_dir`, put the previous output back."""
    old = aside(final)
    if old.exists() and not final.exists() and stage_dir_problem(old) is None:
        old.rename(final)
        log.info("restored the previous %s output that an interrupted save had moved aside", final.name)
    elif old.exists() and final.exists():
        shutil.rmtree(old, ignore_errors=True)


def is_disk_error(err: BaseException) -> bool:
    """A write refused by the filesystem (disk full, quota, read-only, I/O error), not a bug."""
    if isinstance(err, OSError):
        return err.errno in DISK_ERRNOS
    # torch.save reports a failed write as RuntimeError from its zip writer
    return isinstance(err, RuntimeError) and "PytorchStreamWriter" in str(err)


def reason(err: BaseException) -> str:
    if isinstance(err, OSError):
        where = f" ({err.filename})" if err.filename else ""
        return f"{err.strerror or err}{where}"
    return (str(err).splitlines() or [type(err).__name__])[0][:200]


@contextmanager
def save_failures(stage: str, tmp: Path, final: Path, checkpoints: Path) -> Iterator[None]:
    """A failed write while saving a stage's outputs: clean the temp dir, say what is intact, raise OutputError."""
    try:
        yield
    except OutputError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except (OSError, RuntimeError) as err:
        if not is_disk_error(err):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        recover_previous(final)
        previous = f"the previous {final} is intact" if final.exists() else f"no earlier {final} existed"
        raise OutputError(
            f"saving the {stage} outputs failed: {reason(err)}; nothing was replaced ({previous}); the trainer's "
            f"checkpoints in {checkpoints} are untouched: free space and rerun with --resume"
        ) from None
