"""Security checks shared by the CLI, the loaders and the hub code: secrets never printed, ids validated.

- `scrub(text)`: hides secret values (HF tokens, any *TOKEN*/*KEY*/*SECRET* environment variable, hub
  token patterns) in anything align prints: log lines (`SecretFilter` on align's log handler) and the
  one-line error of the CLI. Saved recipes are redacted by key in `align/config/redact.py`.
- `check_repo_id`: a hub repository id is `name` or `namespace/name` with the hub's characters only, so a
  typo or a path cannot be taken for a hub id (and nothing odd reaches a URL).
- `pickle_weights`: pickle (.bin) weight files in a model dir; align loads safetensors only unless the
  recipe sets `model.allow_pickle_weights: true` (unpickling runs arbitrary code).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

SECRET_KEY = re.compile(r"(token|secret|password|passwd|api[_-]?key|auth|credential)", re.IGNORECASE)
# Keys that look secret by name but hold vocabulary items or counts, not credentials.
NOT_SECRET = re.compile(r"^(pad|bos|eos|unk|sep|cls|mask)_token(_id)?$|^(max|min|num|total)_|tokens$", re.IGNORECASE)
REDACTED = "***"
# Hub tokens (hf_...), and generic bearer-style keys that show up in URLs or headers.
TOKEN_PATTERNS = (
    re.compile(r"\bhf_[A-Za-z0-9]{16,}\b"),
    re.compile(r"(?i)(authorization:\s*bearer\s+)[^\s'\"]+"),
    re.compile(r"(?i)((?:token|api[_-]?key|secret|password)=)[^\s&'\"]+"),
)
ENV_SECRET = re.compile(r"(TOKEN|KEY|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.IGNORECASE)
MIN_SECRET_LEN = 6  # shorter env values ("1", "true") are settings, and hiding them would garble text
REPO_PART = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def secret_values(environ: dict[str, str] | None = None) -> list[str]:
    """Values of environment variables whose names look secret (HF_TOKEN, *_API_KEY, ...), longest first."""
    env = os.environ if environ is None else environ
    values = {v for k, v in env.items() if ENV_SECRET.search(k) and len(v) >= MIN_SECRET_LEN}
    return sorted(values, key=len, reverse=True)


def scrub(text: str, environ: dict[str, str] | None = None, replacement: str = REDACTED) -> str:
    """`text` with secret values replaced by '***' (or `replacement`, e.g. a YAML-safe word)."""
    for value in secret_values(environ):
        text = text.replace(value, replacement)
    for pattern in TOKEN_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + replacement, text)
    return text


def is_secret_key(key: str) -> bool:
    """Whether a recipe/override key names a credential (the same rule the saved recipe uses)."""
    last = key.rsplit(".", 1)[-1]
    return bool(SECRET_KEY.search(last)) and not NOT_SECRET.search(last)


class SecretFilter(logging.Filter):
    """Scrubs every record passing through a handler (the message is rendered first, then cleaned)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = scrub(record.getMessage())
        record.args = ()
        return True


class RepoIdError(ValueError):
    """A string that is not a valid hub repository id (the caller words the user error)."""


def check_repo_id(repo_id: str, require_namespace: bool = False) -> str:
    """`repo_id` if it is a valid hub id (`name` or `namespace/name`), else RepoIdError saying why.

    Hub rules: parts of letters, digits, '.', '_', '-'; no leading/trailing '.'/'-'; no '--' or '..';
    at most 96 characters.
    """
    if not isinstance(repo_id, str) or not repo_id:
        raise RepoIdError("a hub id is a non-empty string")
    parts = repo_id.split("/")
    if len(parts) > 2 or (require_namespace and len(parts) != 2):
        raise RepoIdError(f"{repo_id!r} is not of the form namespace/name")
    for part in parts:
        if not REPO_PART.fullmatch(part) or "--" in part or ".." in part or len(part) > 96:
            raise RepoIdError(
                f"{repo_id!r}: {part!r} must be letters, digits, '.', '_' or '-' (no '--' or '..', no '.' or "
                "'-' at either end, at most 96 characters)"
            )
    if repo_id.endswith(".git"):
        raise RepoIdError(f"{repo_id!r} must not end with .git")
    return repo_id


def pickle_weights(model_dir: str | Path) -> list[str]:
    """Pickle weight files (pytorch_model*.bin, *.pt, ...) directly in a local model dir, when it has no
    safetensors: what `from_pretrained` would unpickle."""
    path = Path(model_dir)
    if not path.is_dir() or any(path.glob("*.safetensors")):
        return []
    return sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES and "training_args" not in p.name)
