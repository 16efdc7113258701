"""ChatML templates (SmolLM2, many Llama fine-tunes) with `{% generation %}` markers added.

TRL's assistant-only loss needs the template to mark assistant tokens. A stock ChatML template renders
every turn with one expression; this rewrites only that expression so that assistant content and its
`<|im_end|>` are marked. The rendered text is unchanged (tested), so the model sees what it was
trained on.
"""

from __future__ import annotations

# The per-message expression of the common ChatML templates (SmolLM2-Instruct, Qwen-style).
CHATML_TURN = "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
MARKED_TURN = (
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\\n' }}"
    "{% else %}" + CHATML_TURN + "{% endif %}"
)
# SmolLM2-135M-Instruct's template as its GGUF ships it (a default system turn, no markers): tests use it.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def with_generation_markers(template: str | None) -> str | None:
    """The template with assistant turns marked, or None when it already has markers or is not ChatML."""
    if not template or "{% generation %}" in template:
        return None
    # Templates write the newline either as the escape `\n` or as a literal newline inside the string.
    for newline in ("\\n", "\n"):
        turn, marked = CHATML_TURN.replace("\\n", newline), MARKED_TURN.replace("\\n", newline)
        if template.count(turn) == 1:
            return template.replace(turn, marked)
    return None
