"""`align export RUN [--merge]`: the run's final adapter, or base + adapter merged, as a stock checkpoint.

The final adapter is enough: DPO continues the SFT adapter (align/stages/setup.py loads OUTPUT_DIR/sft as
the trainable adapter and TRL freezes a copy as reference), so OUTPUT_DIR/dpo holds SFT + DPO. Merging
sft/ and then dpo/ would add the SFT update twice.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer, GenerationConfig

from align.card import ROUTING_PNG, CardInput, write_card
from align.config import Recipe, load_recipe
from align.errors import ModelError
from align.export.adapter import read_adapter
from align.export.atomic import atomic_dir
from align.export.checkpoint import parse_size
from align.export.merge import MergeStats, merge_checkpoint
from align.model import check_architecture

log = logging.getLogger("align")

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
STAGE_ORDER = ("sft", "dpo")
DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# what `align export` (no --merge) copies from a stage dir besides the card, which it rewrites
ADAPTER_EXTRAS = ("align_experts.json", "eval.json", "recipe.yaml", "metrics.jsonl")


@dataclass
class RunInfo:
    """A finished run as export sees it: its root, the final stage dir, the recipe, each stage's eval."""

    root: Path
    stage_dir: Path
    recipe: Recipe
    evals: dict[str, dict]


def _complete(path: Path) -> bool:
    return all((path / name).is_file() for name in ADAPTER_FILES)


def read_run(run: str | Path, stage: str | None = None) -> RunInfo:
    """RUN is an output dir (its last complete stage, or `stage`) or a stage dir itself."""
    run = Path(run)
    if _complete(run):
        root, stage_dir = run.parent, run
    else:
        names = [stage] if stage else [s for s in reversed(STAGE_ORDER) if _complete(run / s)]
        if not names or not _complete(run / names[0]):
            want = f"{run}/{stage}" if stage else f"{run}/dpo or {run}/sft"
            raise ModelError(f"no finished stage at {want} (expected {', '.join(ADAPTER_FILES)})")
        root, stage_dir = run, run / names[0]
    recipe_file = stage_dir / "recipe.yaml"
    if not recipe_file.is_file():
        raise ModelError(f"{stage_dir}: no recipe.yaml; export needs the run's resolved recipe")
    recipe = load_recipe(recipe_file)
    evals = {}
    upto = STAGE_ORDER.index(stage_dir.name) if stage_dir.name in STAGE_ORDER else len(STAGE_ORDER) - 1
    for name in STAGE_ORDER[: upto + 1]:
        path = stage_dir if name == stage_dir.name else root / name
        if (path / "eval.json").is_file() and (name == stage_dir.name or name in recipe.stages):
            evals[name] = json.loads((path / "eval.json").read_text())
    return RunInfo(root, stage_dir, recipe, evals)


def resolve_base(recipe: Recipe, base: str | None = None) -> Path:
    """The base checkpoint as a local dir: `base`, the recipe's local path, or the hub cache (no download)."""
    name = base or recipe.model.name_or_path
    if Path(name).is_dir():
        return Path(name)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    try:
        patterns = ["*.safetensors", "*.json", "*.model", "*.jinja", "README.md"]
        return Path(snapshot_download(name, revision=recipe.model.revision, allow_patterns=patterns))
    except (OSError, ValueError, HfHubHTTPError) as err:
        raise ModelError(f"cannot find the base model {name} (pass --base DIR): {type(err).__name__}") from None


def turn_end_ids(tokenizer) -> list[int]:
    """Token ids that end an assistant turn in the chat template (+ eos): what generation must stop on."""
    probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "MARKER"}]
    text = tokenizer.apply_chat_template(probe, tokenize=False)
    suffix = text[text.rindex("MARKER") + len("MARKER") :]
    ids = tokenizer(suffix, add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids)
    ends = [i for i in ids if i in special]
    return list(dict.fromkeys([*ends, tokenizer.eos_token_id]))


def write_model_files(out: Path, base_dir: Path, recipe: Recipe, tokenizer, dtype: torch.dtype | None) -> None:
    """config.json (no quantization, the export's dtype), generation_config.json (stop/pad ids for the chat)."""
    config = AutoConfig.from_pretrained(base_dir, trust_remote_code=recipe.model.trust_remote_code)
    if "quantization_config" in config.to_dict():
        raise ModelError(f"{base_dir} is a pre-quantized checkpoint; merge into its 16-bit original instead")
    if dtype is not None:
        config.dtype = dtype
    config.use_cache = True
    config.pad_token_id = tokenizer.pad_token_id
    config.save_pretrained(out)
    try:
        gen = GenerationConfig.from_pretrained(base_dir)
    except OSError:
        gen = GenerationConfig()
    ends = turn_end_ids(tokenizer)
    gen.bos_token_id = tokenizer.bos_token_id
    gen.eos_token_id = ends[0] if len(ends) == 1 else ends
    gen.pad_token_id = tokenizer.pad_token_id
    gen.save_pretrained(out)


def merge_into(out: Path, info: RunInfo, base_dir: Path, dtype: torch.dtype | None, max_bytes: int) -> MergeStats:
    """Write the merged weights of `info`'s final adapter into `out`."""
    config = AutoConfig.from_pretrained(base_dir, trust_remote_code=info.recipe.model.trust_remote_code)
    moe = check_architecture(config, info.recipe.model.allow_dense, str(base_dir)) == "moe"
    experts, inter = (config.num_local_experts, config.intermediate_size) if moe else (1, 0)
    updates = read_adapter(info.stage_dir, config.hidden_size, inter, experts)
    dequantized = None
    if info.recipe.quantization.load_in_4bit:
        from align.export.dequant import load_dequantized

        dequantized = load_dequantized(info.recipe, base_dir)
    return merge_checkpoint(base_dir, updates, out, inter, max_bytes, dtype, dequantized)


def export_run(
    run: str | Path,
    out: str | Path | None = None,
    merge: bool = True,
    stage: str | None = None,
    dtype: str = "auto",
    max_shard_size: str = "5GB",
    force: bool = False,
    base: str | None = None,
) -> Path:
    """Export a run's final adapter (merged into the base with `merge`) to `out`, atomically."""
    info = read_run(run, stage)
    out = Path(out) if out else info.root / ("final" if merge else "adapter")
    if dtype not in DTYPES:
        raise ModelError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype}")
    notes = [f"Adapter: `{info.stage_dir}` (stage {info.stage_dir.name}; it continues every earlier stage)."]
    base_dir = resolve_base(info.recipe, base) if merge else None
    tokenizer = AutoTokenizer.from_pretrained(info.stage_dir)
    with atomic_dir(out, overwrite=force) as tmp:
        if merge:
            stats = merge_into(tmp, info, base_dir, DTYPES[dtype], parse_size(max_shard_size))
            write_model_files(tmp, base_dir, info.recipe, tokenizer, DTYPES[dtype])
            notes.append(
                f"{stats.merged} base tensors updated by the LoRA, {stats.replaced} replaced (modules_to_save), "
                f"{len(stats.shards)} safetensors shard(s)."
            )
            if stats.dequantized:
                notes.append(
                    f"Trained on a 4-bit ({info.recipe.quantization.bnb_4bit_quant_type}) base: the LoRA was merged "
                    f"into the dequantized 4-bit weights ({stats.dequantized} tensors), the weights training saw."
                )
        else:
            for name in (*ADAPTER_FILES, *ADAPTER_EXTRAS):
                if (info.stage_dir / name).is_file():
                    shutil.copyfile(info.stage_dir / name, tmp / name)
        tokenizer.save_pretrained(tmp)
        routing = info.root / "routing" / ROUTING_PNG
        if routing.is_file():
            shutil.copyfile(routing, tmp / ROUTING_PNG)
        config_dir = base_dir or Path(info.recipe.model.name_or_path)
        has_config = (config_dir / "config.json").is_file()  # a hub id: only its cached snapshot would say
        model_type = AutoConfig.from_pretrained(config_dir).model_type if has_config else None
        card = CardInput(
            "merged" if merge else "adapter",
            info.recipe,
            info.evals,
            model_type=model_type,
            has_routing_png=routing.is_file(),
            notes=notes,
            base_dir=base_dir,
        )
        write_card(tmp, card, here=str(out))
    log.info("export: wrote %s", out)
    return out
