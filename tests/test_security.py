"""Security: no code from checkpoints or recipes runs, no secret reaches a log line, a file or an error."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from align.cli import main
from align.config import load_recipe, recipe_from_dict, recipe_to_yaml
from align.config.schema import ModelSection, QuantizationSection
from align.errors import ModelError, RecipeError
from align.runtime import Runtime
from align.security import RepoIdError, check_repo_id, scrub

TOKEN = "hf_" + "Zq7" * 12  # looks like a real hub token
RECIPE = "recipes/tiny-mixtral/pipeline.yaml"


class Evil:
    """Unpickling this runs a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def load(model_dir: Path, **model_keys):
    from align.model import load_model

    section = ModelSection(name_or_path=str(model_dir), **model_keys)
    return load_model(section, QuantizationSection(), Runtime("cpu", torch.float32))


def test_pickle_weights_are_refused_and_even_opted_in_never_unpickle_code(tmp_path, tiny_dir):
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    (model / "model.safetensors").unlink()
    marker = tmp_path / "PWNED"
    torch.save({"model.embed_tokens.weight": Evil(marker)}, model / "pytorch_model.bin")
    with pytest.raises(ModelError, match=r"pickle weights \(pytorch_model.bin\).*model.allow_pickle_weights: true"):
        load(model)
    with pytest.raises(ModelError, match="cannot load the weights"):  # torch.load(weights_only=True) refuses it
        load(model, allow_pickle_weights=True)
    assert not marker.exists()


def test_opted_in_pickle_of_plain_tensors_loads(tmp_path, tiny_dir):
    from safetensors.torch import load_file

    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    state = load_file(model / "model.safetensors")
    (model / "model.safetensors").unlink()
    torch.save(state, model / "pytorch_model.bin")
    loaded = load(model, allow_pickle_weights=True)
    assert torch.equal(loaded.state_dict()["lm_head.weight"], state["lm_head.weight"])


def test_remote_code_never_runs_without_trust_remote_code(tmp_path, tiny_dir, capsys, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    marker = tmp_path / "PWNED"
    config = json.loads((model / "config.json").read_text())
    config.update(model_type="evil_moe", auto_map={"AutoConfig": "configuration_evil.EvilConfig"})
    (model / "config.json").write_text(json.dumps(config))
    (model / "configuration_evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    assert recipe_from_dict({"model": {"name_or_path": "m"}, "stages": []} | _data()).model.trust_remote_code is False
    code = main(["run", RECIPE, f"output_dir={tmp_path}/out", f"model.name_or_path={model}", "stages=[sft]",
                 "data.sft.train=[{path: data/sft/train.jsonl, max_rows: 4}]", "data.sft.eval=[]"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "needs its own model code (auto_map in config.json)" in err and "model.trust_remote_code: true" in err
    assert not marker.exists()


def _data() -> dict:
    return {"data": {"sft": {"train": [{"path": "a.jsonl"}]}}, "stages": ["sft"]}


def test_secrets_are_redacted_from_saved_recipes_and_refused_in_recipes(tmp_path):
    with pytest.raises(RecipeError) as info:
        recipe_from_dict({"model": {"name_or_path": "m"}, "sft": {"hub_token": TOKEN}, **_data()}, "r.yaml")
    assert "HF_TOKEN" in str(info.value) and TOKEN not in str(info.value)
    recipe = recipe_from_dict({"model": {"name_or_path": "m"}, "sft": {"run_name": "x"}, **_data()})
    text = recipe_to_yaml(recipe)
    assert TOKEN not in text
    from align.config import redact

    assert redact({"a": {"api_key": "k", "secret": "s", "eos_token": "</s>", "max_tokens": 3}}) == {
        "a": {"api_key": "***", "secret": "***", "eos_token": "</s>", "max_tokens": 3}
    }


def test_a_token_written_under_an_innocent_key_is_hidden_in_saved_recipes_and_cards(monkeypatch):
    from align.config.redact import recipe_dict

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    recipe = recipe_from_dict({"model": {"name_or_path": "m"}, "sft": {"run_name": f"run-{TOKEN}"}, **_data()})
    assert TOKEN not in recipe_to_yaml(recipe)  # OUTPUT/<stage>/recipe.yaml
    assert recipe_dict(recipe)["sft"]["run_name"] == "run-***"  # what model cards render
    assert load_recipe_text(recipe_to_yaml(recipe)).sft.trainer["run_name"] == "run-***"  # still loads


def load_recipe_text(text: str):
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(text)
    return load_recipe(f.name)


def test_errors_and_logs_never_show_a_token(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("MY_SERVICE_API_KEY", "sk-live-123456789")
    # an error message that would contain the token (a data path), a secret-looking override, `check` output
    assert main(["run", RECIPE, f"data.sft.train=[{{path: {tmp_path}/{TOKEN}.jsonl}}]", "stages=[sft]"]) == 2
    assert main(["check", RECIPE, f"hub_token={TOKEN}"]) == 2
    assert main(["check", RECIPE, "sft.run_name=sk-live-123456789"]) == 0
    logging.getLogger("align").info("pushing with %s to https://x/?token=abc123secret", TOKEN)
    out = capsys.readouterr()
    text = out.out + out.err
    assert "no such file" in text and "unknown key 'hub_token'" in text and "run_name: '***'" in text
    assert TOKEN not in text and "sk-live-123456789" not in text and "abc123secret" not in text
    assert "pushing with *** to https://x/?token=***" in text


def test_debug_traceback_is_scrubbed_too(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert main(["--debug", "run", RECIPE, f"data.sft.train=[{{path: {tmp_path}/{TOKEN}.jsonl}}]"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and TOKEN not in err


def test_scrub_patterns():
    env = {"HF_TOKEN": TOKEN, "SHORT_KEY": "1", "PATH": "/usr/bin"}
    assert scrub(f"a {TOKEN} b /usr/bin 1", env) == "a *** b /usr/bin 1"
    assert scrub("Authorization: Bearer abc.def-ghi", {}) == "Authorization: Bearer ***"
    assert scrub("hf_short stays", {}) == "hf_short stays"


@pytest.mark.parametrize(
    "repo_id", ["mistralai/Mixtral-8x7B-v0.1", "gpt2", "my-org/a.b_c-1", "A/B"]
)  # fmt: skip
def test_valid_repo_ids(repo_id):
    assert check_repo_id(repo_id) == repo_id


@pytest.mark.parametrize(
    "repo_id",
    ["", "a/b/c", "../etc/passwd", "org/my model", "org/-x", "org/x-", "org/a--b", "org/a..b", "org/x.git",
     "org/" + "x" * 97, "/abs", "org/", "https://huggingface.co/org/x", "org/x?token=1"],
)  # fmt: skip
def test_invalid_repo_ids(repo_id):
    with pytest.raises(RepoIdError):
        check_repo_id(repo_id)


def test_hub_repo_id_is_validated_when_the_recipe_loads():
    with pytest.raises(RecipeError, match="'hub.repo_id' in r.yaml: 'org/bad name'"):
        recipe_from_dict({"model": {"name_or_path": "m"}, "hub": {"repo_id": "org/bad name"}, **_data()}, "r.yaml")


@settings(max_examples=400, deadline=None, database=None)
@given(st.text(alphabet="ab-_./ Z9~%", min_size=0, max_size=12))
def test_repo_id_check_accepts_only_what_the_hub_validator_accepts(repo_id):
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        check_repo_id(repo_id)
        ours = True
    except RepoIdError:
        ours = False
    try:
        validate_repo_id(repo_id)
        hubs = True
    except HFValidationError:
        hubs = False
    assert not ours or hubs, repo_id  # never looser than the hub


def test_relative_data_paths_resolve_from_the_working_directory_and_local_wins(tmp_path, monkeypatch):
    """`data/x.jsonl` means ./data/x.jsonl, never something beside the recipe; a local dir beats a hub id."""
    from align.data import DataSource
    from align.data.sources import is_hub_id, resolve

    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "name").mkdir()
    monkeypatch.chdir(tmp_path)
    assert not is_hub_id(DataSource(path="org/name"))  # exists locally
    assert is_hub_id(DataSource(path="org/other"))
    assert not is_hub_id(DataSource(path="org/missing.jsonl"))  # a data-file suffix is never a hub id
    assert resolve(DataSource(path="~/x.jsonl")) == Path.home() / "x.jsonl"
    recipe = tmp_path / "sub" / "r.yaml"
    recipe.parent.mkdir()
    recipe.write_text("model: {name_or_path: m}\nstages: [sft]\ndata: {sft: {train: [{path: d.jsonl}]}}\n")
    assert load_recipe(recipe).data.sft.train[0].path == "d.jsonl"  # kept as written: resolved from the cwd
