"""Atomic output directories: write into a hidden temp sibling, then rename into place.

A crash leaves only the hidden `.NAME.tmp-*` directory, never a half-written NAME that looks complete.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from align.errors import AlignError


@contextmanager
def atomic_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temp dir beside `out`; on success it replaces `out`, on error it is removed."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise AlignError(f"{out} already exists; pass --force to replace it (or choose another --out)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(src: Path, dst: Path) -> None:
    """Move `src` to `dst`; an existing `dst` is first renamed aside, so `dst` is never half-written."""
    if not dst.exists():
        src.rename(dst)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
    old.rmdir()
    dst.rename(old)
    src.rename(dst)
    shutil.rmtree(old, ignore_errors=True)
