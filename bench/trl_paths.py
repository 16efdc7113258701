"""The three training paths that bench.trl_compare alternates, built as their users would build them.

  trl       (a)  plain TRL SFTTrainer / DPOTrainer + PEFT LoRA on attention AND experts (`target_parameters`),
                 configured as a careful user would on this machine: fp32 on CPU (bf16 on GPU), the same batch,
                 max length, learning rate, schedule, gradient checkpointing and seed as align's recipe;
  trl_attn  (a') the same with attention-only LoRA (the fastest plain-TRL configuration);
  align     (b)  align's own stage code: `build_setup` + `sft.build_trainer` / `dpo.build_trainer`
                 (routed expert LoRA, padding-free forward, cached DPO reference log-probs).

DPO starts every path from an SFT adapter, as after align's SFT stage: (a) and (b) from the adapter align's
SFT run wrote (stock PEFT format, so stock `PeftModel.from_pretrained` loads it), (a') from its own SFT adapter.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from align.tiny import build_tiny_mixtral, mixtral_tokenizer

ROOT = Path(__file__).resolve().parents[1]
SFT_DATA = ROOT / "data" / "sft" / "train.jsonl"
DPO_DATA = ROOT / "data" / "prefs" / "train.jsonl"
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
EXPERTS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
PATHS = ("trl", "trl_attn", "align")
LABELS = {
    "trl": "(a) TRL + PEFT, attention + experts",
    "trl_attn": "(a') TRL + PEFT, attention only",
    "align": "(b) align",
    "align_padded": "(b-) align, padded forward",  # = routed expert LoRA alone
    "align_bfd": "(b+) align + TRL bfd packing",
    "align_no_precompute": "(b') align, reference each step",
}
# Ablations of align's speed-ups (--ablations): recipe sections merged into align's recipe, per stage.
ABLATIONS = {
    # bfd: 2 packs of max_length tokens per step hold about what 8 padded rows of the shipped data do (~400)
    "sft": {
        "align_padded": {"sft": {"packed_forward": False}},
        "align_bfd": {"sft": {"packing": True, "per_device_train_batch_size": 2}},
    },
    "dpo": {
        "align_padded": {"dpo": {"packed_forward": False, "precompute_ref_log_probs": False}},
        "align_no_precompute": {"dpo": {"precompute_ref_log_probs": False}},
    },
}


@dataclass(frozen=True)
class Shape:
    """One benchmark configuration: model shape, sequence length, batch, steps."""

    hidden: int = 256
    intermediate: int = 512
    layers: int = 4
    experts: int = 8
    top_k: int = 2
    heads: int = 8
    kv_heads: int = 2
    max_length: int = 256
    batch: int = 8
    steps: int = 12  # per stage and path, warm-up included
    warmup: int = 2
    rank: int = 16
    device: str = "cpu"
    rows: int | None = None  # rows of each dataset (None: all 400); the sweeps read only what their steps use

    @property
    def name(self) -> str:
        return f"L{self.max_length}-E{self.experts}-B{self.batch}"

    def model_overrides(self) -> dict:
        return {
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "num_local_experts": self.experts,
            "num_experts_per_tok": self.top_k,
            "max_position_embeddings": max(4096, self.max_length),
        }


def build_base(shape: Shape, work: Path, seed: int = 0) -> Path:
    """The random-weight Mixtral of this shape (real Mixtral tokenizer), written as a checkpoint."""
    return build_tiny_mixtral(work / "base", seed=seed, **shape.model_overrides())


# ---------------------------------------------------------------- data


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _merge_system(messages: list[dict]) -> list[dict]:
    if messages and messages[0]["role"] == "system":
        first = {"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}
        return [first, *messages[2:]]
    return messages


def chained_data(work: Path, max_length: int, seed: int = 0) -> tuple[Path, Path]:
    """Variable-length long conversations made of the shipped rows, for the sequence-length sweep.

    SFT: random shipped conversations joined into one multi-turn conversation of up to a length drawn uniformly
    from [0.25, 0.95] x max_length tokens. DPO: such a history, of up to [0.2, 0.7] x max_length tokens, as the
    multi-turn prompt before each shipped pair's own prompt (the shipped completions; nothing is truncated).
    """
    tokenizer = mixtral_tokenizer()
    rng = random.Random(seed)

    def length(messages):
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    sft_rows = [_merge_system(r["messages"]) for r in _read(SFT_DATA)]
    sizes = [length(m) for m in sft_rows]

    def history(low: float, high: float) -> list[dict]:
        target, out, total = rng.uniform(low, high) * max_length, [], 0
        for _ in range(10 * len(sft_rows)):  # random rows that still fit, until the target is nearly reached
            i = rng.randrange(len(sft_rows))
            if total + sizes[i] <= target:
                out, total = out + sft_rows[i], total + sizes[i]
            if target - total < min(sizes):
                break
        return out

    out_sft = [{"messages": history(0.25, 0.95)} for _ in range(len(sft_rows))]
    out_dpo = [
        {"prompt": history(0.2, 0.7) + row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"]}
        for row in _read(DPO_DATA)
    ]
    paths = work / f"sft-chained-{max_length}.jsonl", work / f"prefs-chained-{max_length}.jsonl"
    for path, rows in zip(paths, (out_sft, out_dpo), strict=True):
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return paths


# ---------------------------------------------------------------- recipes and trainer arguments


def trainer_keys(shape: Shape, stage: str) -> dict:
    """The TRL keys every path shares for a stage (align's recipe section holds exactly these)."""
    common = {
        "per_device_train_batch_size": shape.batch,
        "max_length": shape.max_length,
        "gradient_checkpointing": False,
        "max_steps": shape.steps,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
    }
    if stage == "sft":
        return {**common, "learning_rate": 2.0e-3}
    return {**common, "learning_rate": 1.0e-3, "beta": 0.1, "loss_type": ["sigmoid"]}


def variant_recipes(shape: Shape, base: Path, work: Path, stage: str, sft_data: Path, dpo_data: Path) -> dict:
    """name -> recipe of each align ablation of `stage` (own output dir)."""
    return {
        name: align_recipe(shape, base, work / name, sft_data, dpo_data, extra)
        for name, extra in ABLATIONS[stage].items()
    }


def align_recipe(shape: Shape, base: Path, out: Path, sft_data: Path, dpo_data: Path, extra: dict | None = None):
    from align.config import recipe_from_dict

    raw = {
        "model": {"name_or_path": str(base), "dtype": "auto"},
        "lora": {"r": shape.rank, "alpha": 2 * shape.rank, "target_modules": ATTENTION, "experts": "all"},
        "data": {
            "sft": {"train": [{"path": str(sft_data), "max_rows": shape.rows}]},
            "dpo": {"train": [{"path": str(dpo_data), "max_rows": shape.rows}]},
        },
        "output_dir": str(out),
        "seed": 42,
        "sft": {**trainer_keys(shape, "sft"), "eval_samples": None},
        "dpo": {**trainer_keys(shape, "dpo"), "eval_samples": None},
    }
    for section, values in (extra or {}).items():
        raw[section] = {**raw.get(section, {}), **values}
    return recipe_from_dict(raw, source="bench.trl_compare")


def trl_args(shape: Shape, stage: str, out: Path):
    """SFTConfig / DPOConfig of the plain-TRL paths: TRL's defaults, except what a careful user sets here."""
    from trl import DPOConfig, SFTConfig

    on_cpu = shape.device == "cpu"
    values = {
        **trainer_keys(shape, stage),
        "output_dir": str(out),
        "seed": 42,
        "data_seed": 42,
        "bf16": False,  # CPU: fp32 (bf16 matmul is 60-100x slower); GPU: the weights are already bf16
        "use_cpu": on_cpu,
        "report_to": "none",
        "logging_steps": 1,
        "save_strategy": "no",
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
    }
    if stage == "sft":
        return SFTConfig(**values, assistant_only_loss=True)
    return DPOConfig(**values)


def trl_model(base: Path, shape: Shape):
    from transformers import AutoModelForCausalLM

    dtype = torch.float32 if shape.device == "cpu" else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, attn_implementation="sdpa")
    return model.to(shape.device)


def trl_lora(shape: Shape, experts: bool):
    from peft import LoraConfig

    return LoraConfig(
        r=shape.rank,
        lora_alpha=2 * shape.rank,
        lora_dropout=0.0,
        target_modules=ATTENTION,
        target_parameters=EXPERTS if experts else None,
        task_type="CAUSAL_LM",
    )


# ---------------------------------------------------------------- trainers


def stage_data(recipe, stage: str) -> tuple[object, object]:
    """(tokenizer, training rows) of a stage through align's data loader, without loading a model: what the plain
    TRL paths train on (the same rows, in the same order, as align's StageSetup)."""
    from align.chat import template_allows_system
    from align.data import load_stage
    from align.model import load_tokenizer

    tokenizer = load_tokenizer(recipe.model)
    kind = "sft" if stage == "sft" else "preference"
    data = load_stage(
        recipe.stage_data(stage),
        kind,
        seed=recipe.seed,
        allow_system=template_allows_system(tokenizer),
        log=lambda _message: None,
    )
    return tokenizer, data.train


def sft_trainers(shape: Shape, recipe, work: Path, variants: dict, paths=PATHS) -> tuple[dict, int]:
    """name -> SFT trainer of each of `paths` (+ align `variants`: name -> recipe), and the number of rows."""
    from trl import SFTTrainer

    from align.stages.setup import build_setup
    from align.stages.sft import build_trainer

    trainers = {}
    if "align" in paths:
        trainers["align"] = build_trainer(build_setup(recipe, "sft"))
    for name, variant in variants.items():
        trainers[name] = build_trainer(build_setup(variant, "sft"))
    tokenizer, rows = stage_data(recipe, "sft")
    for name, experts in (("trl", True), ("trl_attn", False)):
        if name in paths:
            trainers[name] = SFTTrainer(
                model=trl_model(Path(recipe.model.name_or_path), shape),
                args=trl_args(shape, "sft", work / name / "sft-work"),
                train_dataset=rows,
                processing_class=tokenizer,
                peft_config=trl_lora(shape, experts),
            )
    for name in ("align", *variants):
        if "trl" in trainers and name in trainers:
            same_initial_adapter(trainers["trl"].model, trainers[name].model, shape.experts)
    return trainers, len(rows)


def same_initial_adapter(stock, routed, num_experts: int) -> None:
    """Give align's fresh adapter (b) the initial LoRA values of (a) (random A, zero B), so that the two paths'
    second steps, not only their first, must agree if their math (gradients included) is the same."""
    from align.moe.adapters import copy_stock_experts

    routed_params = dict(routed.named_parameters())
    expert_b = [p for n, p in stock.named_parameters() if ".mlp.experts." in n and "lora_B" in n]
    with torch.no_grad():
        for name, param in stock.named_parameters():
            if "lora_" in name and ".mlp.experts." not in name:
                routed_params[name].copy_(param)
        # copy_stock_experts copies only experts with a non-zero update: mark every slot used while copying A
        for p in expert_b:
            p.fill_(1.0)
        copy_stock_experts(stock, routed, num_experts)
        for p in expert_b:
            p.zero_()
        for name, param in routed.named_parameters():
            if ".mlp.experts." in name and "_B." in name:
                param.zero_()


def dpo_trainers(shape: Shape, recipe, work: Path, variants: dict, paths=PATHS) -> tuple[dict, int]:
    """name -> DPO trainer; every path starts from an SFT adapter (its reference = that adapter, frozen)."""
    from peft import PeftModel
    from trl import DPOTrainer

    from align.stages.dpo import build_trainer
    from align.stages.setup import build_setup

    trainers = {}
    if "align" in paths:
        trainers["align"] = build_trainer(build_setup(recipe, "dpo"))
    for name, variant in variants.items():
        trainers[name] = build_trainer(build_setup(variant, "dpo"))
    tokenizer, rows = stage_data(recipe, "dpo")
    for name, adapter in (("trl", Path(recipe.output_dir) / "sft"), ("trl_attn", work / "trl_attn" / "sft")):
        if name in paths:
            base = trl_model(Path(recipe.model.name_or_path), shape)
            trainers[name] = DPOTrainer(
                model=PeftModel.from_pretrained(base, adapter, is_trainable=True),
                ref_model=None,
                args=trl_args(shape, "dpo", work / name / "dpo-work"),
                train_dataset=rows,
                processing_class=tokenizer,
            )
    return trainers, len(rows)
