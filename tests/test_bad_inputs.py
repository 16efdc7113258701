"""The bad-input catalog: every case goes through the real CLI (`align.cli.main`, in-process).

Each must exit with code 2, print exactly one `align: error:` line naming the file/row/key and the fix,
show no traceback (but `--debug` does), and leave nothing that looks like a finished output. The table
in docs/reliability.md lists every case id with its message (`python -m tests.test_bad_inputs` prints it).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from align.cli import main

RECIPE = "recipes/tiny-mixtral/pipeline.yaml"


@dataclass(frozen=True)
class Case:
    id: str
    input: str  # what is wrong, for the docs table
    make: Callable[[Path, Path], list[str]]  # (tmp dir, tiny model dir) -> extra CLI args
    expect: tuple[str, ...]  # substrings of the one error line


def run_args(tmp: Path, tiny: Path, *extra: str, stage: str = "sft") -> list[str]:
    base = [
        "run",
        RECIPE,
        f"output_dir={tmp}/out",
        f"model.name_or_path={tiny}",
        "model.create_tiny_if_missing=false",
        f"stages=[{stage}]",
        "data.sft.train=[{path: data/sft/train.jsonl, max_rows: 8}]",
        "data.sft.eval=[]",
        "data.dpo.train=[{path: data/prefs/train.jsonl, max_rows: 8}]",
        "data.dpo.eval=[]",
    ]
    return [*base, *extra]


def recipe_file(text: str) -> Callable[[Path, Path], list[str]]:
    def make(tmp: Path, tiny: Path) -> list[str]:
        path = tmp / "r.yaml"
        path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
        return ["run", str(path)]

    return make


def overrides(*extra: str, stage: str = "sft") -> Callable[[Path, Path], list[str]]:
    return lambda tmp, tiny: run_args(tmp, tiny, *extra, stage=stage)


def data_file(content: bytes | str, stage: str = "sft", name: str = "d.jsonl", *extra: str):
    """A data file with `content` as the stage's only training source."""

    def make(tmp: Path, tiny: Path) -> list[str]:
        path = tmp / name
        path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
        return run_args(tmp, tiny, f"data.{stage}.train=[{{path: {path}}}]", *extra, stage=stage)

    return make


def rows(*items: object) -> str:
    return "".join(json.dumps(x) + "\n" for x in items)


def conv(*turns: tuple[str, str]) -> dict:
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


GOOD = conv(("user", "hi"), ("assistant", "hello"))
PAIR = {"prompt": "2+2?", "chosen": "4", "rejected": "5"}


def model_dir(edit: Callable[[Path, Path], None]) -> Callable[[Path, Path], list[str]]:
    """A copy of the tiny model, changed by `edit(copy, tmp)`, as the recipe's model."""

    def make(tmp: Path, tiny: Path) -> list[str]:
        copy = tmp / "model"
        shutil.copytree(tiny, copy)
        edit(copy, tmp)
        return run_args(tmp, tiny, f"model.name_or_path={copy}")

    return make


def _dense(copy: Path, tmp: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    (copy / "model.safetensors").unlink()
    config = LlamaConfig(vocab_size=32000, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(copy)


def _no_template(copy: Path, tmp: Path) -> None:
    (copy / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((copy / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (copy / "tokenizer_config.json").write_text(json.dumps(config))


def _small_vocab(copy: Path, tmp: Path) -> None:
    from transformers import MixtralForCausalLM

    from align.tiny import tiny_config

    MixtralForCausalLM(tiny_config(1000)).save_pretrained(copy)


def _pickle_weights(copy: Path, tmp: Path) -> None:
    import torch
    from safetensors.torch import load_file

    state = load_file(copy / "model.safetensors")
    (copy / "model.safetensors").unlink()
    torch.save(state, copy / "pytorch_model.bin")


def _truncate(copy: Path, tmp: Path) -> None:
    data = (copy / "model.safetensors").read_bytes()
    (copy / "model.safetensors").write_bytes(data[: len(data) // 2])


LONG = "word " * 400
CASES = [
    # recipes
    Case("recipe-unknown-key", "unknown top-level key", overrides("outptu_dir=x"),
         ("unknown key 'outptu_dir'", "did you mean 'output_dir'?")),
    Case("recipe-misspelled-trl-key", "misspelled TRL key", overrides("dpo.betta=0.1"),
         ("unknown key 'dpo.betta' in recipes/tiny-mixtral/pipeline.yaml", "did you mean 'beta'?")),
    Case("recipe-misspelled-nested", "misspelled key in a data source", overrides("data.sft.train=[{pth: a.jsonl}]"),
         ("unknown key 'data.sft.train.0.pth'", "did you mean 'path'?")),
    Case("recipe-wrong-type", "string where an int belongs", overrides("lora.r=sixteen"),
         ("'lora.r' in recipes/tiny-mixtral/pipeline.yaml", "valid integer", "'sixteen'")),
    Case("recipe-wrong-type-trl", "string where TRL wants a float", overrides("sft.learning_rate=fast"),
         ("'sft.learning_rate'", "expected float, got 'fast'")),
    Case("recipe-missing-file", "recipe path that does not exist", lambda tmp, tiny: ["run", str(tmp / "nope.yaml")],
         ("recipe not found:", "nope.yaml")),
    Case("recipe-invalid-yaml", "YAML syntax error", recipe_file("model: [unclosed\n"),
         ("r.yaml: not valid YAML (line 2, column 1): while parsing a flow sequence expected ',' or ']'",)),
    Case("recipe-not-mapping", "a YAML list instead of sections", recipe_file("- a\n- b\n"),
         ("r.yaml: a recipe is a mapping of sections, got list",)),
    Case("recipe-empty", "empty recipe file", recipe_file(""), ("r.yaml: the recipe is empty",)),
    Case("recipe-python-tag", "YAML python tag (code execution attempt)",
         recipe_file("model: !!python/object/apply:os.system ['echo pwned']\n"),
         ("not valid YAML (line 1, column 8)", "yaml.safe_load, which builds no Python objects")),
    Case("recipe-not-utf8", "recipe in Latin-1", recipe_file(b"model: {name_or_path: caf\xe9}\n"),
         ("r.yaml: not UTF-8 text",)),
    Case("recipe-missing-required", "model.name_or_path missing", recipe_file("model: {revision: main}\nstages: [sft]\n"
                                                              "data: {sft: {train: [{path: a.jsonl}]}}\n"),
         ("missing key 'model.name_or_path' in", "r.yaml")),
    Case("recipe-negative-rank", "negative LoRA rank", overrides("lora.r=-4"),
         ("'lora.r' in", "greater than 0", "-4")),
    Case("recipe-negative-lr", "negative learning rate", overrides("sft.learning_rate=-1e-4"),
         ("'sft.learning_rate' in", "must be in (0, 1)", "-0.0001")),
    Case("recipe-absurd-lr", "learning rate 5", overrides("sft.learning_rate=5"),
         ("'sft.learning_rate'", "typical 1e-6 to 1e-3", "got 5")),
    Case("recipe-zero-batch", "batch size 0", overrides("sft.per_device_train_batch_size=0"),
         ("'sft.per_device_train_batch_size'", "whole number above 0, got 0")),
    Case("recipe-negative-epochs", "negative epochs", overrides("sft.num_train_epochs=-1"),
         ("'sft.num_train_epochs'", "must be in (0, 10000)")),
    Case("recipe-negative-beta", "DPO beta below 0", overrides("dpo.beta=-0.1", stage="dpo"),
         ("'dpo.beta'", "typical 0.01 to 0.5")),
    Case("recipe-zero-max-length", "max_length 0", overrides("sft.max_length=0"),
         ("'sft.max_length'", "whole number above 0")),
    Case("recipe-unknown-loss-type", "DPO loss type TRL does not have", overrides("dpo.loss_type=[sigmoid, nope]"),
         ("'dpo.loss_type'", "unknown loss type 'nope'", "sigmoid_norm")),
    Case("recipe-loss-weights-length", "loss_weights shorter than loss_type",
         overrides("dpo.loss_type=[sigmoid, sft]", "dpo.loss_weights=[1.0]"),
         ("dpo.loss_weights has 1 weights for 2 loss types",)),
    Case("recipe-conflict-dropout", "LoRA dropout with PEFT target_parameters",
         overrides("lora.dropout=0.1", "lora.implementation=peft"), ("lora.dropout must be 0",)),
    Case("recipe-conflict-fp16-bf16", "fp16 and bf16 both on", overrides("sft.fp16=true", "sft.bf16=true"),
         ("sft.fp16 and sft.bf16 are both true: choose one",)),
    Case("recipe-conflict-best-model", "load_best_model_at_end without matching eval/save strategies",
         overrides("sft.load_best_model_at_end=true", "sft.save_strategy=steps"),
         ("the sft: section's trainer keys do not fit together", "load_best_model_at_end")),
    Case("recipe-removed-trl-key", "TRL 0.x key max_prompt_length", overrides("dpo.max_prompt_length=128"),
         ("'dpo.max_prompt_length'", "set dpo.max_length")),
    Case("recipe-owned-key", "output_dir inside a stage", overrides("sft.output_dir=x"),
         ("'sft.output_dir'", "use the top-level output_dir")),
    Case("recipe-stage-order", "stages out of order", overrides("stages=[dpo, sft]"),
         ("must run in the order sft, dpo",)),
    Case("recipe-stage-twice", "a stage listed twice", overrides("stages=[sft, sft]"), ("lists a stage twice",)),
    Case("recipe-stage-empty", "no stages", overrides("stages=[]"), ("stages is empty",)),
    Case("recipe-stage-unknown", "unknown stage name", overrides("stages=[ppo]"), ("'stages.0'", "'ppo'")),
    Case("recipe-stage-no-data", "stage listed without its data", overrides("data.dpo=null", stage="dpo"),
         ("stage 'dpo' is listed in stages but data.dpo is missing",)),
    Case("recipe-bad-override", "override without '='", overrides("dpo.beta"),
         ("override 'dpo.beta' is not of the form key.path=value",)),
    Case("recipe-override-into-value", "override below a scalar", overrides("seed.x=1"),
         ("'seed' is not a section",)),
    Case("recipe-eval-fraction", "eval_fraction 1.5", overrides("data.sft.eval_fraction=1.5"),
         ("'data.sft.eval_fraction'", "less than 1")),
    # data
    Case("data-malformed-json", "malformed JSON line", data_file(rows(GOOD) + '{"messages": [\n'),
         ("d.jsonl row 2: invalid JSON",)),
    Case("data-empty-file", "empty file", data_file(""), ("d.jsonl: empty file (no rows)",)),
    Case("data-only-blank-lines", "file of blank lines", data_file("\n\n  \n"), ("d.jsonl: empty file (no rows)",)),
    Case("data-latin1", "Latin-1 bytes", data_file(b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n'),
         ("d.jsonl row 1: not UTF-8: byte 0xe9", "re-save the file as UTF-8")),
    Case("data-utf16", "UTF-16 file (with BOM)", data_file(rows(GOOD).encode("utf-16")),
         ("d.jsonl row 1: not UTF-8: byte 0xff at byte offset 0",)),
    Case("data-10mb-line", "10 MB line that is not valid JSON", data_file('{"messages": "' + "x" * 10_000_000 + "\n"),
         ("d.jsonl row 1: invalid JSON: Unterminated string",)),
    Case("data-10mb-prompt", "10 MB valid row: prompt far past max_length",
         data_file(rows(conv(("user", "y " * 5_000_000), ("assistant", "ok")))),
         ("d.jsonl row 1: the prompt is", "at least sft.max_length (256)", "data.sft.skip_bad_rows: true")),
    Case("data-not-object", "a row that is a list", data_file(rows(GOOD, [1, 2])),
         ("d.jsonl row 2: row is not a JSON object (got a list)",)),
    Case("data-unknown-shape", "row with none of the accepted shapes", data_file(rows({"text": "hi"})),
         ("d.jsonl row 1: unrecognised row shape with keys ['text']", "accepted shapes are")),
    Case("data-missing-field", "preference row without rejected", data_file(rows({"prompt": "p", "chosen": "c"}),
         "dpo"), ("d.jsonl row 1: unrecognised row shape",)),
    Case("data-null-field", "chosen is null", data_file(rows({"prompt": "p", "chosen": None, "rejected": "r"}), "dpo"),
         ("d.jsonl row 1: missing field 'chosen'",)),
    Case("data-empty-text", "empty assistant reply", data_file(rows(conv(("user", "hi"), ("assistant", "  ")))),
         ("d.jsonl row 1: turn 2: empty content",)),
    Case("data-roles-not-alternating", "two user turns in a row",
         data_file(rows(conv(("user", "a"), ("user", "b"), ("assistant", "c")))),
         ("d.jsonl row 1: turn 2: expected role 'assistant', got 'user'", "must alternate")),
    Case("data-system-not-first", "system turn in the middle",
         data_file(rows(conv(("user", "a"), ("system", "s"), ("assistant", "c")))),
         ("d.jsonl row 1: turn 2: a system turn is only allowed as the first turn",)),
    Case("data-ends-with-user", "conversation ending with a user turn",
         data_file(rows(conv(("user", "a"), ("assistant", "b"), ("user", "c")))),
         ("d.jsonl row 1: turn 3: last turn is 'user'",)),
    Case("data-chosen-equals-rejected", "chosen == rejected",
         data_file(rows(PAIR, {"prompt": "q", "chosen": "same", "rejected": " same "}), "dpo"),
         ("d.jsonl row 2: chosen and rejected are identical",)),
    Case("data-dpo-prompt-too-long", "DPO prompt longer than max_length",
         data_file(rows(PAIR, {"prompt": LONG, "chosen": "a", "rejected": "b"}), "dpo", "d.jsonl", "dpo.max_length=64"),
         ("d.jsonl row 2: the prompt is", "at least dpo.max_length (64)", "dpo.truncation_mode: keep_end")),
    Case("data-mixed-schemas", "alpaca row after a messages row",
         data_file(rows(GOOD, {"instruction": "i", "output": "o"})),
         ("d.jsonl row 2: shape 'alpaca' differs from the file's first row ('messages')",)),
    Case("data-wrong-stage", "preference rows in the SFT stage", data_file(rows(PAIR)),
         ("d.jsonl row 1: a preference row (chosen/rejected) in an SFT stage",)),
    Case("data-missing-file", "data path that does not exist",
         lambda tmp, tiny: run_args(tmp, tiny, f"data.sft.train=[{{path: {tmp}/none.jsonl}}]"),
         ("no such file:", "none.jsonl")),
    Case("data-unsupported-suffix", "a .csv file", data_file("a,b\n", "sft", "d.csv"),
         ("d.csv: unsupported file type '.csv' (use .jsonl, .json or .parquet)",)),
    Case("data-json-not-list", ".json holding an object without the split",
         data_file('{"rows": []}', "sft", "d.json"), ("d.json: no list of rows for split 'train'",)),
    Case("data-all-rows-bad-skipped", "every row bad with skip_bad_rows",
         data_file(rows({"x": 1}, {"y": 2}), "sft", "d.jsonl", "data.sft.skip_bad_rows=true"),
         ("no valid training rows in", "(2 bad rows skipped)")),
    # models
    Case("model-missing-dir", "model directory that does not exist",
         lambda tmp, tiny: run_args(tmp, tiny, f"model.name_or_path={tmp}/no-model"),
         ("model directory not found:", "no-model")),
    Case("model-bad-hub-id", "model id with a space", overrides("model.name_or_path=org/my model"),
         ("neither a local directory nor a valid hub id", "'my model'")),
    Case("model-dense", "a dense Llama", model_dir(_dense),
         ("architecture 'llama' is not a Mixtral", "model.allow_dense: true")),
    Case("model-no-chat-template", "tokenizer without a template, chat_template: keep",
         lambda tmp, tiny: model_dir(_no_template)(tmp, tiny) + ["model.chat_template=keep"],
         ("model.chat_template is 'keep' but the tokenizer has no chat template", "auto or mixtral")),
    Case("model-vocab-mismatch", "model embedding smaller than the tokenizer", model_dir(_small_vocab),
         ("the tokenizer has 32000 tokens but the model's embedding has 1000 rows",)),
    Case("model-pickle-weights", "only pytorch_model.bin (pickle)", model_dir(_pickle_weights),
         ("pytorch_model.bin", "and no safetensors", "model.allow_pickle_weights: true")),
    Case("model-corrupt-config", "config.json not JSON",
         model_dir(lambda copy, tmp: (copy / "config.json").write_text("{nope")),
         ("model/config.json' is not a valid JSON file",)),
    Case("model-truncated-weights", "model.safetensors cut in half", model_dir(_truncate),
         ("cannot load the weights of", "incomplete metadata")),
    Case("model-missing-adapter", "adapter_path that holds no adapter",
         lambda tmp, tiny: run_args(tmp, tiny, f"model.adapter_path={tmp}", stage="dpo"),
         ("no LoRA adapter at", "adapter_model.safetensors")),
]  # fmt: skip


def finished_outputs(out: Path) -> list[str]:
    """Anything under OUTPUT_DIR that looks like a finished (or half-renamed) result."""
    names = ["sft", "dpo", "summary.json", ".sft.tmp", ".dpo.tmp", "final"]
    return [n for n in names if (out / n).exists()]


def error_of(case: Case, tmp: Path, tiny: Path, capsys, debug: bool = False) -> tuple[str, str]:
    argv = case.make(tmp, tiny)
    code = main(["--debug", *argv] if debug else argv)
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    return [line for line in err.splitlines() if line.startswith("align: error:")], err


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_line_exit_2_and_no_output(case, tmp_path, tiny_dir, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    lines, err = error_of(case, tmp_path, tiny_dir, capsys)
    assert len(lines) == 1 and err.rstrip().endswith(lines[0]), err[-2000:]  # one line, and the last
    assert "Traceback" not in err
    for part in case.expect:
        assert part in lines[0], lines[0]
    assert len(lines[0]) < 1000  # a 10 MB row is not echoed back
    assert finished_outputs(tmp_path / "out") == []


@pytest.mark.parametrize("case_id", ["recipe-negative-lr", "data-malformed-json", "model-dense"])
def test_debug_shows_the_traceback(case_id, tmp_path, tiny_dir, capsys, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    case = next(c for c in CASES if c.id == case_id)
    lines, err = error_of(case, tmp_path, tiny_dir, capsys, debug=True)
    assert "Traceback (most recent call last)" in err and len(lines) == 1


def test_the_catalog_is_documented(repo_root):
    doc = (repo_root / "docs" / "reliability.md").read_text()
    missing = [c.id for c in CASES if f"`{c.id}`" not in doc]
    assert missing == [] and len(CASES) >= 30


def test_accepted_inputs_a_bom_and_a_system_turn_for_a_template_without_one(tmp_path, tokenizer):
    """Inputs that are not errors: a UTF-8 BOM is dropped; a system turn is merged into the first user turn."""
    from align.chat import template_allows_system
    from align.data import DataSource, StageData, load_stage

    path = tmp_path / "bom.jsonl"
    row = conv(("system", "Be brief."), ("user", "hi"), ("assistant", "hello"))
    path.write_bytes(b"\xef\xbb\xbf" + rows(row).encode())
    said: list[str] = []
    data = load_stage(StageData(train=[DataSource(path=str(path))]), "sft", seed=0,
                      allow_system=template_allows_system(tokenizer), log=said.append)  # fmt: skip
    assert data.train[0]["messages"][0] == {"role": "user", "content": "Be brief.\n\nhi"}
    assert any("1 system turns merged" in line for line in said)


if __name__ == "__main__":  # print the docs table from real runs: python -m tests.test_bad_inputs
    import contextlib
    import io
    import tempfile

    from align.tiny import build_tiny_mixtral

    with tempfile.TemporaryDirectory() as root:
        tiny = build_tiny_mixtral(Path(root) / "tiny")
        print("| case | input | message |\n|---|---|---|")
        for case in CASES:
            tmp = Path(tempfile.mkdtemp(dir=root))
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                main(case.make(tmp, tiny))
            line = next(x for x in err.getvalue().splitlines() if x.startswith("align: error:"))
            shown = line.removeprefix("align: error: ").replace(str(tmp), "TMP").replace(str(tiny), "TINY")
            print(f"| `{case.id}` | {case.input} | {shown[:300].replace('|', '/')} |")
