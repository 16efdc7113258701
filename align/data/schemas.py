"""Row shapes (messages, alpaca, sharegpt, preference) and their conversion to checked chat turns.

Pure functions, no I/O. A bad row raises `RowError`; the loader adds the file and row number and turns
it into `align.errors.DataError`.
"""

from typing import Any, Literal

RowFormat = Literal["messages", "alpaca", "sharegpt", "preference"]
Role = Literal["user", "assistant"]

ROLES = ("system", "user", "assistant")
SHAPES: dict[str, str] = {
    "messages": "a 'messages' list of {role, content}",
    "alpaca": "'instruction' + 'output' (optional 'input', 'system')",
    "sharegpt": "a 'conversations' list of {from, value}",
    "preference": "'chosen' + 'rejected' (optional 'prompt')",
}
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "system": "system",
}


class RowError(ValueError):
    """One row is invalid; the message says why (the caller adds file and row number)."""


def _type(value: Any) -> str:
    """Names a JSON value's type the way a user thinks of it, for error messages."""
    names = {str: "string", dict: "object", list: "list", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def describe_keys(row: dict) -> str:
    """Lists a row's keys (capped), so a shape error shows what the row actually has."""
    keys = sorted(str(k)[:40] for k in row)
    more = f" and {len(keys) - 12} more" if len(keys) > 12 else ""
    return "[" + ", ".join(repr(k) for k in keys[:12]) + "]" + more


def has_shape(row: dict, fmt: RowFormat) -> bool:
    """Whether a row has the keys that define `fmt` (it may have others too)."""
    required = {
        "preference": ("chosen", "rejected"),
        "messages": ("messages",),
        "alpaca": ("instruction", "output"),
        "sharegpt": ("conversations",),
    }[fmt]
    return all(key in row for key in required)


def detect_format(row: dict) -> RowFormat:
    """Names a row's shape from its keys; preference wins because such rows often carry `messages` too."""
    for fmt in ("preference", "messages", "alpaca", "sharegpt"):
        if has_shape(row, fmt):
            return fmt
    accepted = "; ".join(f"{name}: {desc}" for name, desc in SHAPES.items())
    raise RowError(f"unrecognised row shape with keys {describe_keys(row)}; accepted shapes are {accepted}")


def _text(row: dict, key: str, *, optional: bool = False) -> str:
    """Reads a string field; a missing/null optional field is ''; any other type is an error."""
    value = row.get(key)
    if value is None:
        if optional:
            return ""
        raise RowError(f"missing field {key!r}")
    if not isinstance(value, str):
        raise RowError(f"field {key!r} must be a string, got {_type(value)}")
    return value


def _alpaca(row: dict) -> list[dict]:
    """Alpaca -> [system?, user, assistant]; a non-empty `input` follows the instruction."""
    instruction, extra = _text(row, "instruction"), _text(row, "input", optional=True)
    if not instruction.strip():
        raise RowError("field 'instruction' is empty")
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    system = _text(row, "system", optional=True)
    turns = [{"role": "system", "content": system}] if system.strip() else []
    return [*turns, {"role": "user", "content": user}, {"role": "assistant", "content": _text(row, "output")}]


def _turn_list(row: dict, key: str) -> list[dict]:
    """Reads a list-of-objects field, naming the first turn that is not an object."""
    turns = row.get(key)
    if not isinstance(turns, list):
        raise RowError(f"field {key!r} must be a list of turns, got {_type(turns)}")
    for i, turn in enumerate(turns, start=1):
        if not isinstance(turn, dict):
            raise RowError(f"turn {i}: expected an object, got {_type(turn)}")
    return turns


def _sharegpt(row: dict) -> list[dict]:
    """ShareGPT {from, value} turns -> {role, content}; an optional top-level `system` goes first."""
    out = []
    system = _text(row, "system", optional=True)
    if system.strip():
        out.append({"role": "system", "content": system})
    for i, turn in enumerate(_turn_list(row, "conversations"), start=1):
        speaker = turn.get("from", turn.get("role"))
        role = SHAREGPT_ROLES.get(speaker) if isinstance(speaker, str) else None
        if role is None:
            raise RowError(f"turn {i}: unknown speaker {speaker!r} (expected human, gpt, model or system)")
        out.append({"role": role, "content": turn.get("value", turn.get("content"))})
    return out


def to_messages(row: dict, fmt: RowFormat) -> list[dict]:
    """Converts an SFT row to [{role, content}] turns (not yet checked: see `check_conversation`)."""
    if fmt == "alpaca":
        return _alpaca(row)
    if fmt == "sharegpt":
        return _sharegpt(row)
    if fmt == "messages":
        return [{"role": t.get("role"), "content": t.get("content")} for t in _turn_list(row, "messages")]
    raise RowError(f"a {fmt!r} row cannot be an SFT conversation (expected messages, alpaca or sharegpt)")


def _check_turn(i: int, turn: Any) -> dict:
    """Checks one turn's role and content, keeping only those two keys."""
    if not isinstance(turn, dict):
        raise RowError(f"turn {i}: expected an object with 'role' and 'content', got {_type(turn)}")
    role, content = turn.get("role"), turn.get("content")
    if role not in ROLES:
        raise RowError(f"turn {i}: unknown role {role!r} (expected system, user or assistant)")
    if content is None:
        raise RowError(f"turn {i}: missing content")
    if not isinstance(content, str):
        raise RowError(f"turn {i}: content must be a string, got {_type(content)}")
    if not content.strip():
        raise RowError(f"turn {i}: empty content")
    return {"role": role, "content": content}


def check_conversation(messages: Any, *, allow_system: bool, end: Role = "assistant") -> tuple[list[dict], bool]:
    """Checks roles/contents/alternation; returns the clean turns and whether a system turn was merged.

    `end` is the role the last turn must have: "assistant" for SFT, "user" for a preference prompt.
    """
    if not isinstance(messages, list):
        raise RowError(f"conversation must be a list of turns, got {_type(messages)}")
    if not messages:
        raise RowError("conversation is empty")
    turns = [_check_turn(i, t) for i, t in enumerate(messages, start=1)]
    first = 1 if turns[0]["role"] == "system" else 0
    for i, turn in enumerate(turns[first:], start=first + 1):
        expected = "user" if (i - first) % 2 == 1 else "assistant"
        if turn["role"] == "system":
            raise RowError(f"turn {i}: a system turn is only allowed as the first turn")
        if turn["role"] != expected:
            raise RowError(
                f"turn {i}: expected role {expected!r}, got {turn['role']!r} "
                "(roles must alternate user/assistant, starting with user)"
            )
    if len(turns) == first:
        raise RowError("conversation has a system turn but no user turn")
    if turns[-1]["role"] != end:
        what = (
            "a prompt must end with a user turn"
            if end == "user"
            else "an SFT conversation must end with an assistant reply"
        )
        raise RowError(f"turn {len(turns)}: last turn is {turns[-1]['role']!r}; {what}")
    if first and not allow_system:
        system, user = turns[0], turns[1]
        return [{"role": "user", "content": f"{system['content']}\n\n{user['content']}"}, *turns[2:]], True
    return turns, False


def _prompt(row: dict) -> list[dict] | None:
    """The row's prompt as turns (a string is one user turn), unchecked; None when absent."""
    prompt = row.get("prompt")
    if prompt is None:
        return None
    if isinstance(prompt, str):
        if not prompt.strip():
            raise RowError("field 'prompt' is empty")
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list):
        return prompt
    raise RowError(f"field 'prompt' must be a string or a list of messages, got {_type(prompt)}")


def _same(a: list[dict], b: list[dict]) -> bool:
    """Turn lists equal by role and stripped content."""
    key = [(t["role"], t["content"].strip()) for t in a]
    return key == [(t["role"], t["content"].strip()) for t in b]


def _completion(row: dict, key: str, prompt: list[dict]) -> list[dict]:
    """`chosen`/`rejected` as exactly one assistant turn: a string, one turn, or prompt + one turn."""
    value = row.get(key)
    if value is None:
        raise RowError(f"missing field {key!r}")
    if isinstance(value, str):
        if not value.strip():
            raise RowError(f"field {key!r} is empty")
        value = [{"role": "assistant", "content": value}]
    if not isinstance(value, list):
        raise RowError(f"field {key!r} must be a string or a list of messages, got {_type(value)}")
    try:
        turns = [_check_turn(i, t) for i, t in enumerate(value, start=1)]
    except RowError as err:
        raise RowError(f"{key}: {err}") from None
    if len(turns) > len(prompt) and _same(turns[: len(prompt)], prompt):
        turns = turns[len(prompt) :]
    if len(turns) != 1 or turns[0]["role"] != "assistant":
        raise RowError(
            f"field {key!r} must be one assistant turn, or the full conversation starting with the prompt "
            "and ending with one assistant turn"
        )
    return turns


def _split_conversations(row: dict) -> tuple[list[dict], list[dict], list[dict]]:
    """Full-conversation rows: the shared prefix of chosen and rejected is the prompt."""
    parts = []
    for key in ("chosen", "rejected"):
        value = row.get(key)
        if isinstance(value, str):
            raise RowError(f"missing field 'prompt' ({key!r} is a string, so the prompt must be given)")
        try:
            parts.append(check_conversation(value, allow_system=True)[0])
        except RowError as err:
            raise RowError(f"{key}: {err}") from None
    chosen, rejected = parts
    for i, (a, b) in enumerate(zip(chosen[:-1], rejected[:-1], strict=False), start=1):
        if not _same([a], [b]):
            raise RowError(f"chosen and rejected differ at turn {i}, before their last assistant turn")
    if len(chosen) != len(rejected):
        raise RowError(
            f"chosen has {len(chosen)} turns and rejected {len(rejected)}; full conversations must share "
            "every turn but the last assistant reply"
        )
    return chosen[:-1], chosen[-1:], rejected[-1:]


def to_preference(row: dict, *, allow_system: bool = True) -> tuple[dict, bool]:
    """A preference row -> ({prompt, chosen, rejected} as turns, whether a system turn was merged)."""
    for key in ("chosen", "rejected"):
        if row.get(key) is None:
            raise RowError(f"missing field {key!r}")
    prompt = _prompt(row)
    if prompt is None:
        prompt, chosen, rejected = _split_conversations(row)
    else:
        try:
            prompt = check_conversation(prompt, allow_system=True, end="user")[0]
        except RowError as err:
            raise RowError(f"prompt: {err}") from None
        chosen, rejected = _completion(row, "chosen", prompt), _completion(row, "rejected", prompt)
    if chosen[0]["content"].strip() == rejected[0]["content"].strip():
        raise RowError("chosen and rejected are identical")
    prompt, merged = check_conversation(prompt, allow_system=allow_system, end="user")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}, merged
