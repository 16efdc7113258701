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


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_dir) -> Path:
    """One short run of the shipped tiny recipe (SFT then DPO, 2 steps each) with the end-of-run export on:
    OUTPUT_DIR/{sft,dpo}/ adapters with cards, routing/, summary.json and final/ (merged, 8 MB shards)."""
    import logging

    from align.cli import main

    out = tmp_path_factory.mktemp("tiny-run")
    align_log = logging.getLogger("align")
    handlers = list(align_log.handlers)
    code = main(
        [
            "run",
            str(ROOT / "recipes/tiny-mixtral/pipeline.yaml"),
            f"output_dir={out}",
            f"model.name_or_path={tiny_dir}",
            "sft.max_steps=2",
            "dpo.max_steps=2",
            "sft.eval_samples=8",
            "dpo.eval_samples=8",
            "lora.profile_max_tokens=2000",
            "export.merge=true",
            "export.max_shard_size=8MB",
        ]
    )
    for handler in set(align_log.handlers) - set(handlers):  # its stream is this fixture's captured stderr
        align_log.removeHandler(handler)
    assert code == 0
    return out
