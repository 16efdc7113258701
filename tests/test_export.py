"""align export / chat: the tiny run's result as a stock checkpoint, loaded without align in a fresh process."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from align.card import front_matter
from align.cli import main
from align.export import export_run
from align.export.adapter import read_adapter
from align.export.merge import merge_checkpoint

PROMPT = "What is 2 + 3?"
# Runs in a fresh interpreter with align made unimportable: only transformers + safetensors.
STOCK_SCRIPT = r"""
import json, sys
class NoAlign:
    def find_spec(self, name, path=None, target=None):
        if name == "align" or name.startswith("align."):
            raise ImportError("align must not be needed to load an exported checkpoint")
sys.meta_path.insert(0, NoAlign())
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer
final, prompt, out = sys.argv[1:4]
tok = AutoTokenizer.from_pretrained(final)
model = AutoModelForCausalLM.from_pretrained(final).eval()
inputs = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                 return_tensors="pt", return_dict=True)
with torch.no_grad():
    logits = model(**inputs).logits
    gen = model.generate(**inputs, max_new_tokens=8)
new = gen[0, inputs["input_ids"].shape[1]:]
save_file({"logits": logits.contiguous(), "input_ids": inputs["input_ids"].contiguous()}, out + ".safetensors")
json.dump({"new_ids": new.tolist(), "text": tok.decode(new, skip_special_tokens=True),
           "eos": model.generation_config.eos_token_id, "pad": model.generation_config.pad_token_id,
           "type": type(model).__name__, "align_loaded": "align" in sys.modules}, open(out + ".json", "w"))
"""


@pytest.fixture(scope="module")
def stock(tiny_run, tmp_path_factory):
    """Logits and a greedy generation of OUTPUT_DIR/final computed by stock transformers in a fresh process."""
    out = str(tmp_path_factory.mktemp("stock") / "result")
    proc = subprocess.run(
        [sys.executable, "-c", STOCK_SCRIPT, str(tiny_run / "final"), PROMPT, out],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path_factory.getbasetemp(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return load_file(out + ".safetensors"), json.loads(open(out + ".json").read())


def adapter_logits(base_dir, adapter_dir, input_ids):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(adapter_dir)).eval()
    with torch.no_grad():
        return model(input_ids=input_ids).logits


def test_merged_checkpoint_is_stock_mixtral_and_equals_the_adapter(tiny_run, tiny_dir, stock):
    tensors, result = stock
    assert result["type"] == "MixtralForCausalLM" and not result["align_loaded"]
    final = tiny_run / "final"
    index = json.loads((final / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert "model.layers.0.block_sparse_moe.experts.7.w3.weight" in index["weight_map"]  # stock on-disk names
    assert set(index["weight_map"]) == set(load_file(tiny_dir / "model.safetensors"))
    for shard in set(index["weight_map"].values()):  # at most 8 MB each, unless one tensor alone is larger
        names = [k for k, v in index["weight_map"].items() if v == shard]
        assert len(names) == 1 or (final / shard).stat().st_size < 8_000_000 + 10_000, shard
    want = adapter_logits(tiny_dir, tiny_run / "dpo", tensors["input_ids"])
    base = adapter_logits(tiny_dir, tiny_run / "sft", tensors["input_ids"])  # a different adapter: must differ
    assert torch.allclose(tensors["logits"], want, atol=1e-4), (tensors["logits"] - want).abs().max()
    assert (want - base).abs().max() > 1e-3


def test_generation_config_stops_on_the_template_turn_end(tiny_run, stock):
    from transformers import AutoTokenizer

    _, result = stock
    tok = AutoTokenizer.from_pretrained(tiny_run / "final")
    text = tok.apply_chat_template(
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], tokenize=False
    )
    assert text.endswith(tok.eos_token) and result["eos"] == tok.eos_token_id == 2
    assert result["pad"] == tok.pad_token_id == 0
    assert "{% generation %}" in (tiny_run / "final" / "chat_template.jinja").read_text()


def test_cards_have_hub_metadata_metrics_recipe_and_routing(tiny_run):
    for folder, library in ((tiny_run / "final", "transformers"), (tiny_run / "dpo", "peft")):
        text = (folder / "README.md").read_text()
        meta = front_matter(text)
        assert meta["library_name"] == library and meta["pipeline_tag"] == "text-generation"
        assert {"align", "mixtral", "sft", "dpo"} <= set(meta["tags"])
        assert "base_model" not in meta  # a local path is not a hub id (the hub rejects it)
        assert "| dpo | held-out reward accuracy | 0.5 |" in text and "| sft | held-out loss |" in text
        assert "| sft | `data/sft/train.jsonl` | 400 | `data/sft/eval.jsonl` | 8 | 2 |" in text
        assert "![routing profile" in text and (folder / "routing.png").read_bytes()[:4] == b"\x89PNG"
        recipe = yaml.safe_load(text.split("```yaml\n")[1].split("```")[0])
        assert recipe["dpo"]["beta"] == 0.1 and recipe["output_dir"] == str(tiny_run)
    sft_card = (tiny_run / "sft" / "README.md").read_text()
    assert "| sft |" in sft_card and "| dpo |" not in sft_card


def test_card_shows_the_redacted_recipe_and_the_base_license(tiny_run, tmp_path):
    from align.card import CardInput, render_card
    from align.config import load_recipe
    from align.config.redact import recipe_dict

    recipe = load_recipe(tiny_run / "dpo" / "recipe.yaml")
    base = tmp_path / "base"
    base.mkdir()
    (base / "README.md").write_text("---\nlicense: apache-2.0\n---\n# base\n")
    evals = {"dpo": json.loads((tiny_run / "dpo" / "eval.json").read_text())}
    text = render_card(CardInput("adapter", recipe, evals, "mixtral", base_dir=base), "x")
    assert yaml.safe_load(text.split("```yaml\n")[1].split("```")[0]) == recipe_dict(recipe)  # redacted by key
    assert front_matter(text)["license"] == "apache-2.0"


@pytest.mark.parametrize("variant", ["router_lora_rslora", "router_full"])
def test_streaming_merge_equals_peft_merge_and_unload(tiny_dir, tmp_path, variant):
    """align's merge of stock PEFT adapters (fused experts, router LoRA / full router, rsLoRA, alpha_pattern)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    if variant == "router_lora_rslora":
        config = LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=["q_proj", "v_proj"],
            target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj", "mlp.gate.weight"],
            use_rslora=True,
            alpha_pattern={"v_proj": 2},
        )
    else:
        config = LoraConfig(r=4, lora_alpha=8, target_modules=["o_proj"], modules_to_save=["gate"])
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_dir), config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                param.add_(torch.randn_like(param) * 0.05)
    model.save_pretrained(tmp_path / "adapter")
    want = model.merge_and_unload().state_dict()
    cfg = AutoConfig.from_pretrained(tiny_dir)
    updates = read_adapter(tmp_path / "adapter", cfg.hidden_size, cfg.intermediate_size, cfg.num_local_experts)
    (tmp_path / "merged").mkdir()
    stats = merge_checkpoint(tiny_dir, updates, tmp_path / "merged", cfg.intermediate_size, 10**9)
    shutil.copyfile(tiny_dir / "config.json", tmp_path / "merged" / "config.json")
    got = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").state_dict()
    assert stats.merged + stats.replaced > 0
    for name, tensor in want.items():
        assert torch.allclose(got[name], tensor, atol=1e-6), name


def test_4bit_trained_adapter_merges_into_the_dequantized_base(tiny_run, tmp_path, caplog):
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM

    from align.config import load_recipe
    from align.model import load_model
    from align.moe.adapters import load_routed
    from align.runtime import Runtime

    run = tmp_path / "run"
    shutil.copytree(tiny_run / "dpo", run / "dpo")
    recipe_file = run / "dpo" / "recipe.yaml"
    recipe_file.write_text(recipe_file.read_text().replace("load_in_4bit: false", "load_in_4bit: true"))
    align_log = logging.getLogger("align")  # align's logger does not propagate to the root (caplog's) handler
    align_log.addHandler(caplog.handler)
    try:
        with caplog.at_level("INFO", logger="align"):
            out = export_run(run, tmp_path / "final4")
    finally:
        align_log.removeHandler(caplog.handler)
    assert "DEQUANTIZED 4-bit weights" in caplog.text
    assert "merged into the dequantized 4-bit weights" in (out / "README.md").read_text()
    recipe = load_recipe(recipe_file)
    trained = load_routed(
        load_model(recipe.model, recipe.quantization, Runtime("cpu", torch.float32)), run / "dpo", is_trainable=False
    )
    ids = torch.tensor([[1, 733, 16289, 28793, 1824, 349, 28705, 28750, 648, 28705, 28770, 28804, 733, 28748]])
    with torch.no_grad():
        want = trained(input_ids=ids).logits
        got = AutoModelForCausalLM.from_pretrained(out)(input_ids=ids).logits
        full = AutoModelForCausalLM.from_pretrained(tiny_run / "final")(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    assert (full - want).abs().max() > 1e-2  # merging into the 16-bit base would not be what was trained


def test_a_failed_export_leaves_nothing_that_looks_complete(tiny_run, tmp_path, monkeypatch):
    import align.export.run as run_module

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(run_module, "write_model_files", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        export_run(tiny_run, tmp_path / "final")
    assert list(tmp_path.iterdir()) == []  # neither final/ nor a temp dir
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "keep.txt").write_text("previous export")
    with pytest.raises(RuntimeError, match="disk full"):
        export_run(tiny_run, tmp_path / "final", force=True)
    assert [p.name for p in tmp_path.iterdir()] == ["final"]
    assert (tmp_path / "final" / "keep.txt").read_text() == "previous export"


def test_export_command_adapter_only_and_user_errors(tiny_run, tmp_path, capsys):
    assert main(["export", str(tiny_run), "--out", str(tmp_path / "adapter")]) == 0
    names = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert "mixtral" in front_matter((tmp_path / "adapter" / "README.md").read_text())["tags"]
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "tokenizer.json"} <= names
    assert not any(n.startswith("model") for n in names)
    assert main(["export", str(tiny_run), "--out", str(tmp_path / "adapter")]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nothing-here"), "--merge"]) == 2
    assert "no finished stage" in capsys.readouterr().err


def test_chat_prompt_streams_the_same_answer_from_merged_and_adapter_dirs(tiny_run, stock, capsys):
    _, result = stock
    answers = []
    for folder in (tiny_run / "final", tiny_run / "dpo", tiny_run):  # merged, adapter, run dir (last stage)
        assert main(["chat", str(folder), "--prompt", PROMPT, "--max-new-tokens", "8"]) == 0
        answers.append(capsys.readouterr().out.strip())
    assert answers[0] == answers[1] == answers[2] == result["text"].strip()
    assert answers[0]  # the random tiny model still says something


def test_chat_interactive_keeps_the_conversation_and_resets(tiny_run, monkeypatch, capsys):
    import align.chat_cli as chat_cli

    model, tokenizer = chat_cli.load_chat_model(tiny_run / "final")
    seen = []
    original = chat_cli.reply

    def spy(model, tokenizer, messages, max_new_tokens, stream=True):
        seen.append([m["role"] for m in messages])
        return original(model, tokenizer, messages, max_new_tokens, stream)

    monkeypatch.setattr(chat_cli, "reply", spy)
    lines = iter(["hello", "", "tell me more", "/reset", "again", "/exit", "never read"])
    assert chat_cli.chat_loop(model, tokenizer, 4, read=lambda _prompt: next(lines)) == 3
    assert seen == [["user"], ["user", "assistant", "user"], ["user"]]
    assert capsys.readouterr().out.count("assistant> ") == 3
