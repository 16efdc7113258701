"""`align chat DIR [--prompt TEXT]`: talk to a run's result through its chat template, streaming the answer.

DIR is a merged checkpoint (config.json + weights), an adapter dir (the base comes from its recipe.yaml,
or --base), or a run's output dir (its last finished stage). An adapter trained on a 4-bit base is
served on the 16-bit base here, the usual QLoRA deployment; `align export --merge` keeps the 4-bit base.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TextStreamer

from align.errors import ModelError

log = logging.getLogger("align")

HELP = "type a message; /reset starts a new conversation, /exit (or Ctrl-D) leaves"


def _base_of(adapter_dir: Path, base: str | None) -> tuple[str, bool]:
    """(base model, trust_remote_code) for an adapter dir: --base, its recipe.yaml, or adapter_config.json."""
    recipe_file = adapter_dir / "recipe.yaml"
    if recipe_file.is_file():
        from align.config import load_recipe

        recipe = load_recipe(recipe_file)
        return base or recipe.model.name_or_path, recipe.model.trust_remote_code
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    name = base or config.get("base_model_name_or_path")
    if not name:
        raise ModelError(f"{adapter_dir}: no recipe.yaml and no base_model_name_or_path; pass --base")
    return name, False


def load_chat_model(path: str | Path, base: str | None = None):
    """(model in eval mode, tokenizer) for a merged dir, an adapter dir or a run dir."""
    from align.runtime import resolve_runtime

    path = Path(path)
    runtime = resolve_runtime("auto")
    kwargs = {"dtype": runtime.dtype, "use_safetensors": True}
    if not (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        from align.export import read_run

        path = read_run(path).stage_dir  # a run's output dir: its last finished stage
    tokenizer = AutoTokenizer.from_pretrained(path)
    if (path / "adapter_config.json").is_file():
        from peft import PeftModel

        from align.moe.adapters import is_routed_adapter, load_routed

        name, trust = _base_of(path, base)
        try:
            model = AutoModelForCausalLM.from_pretrained(name, trust_remote_code=trust, **kwargs)
        except OSError as err:
            raise ModelError(f"cannot load the base model {name} of {path} (pass --base DIR): {err}") from None
        if is_routed_adapter(path):  # align's routed expert layer: same logits, less work per token
            model = load_routed(model, path, is_trainable=False)
        else:
            model = PeftModel.from_pretrained(model, str(path))
    else:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    model.config.use_cache = True
    return model.to(runtime.device).eval(), tokenizer


@torch.no_grad()
def reply(model, tokenizer, messages: list[dict], max_new_tokens: int, stream: bool = True) -> str:
    """Render `messages` with the chat template, generate greedily, stream the text; return the answer."""
    from align.export.run import turn_end_ids

    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    ).to(model.device)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True) if stream else None
    out = model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=turn_end_ids(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        streamer=streamer,
    )
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def chat_loop(model, tokenizer, max_new_tokens: int, read: Callable[[str], str] = input) -> int:
    """The interactive prompt: each turn keeps the conversation so far; returns the number of answers."""
    print(HELP, file=sys.stderr)
    messages: list[dict] = []
    answers = 0
    while True:
        try:
            line = read("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return answers
        if line in ("/exit", "/quit"):
            return answers
        if line == "/reset":
            messages = []
            continue
        if not line:
            continue
        messages.append({"role": "user", "content": line})
        print("assistant> ", end="", flush=True)
        text = reply(model, tokenizer, messages, max_new_tokens)
        messages.append({"role": "assistant", "content": text})
        answers += 1


def chat_command(path: str, prompt: str | None, max_new_tokens: int, base: str | None = None) -> int:
    """`align chat`: one answer to --prompt (scripts), or the interactive prompt."""
    model, tokenizer = load_chat_model(path, base)
    if prompt is not None:
        reply(model, tokenizer, [{"role": "user", "content": prompt}], max_new_tokens)
        return 0
    chat_loop(model, tokenizer, max_new_tokens)
    return 0
