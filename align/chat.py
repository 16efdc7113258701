"""The Mixtral-Instruct chat template, with `{% generation %}` markers for assistant-only loss.

Rendered text, for the real Mixtral tokenizer, tokenizes to exactly the ids that Mistral's reference
encoder (`mistral-common`, tokenizer v1) produces for the same conversation (tested):

    <s> [INST] user [/INST] answer</s> [INST] user 2 [/INST] answer 2</s>

The template has no system role (Mixtral-Instruct has none): the data layer merges a system turn into
the first user turn before rendering, and says so.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from align.errors import ModelError

MIXTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{{ raise_exception('The Mixtral-Instruct template has no system role; merge it into the first user turn.') }}"
    "{% endif %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if message['role'] == 'user' %}"
    "{{ ' [INST] ' + message['content'] | trim + ' [/INST]' }}"
    "{% else %}"
    "{% generation %}{{ ' ' + message['content'] | trim + eos_token }}{% endgeneration %}"
    "{% endif %}"
    "{% endfor %}"
)


def has_generation_markers(template: str | None) -> bool:
    """Whether a template marks assistant turns, which TRL's `assistant_only_loss` needs."""
    return bool(template) and "{% generation %}" in template


def template_allows_system(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer's template renders a system turn (probed by rendering one)."""
    probe = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    try:
        text = tokenizer.apply_chat_template(probe, tokenize=False)
    except Exception:  # jinja raise_exception or any template error: no system role
        return False
    return "S" in text


def ensure_chat_template(tokenizer: PreTrainedTokenizerBase, mode: str = "auto") -> str:
    """Install the chat template the recipe asks for; return which one is used.

    mode: "auto" keeps a template that has generation markers and otherwise installs the Mixtral
    one; "mixtral" always installs it; "keep" keeps the tokenizer's template, which must exist.
    """
    current = tokenizer.chat_template
    if mode == "keep":
        if not current:
            raise ModelError(
                "model.chat_template is 'keep' but the tokenizer has no chat template; set model.chat_template: "
                "auto or mixtral to install the Mixtral-Instruct one"
            )
        return "tokenizer"
    if mode == "auto" and has_generation_markers(current):
        return "tokenizer"
    tokenizer.chat_template = MIXTRAL_CHAT_TEMPLATE
    return "mixtral"


def render(tokenizer: PreTrainedTokenizerBase, messages: list[dict], generation_prompt: bool = False) -> str:
    """Render a conversation as text with the tokenizer's template."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def assistant_mask(tokenizer: PreTrainedTokenizerBase, messages: list[dict]) -> tuple[list[int], list[int]]:
    """Token ids of a conversation and a 0/1 mask that is 1 on assistant tokens (the trained ones)."""
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    return list(out["input_ids"]), list(out["assistant_masks"])
