"""Shared fixtures: one tiny Mixtral and its tokenizer per test session (building costs seconds)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny random Mixtral with the real Mixtral tokenizer, written once."""
    from align.tiny import build_tiny_mixtral

    return build_tiny_mixtral(tmp_path_factory.mktemp("tiny") / "tiny-base", seed=0)


@pytest.fixture(scope="session")
def tokenizer():
    """The real Mixtral 8x7B tokenizer (from mistral-common) with align's chat template."""
    from align.tiny import mixtral_tokenizer

    return mixtral_tokenizer()
