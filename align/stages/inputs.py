"""Input checks that need the tokenizer or the model, run before any training step.

- `prompt_fits`: a row whose prompt alone fills `max_length` tokens is truncated to nothing trainable (SFT:
  no assistant token survives, so the batch loss can be NaN; DPO with truncation keep_start: chosen and
  rejected both vanish and the pair trains on nothing). Such a row is a bad row: an error naming the file
  and row, or skipped and counted with `skip_bad_rows`.
- `check_vocab`: a tokenizer with more tokens than the model's embedding rows makes ids the model cannot
  look up (an index error deep in the first forward).
"""

from __future__ import annotations

from functools import lru_cache

from align.data.schemas import RowError
from align.errors import ModelError

# A rendered prompt is at most its content bytes plus this much markup per turn and per conversation;
# a row under that bound cannot reach max_length (a token covers at least one byte), so it is not tokenized.
MARKUP_PER_TURN = 64
MARKUP_FIXED = 256


def _prompt_of(record: dict) -> list[dict]:
    if "messages" in record:
        turns = record["messages"]
        first_answer = next((i for i, t in enumerate(turns) if t["role"] == "assistant"), len(turns))
        return turns[:first_answer]
    return record["prompt"]


@lru_cache(maxsize=4)  # one scan of the vocabulary per tokenizer
def longest_token_bytes(tokenizer) -> int:
    """UTF-8 length of the longest vocabulary piece (an upper bound on the bytes one token covers)."""
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return max(len(str(p).encode("utf-8")) for p in pieces if p is not None)


def _too_long(stage: str, max_length: int, count: str) -> RowError:
    fix = (
        f"raise {stage}.max_length"
        + (f", set {stage}.truncation_mode: keep_end" if stage == "dpo" else "")
        + f", shorten the row, or skip such rows with data.{stage}.skip_bad_rows: true"
    )
    return RowError(
        f"the prompt is {count} tokens, at least {stage}.max_length ({max_length}): truncation leaves no "
        f"answer token to train on; {fix}"
    )


def prompt_fits(tokenizer, max_length: int | None, stage: str, truncation_mode: str = "keep_start"):
    """A row check (raises RowError) for prompts of at least `max_length` tokens; None when nothing to check.

    Only rows near the limit are tokenized: below `max_length` bytes (plus markup) a prompt cannot reach it,
    and above `max_length` x the longest piece's bytes it cannot stay under it (a 10 MB row costs nothing).
    """
    if max_length is None or truncation_mode == "keep_end":  # keep_end cuts the prompt's start instead
        return None
    longest = longest_token_bytes(tokenizer)

    def check(record: dict) -> None:
        prompt = _prompt_of(record)
        size = sum(len(t["content"].encode("utf-8")) for t in prompt)
        if size + MARKUP_PER_TURN * len(prompt) + MARKUP_FIXED < max_length:
            return
        if size // longest >= max_length:
            raise _too_long(stage, max_length, f"over {size // longest}")
        try:
            ids = tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True, return_dict=True)
        except Exception as err:  # jinja raise_exception or any template error on this row's turns
            raise RowError(f"the chat template cannot render the prompt: {str(err)[:200]}") from None
        if len(ids["input_ids"]) >= max_length:
            raise _too_long(stage, max_length, str(len(ids["input_ids"])))

    return check


def check_vocab(tokenizer, model, where: str) -> None:
    """ModelError when the tokenizer can produce ids the model's embedding has no row for."""
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise ModelError(
            f"{where}: the tokenizer has {len(tokenizer)} tokens but the model's embedding has {rows} rows "
            "(ids past the end would crash the first forward); use the tokenizer that belongs to the model"
        )
