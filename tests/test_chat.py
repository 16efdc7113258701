"""The Mixtral-Instruct template: token-exact with Mistral's reference encoder, and the assistant mask."""

from __future__ import annotations

import json

import pytest
from mistral_common.protocol.instruct.messages import AssistantMessage, UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

from align.chat import (
    MIXTRAL_CHAT_TEMPLATE,
    assistant_mask,
    ensure_chat_template,
    has_generation_markers,
    render,
    template_allows_system,
)
from align.errors import ModelError


@pytest.fixture(scope="module")
def reference():
    """Mistral's reference encoders (tokenizer v1): fine-tuning mode, and test mode for prompts."""
    from importlib import resources

    from mistral_common.protocol.instruct.validator import ValidationMode

    model_file = resources.files("mistral_common") / "data" / "tokenizer.model.v1"
    with resources.as_file(model_file) as path:
        return {
            "assistant": MistralTokenizer.from_file(path, mode=ValidationMode.finetuning),
            "user": MistralTokenizer.from_file(path, mode=ValidationMode.test),
        }


def reference_ids(reference, messages: list[dict]) -> list[int]:
    """Mistral's own encoding of a conversation: a training example (ends with eos) or a prompt."""
    kinds = {"user": UserMessage, "assistant": AssistantMessage}
    request = ChatCompletionRequest(messages=[kinds[m["role"]](content=m["content"]) for m in messages])
    return reference[messages[-1]["role"]].encode_chat_completion(request).tokens


def conversations(repo_root, limit=120):
    rows = [json.loads(line) for line in (repo_root / "data/sft/train.jsonl").read_text().splitlines()]
    return [r["messages"] for r in rows if all(m["role"] != "system" for m in r["messages"])][:limit]


def test_template_matches_mistral_reference_tokens(tokenizer, reference, repo_root):
    convs = conversations(repo_root)
    assert any(len(c) > 2 for c in convs), "need multi-turn rows"
    for messages in convs:
        ours, _ = assistant_mask(tokenizer, messages)
        assert ours == reference_ids(reference, messages), render(tokenizer, messages)
        prompt = messages[:-1]
        ours_prompt = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_dict=True)["input_ids"]
        assert list(ours_prompt) == reference_ids(reference, prompt)


def test_render_text_and_generation_prompt_is_prefix(tokenizer):
    messages = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "answer"}]
    assert render(tokenizer, messages) == "<s> [INST] hello [/INST] answer</s>"
    full, _ = assistant_mask(tokenizer, messages)
    prompt = tokenizer.apply_chat_template(messages[:1], add_generation_prompt=True, return_dict=True)["input_ids"]
    assert full[: len(prompt)] == list(prompt)  # DPO's prompt/completion split relies on this


def test_assistant_mask_covers_answers_and_eos_only(tokenizer):
    messages = [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "It is 4."},
        {"role": "user", "content": "Double it."},
        {"role": "assistant", "content": "8."},
    ]
    ids, mask = assistant_mask(tokenizer, messages)
    trained = [i for i, m in zip(ids, mask, strict=True) if m]
    assert tokenizer.decode(trained) == "It is 4.</s> 8.</s>"
    assert trained.count(tokenizer.eos_token_id) == 2
    assert mask[0] == 0 and sum(mask) == len(trained)


def test_system_role_and_alternation_are_refused(tokenizer):
    assert not template_allows_system(tokenizer)
    with pytest.raises(Exception, match="alternate"):
        render(tokenizer, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


def test_ensure_chat_template_modes(tokenizer):
    tok = tokenizer
    saved = tok.chat_template
    try:
        tok.chat_template = "{{ messages }}"
        assert ensure_chat_template(tok, "auto") == "mixtral"  # no generation markers: replaced
        assert tok.chat_template == MIXTRAL_CHAT_TEMPLATE and has_generation_markers(tok.chat_template)
        tok.chat_template = "{% generation %}x{% endgeneration %}"
        assert ensure_chat_template(tok, "auto") == "tokenizer"
        tok.chat_template = None
        with pytest.raises(ModelError, match="no chat template"):
            ensure_chat_template(tok, "keep")
    finally:
        tok.chat_template = saved
