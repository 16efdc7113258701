"""Write a model + tokenizer directory atomically: a temp dir next to it, then one rename."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path


def write_model_dir(model, tokenizer, out: str | Path) -> Path:
    """save_pretrained (safetensors) + tokenizer into `out`; a crash never leaves a half-written `out`."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
