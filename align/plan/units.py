"""Byte sizes: parse `80GiB` / `40GB` / `141GiB`, print GiB."""

from __future__ import annotations

import re

from align.errors import RecipeError

GIB = 1024**3
_UNITS = {
    "": GIB,
    "b": 1,
    "kb": 1e3,
    "mb": 1e6,
    "gb": 1e9,
    "tb": 1e12,
    "kib": 1024,
    "mib": 1024**2,
    "gib": GIB,
    "tib": 1024**4,
    "k": 1e3,
    "m": 1e6,
    "g": 1e9,
    "t": 1e12,
}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> float:
    """Bytes of a size like '80GiB', '40GB', '141 GiB' or '80' (GiB when no unit is given)."""
    match = _SIZE.match(str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise RecipeError(f"--gpu-mem {text!r}: expected a size such as 80GiB, 40GB or 141GiB")
    value = float(match.group(1)) * _UNITS[unit]
    if value <= 0:
        raise RecipeError(f"--gpu-mem {text!r}: the size must be positive")
    return value


def gib(n_bytes: float) -> float:
    """Bytes -> GiB."""
    return n_bytes / GIB


def fmt_gib(n_bytes: float, width: int = 8) -> str:
    """Bytes as a right-aligned GiB figure with 2 decimals."""
    return f"{gib(n_bytes):{width}.2f}"


def fmt_count(n: float) -> str:
    """A parameter count as 46.70 B / 27.3 M / 266.2 K."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.{2 if suffix == 'B' else 1}f} {suffix}"
    return str(int(n))
