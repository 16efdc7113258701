"""Recipe schema: strict keys with suggestions, type errors, overrides, TRL pass-through, redaction."""

from __future__ import annotations

import pytest
import torch
import yaml

from align.config import apply_overrides, load_recipe, recipe_from_dict, recipe_to_yaml, redact
from align.errors import RecipeError
from align.runtime import Runtime
from align.stages.args import training_args

BASE = {
    "model": {"name_or_path": "m"},
    "data": {"sft": {"train": [{"path": "a.jsonl"}]}, "dpo": {"train": [{"path": "b.jsonl"}]}},
}


def with_(**sections) -> dict:
    return {**BASE, **sections}


def error_of(raw: dict) -> str:
    with pytest.raises(RecipeError) as info:
        recipe_from_dict(raw, "r.yaml")
    return str(info.value)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (with_(dpo={"betta": 0.1}), "unknown key 'dpo.betta' in r.yaml; did you mean 'beta'?"),
        (with_(lora={"rr": 8}), "unknown key 'lora.rr' in r.yaml; did you mean 'r'?"),
        (
            with_(model={"name_or_path": "m", "dtyp": "float32"}),
            "unknown key 'model.dtyp' in r.yaml; did you mean 'dtype'?",
        ),
        (with_(outptu_dir="x"), "unknown key 'outptu_dir' in r.yaml; did you mean 'output_dir'?"),
        (
            with_(data={"sft": {"train": [{"pth": "a"}]}}),
            "unknown key 'data.sft.train.0.pth' in r.yaml; did you mean 'path'?",
        ),
    ],
)
def test_unknown_keys_name_file_key_and_closest(raw, expected):
    assert expected in error_of(raw)


def test_wrong_types_name_key_and_expected_type():
    assert "'dpo.beta' in r.yaml: expected float, got 'abc'" in error_of(with_(dpo={"beta": "abc"}))
    assert "'lora.r' in r.yaml" in error_of(with_(lora={"r": "x"}))
    assert "valid integer" in error_of(with_(lora={"r": "x"}))
    assert "'sft.num_train_epochs' in r.yaml: expected float" in error_of(with_(sft={"num_train_epochs": [1]}))


@pytest.mark.parametrize(
    ("key", "replacement"),
    [
        ("max_prompt_length", "dpo.max_length"),
        ("max_completion_length", "dpo.max_length"),
        ("rpo_alpha", "loss_type: [sigmoid, sft]"),
        ("reference_free", "frozen SFT policy"),
        ("ref_adapter_name", "frozen SFT adapter"),
    ],
)
def test_removed_trl_keys_say_what_replaced_them(key, replacement):
    message = error_of(with_(dpo={key: 1}))
    assert f"'dpo.{key}' in r.yaml" in message and replacement in message


def test_keys_owned_elsewhere_are_refused():
    assert "top-level output_dir" in error_of(with_(sft={"output_dir": "x"}))
    assert "HF_TOKEN" in error_of(with_(dpo={"hub_token": "hf_x"}))


def test_stage_list_errors():
    assert "order sft, dpo" in error_of(with_(stages=["dpo", "sft"]))
    assert "twice" in error_of(with_(stages=["sft", "sft"]))
    assert "empty" in error_of(with_(stages=[]))
    assert "data.dpo is missing" in error_of({"model": {"name_or_path": "m"}, "data": {"sft": BASE["data"]["sft"]}})


def test_lora_dropout_conflicts_only_with_peft_target_parameters():
    assert "lora.dropout must be 0" in error_of(with_(lora={"dropout": 0.1, "implementation": "peft"}))
    assert "lora.dropout must be 0" in error_of(with_(lora={"dropout": 0.1, "router": "lora"}))
    assert recipe_from_dict(with_(lora={"dropout": 0.1, "experts": "none"})).lora.dropout == 0.1
    assert recipe_from_dict(with_(lora={"dropout": 0.1})).lora.dropout == 0.1  # routed experts take dropout


def test_expert_policies_parse_and_bad_ones_are_one_line():
    assert recipe_from_dict(with_(lora={"experts": {"top_p": 0.5}})).lora.policy() == {"top_p": 0.5}
    assert recipe_from_dict(with_(lora={"experts": {0: [1, 2]}})).lora.policy() == {0: [1, 2]}
    message = error_of(with_(lora={"experts": {"top_q": 0.5}}))
    assert message.startswith("'lora.experts' in r.yaml: invalid value {'top_q': 0.5}") and "\n" not in message
    assert "implementation: routed" in error_of(with_(lora={"implementation": "peft", "experts": {"top_p": 0.5}}))


def test_trl_values_are_converted_and_kept_apart():
    recipe = recipe_from_dict(with_(dpo={"beta": "0.05", "learning_rate": "5e-6", "eval_samples": 8}))
    assert recipe.dpo.trainer == {"beta": 0.05, "learning_rate": 5e-6}
    assert recipe.dpo.eval_samples == 8


def test_overrides_are_dotted_and_typed(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(BASE))
    recipe = load_recipe(path, ["dpo.beta=0.05", "output_dir=runs/x", "lora.r=4", "stages=[sft]"])
    assert recipe.dpo.trainer["beta"] == 0.05
    assert (recipe.output_dir, recipe.lora.r, recipe.stages) == ("runs/x", 4, ["sft"])
    with pytest.raises(RecipeError, match="not of the form"):
        apply_overrides(BASE, ["dpo.beta"])
    with pytest.raises(RecipeError, match="did you mean 'beta'"):
        load_recipe(path, ["dpo.bta=1"])


def test_recipe_files_fail_clearly(tmp_path):
    with pytest.raises(RecipeError, match="recipe not found"):
        load_recipe(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(RecipeError, match="a recipe is a mapping"):
        load_recipe(bad)
    bad.write_text("model: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(RecipeError, match="not valid YAML"):  # safe_load refuses python tags
        load_recipe(bad)


def test_resolved_recipe_round_trips_and_is_redacted(tmp_path):
    recipe = recipe_from_dict(with_(dpo={"beta": 0.2}, sft={"run_name": "x"}))
    text = recipe_to_yaml(recipe)
    path = tmp_path / "again.yaml"
    path.write_text(text)
    again = load_recipe(path)
    assert again == recipe
    assert redact({"hub": {"token": "hf_secret", "api_key": "k", "pad_token": "<unk>", "max_tokens": 5}}) == {
        "hub": {"token": "***", "api_key": "***", "pad_token": "<unk>", "max_tokens": 5}
    }


def test_every_shipped_recipe_loads(repo_root):
    recipes = sorted((repo_root / "recipes").rglob("*.yaml"))
    assert len(recipes) >= 3
    for path in recipes:
        load_recipe(path)


def test_training_args_cpu_defaults_and_recipe_precedence(tmp_path):
    recipe = recipe_from_dict(with_(dpo={"beta": 0.3, "logging_steps": 5}, seed=7))
    args = training_args(recipe, "dpo", Runtime("cpu", torch.float32), tmp_path)
    assert (args.bf16, args.fp16, args.use_cpu) == (False, False, True)  # TRL's bf16=True default is overridden
    assert (args.beta, args.logging_steps, args.seed, args.report_to) == (0.3, 5, 7, [])
    assert args.output_dir == str(tmp_path)
    sft = training_args(recipe, "sft", Runtime("cpu", torch.float32), tmp_path)
    assert sft.assistant_only_loss is True


def test_readme_recipe_reference_matches_the_schema(repo_root):
    from align.config.reference import markdown

    text = (repo_root / "README.md").read_text()  # regenerate with: python -m align.config.reference
    start, end = "<!-- recipe-reference:start -->\n", "<!-- recipe-reference:end -->"
    assert text[text.index(start) + len(start) : text.index(end)] == markdown()


def test_readme_paths_exist(repo_root):
    import re

    text = (repo_root / "README.md").read_text()
    paths = set(re.findall(r"(?:recipes|accelerate_configs|docs|data)/[\w./-]+\.(?:yaml|md|png)", text))
    assert len(paths) >= 5
    assert [p for p in paths if not (repo_root / p).exists()] == []
