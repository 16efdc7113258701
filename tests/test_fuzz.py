"""Fuzzing with hypothesis: the recipe loader and the data loaders on thousands of generated inputs.

The promise: a valid result or an AlignError (RecipeError / DataError), never another exception or a hang.
Inputs mix the real vocabulary (schema keys, TRL keys, row fields, roles) with arbitrary values and bytes,
so the generator reaches deep into validation instead of failing at the first unknown key.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from align.config import load_recipe
from align.data import DataSource, StageData, load_stage
from align.errors import AlignError

# ALIGN_FUZZ_SCALE=10 runs ten times the CI budget (what docs/reliability.md reports for a local deep run)
SCALE = int(os.environ.get("ALIGN_FUZZ_SCALE", "1"))
FUZZ = settings(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

RECIPE_KEYS = [
    "model", "lora", "data", "sft", "dpo", "stages", "output_dir", "seed", "resume", "quantization", "hub", "export",
    "name_or_path", "dtype", "trust_remote_code", "allow_dense", "chat_template", "adapter_path", "r", "alpha",
    "dropout", "experts", "top_p", "top_k_per_layer", "implementation", "router", "train", "eval", "path", "weight",
    "max_rows", "format", "eval_fraction", "skip_bad_rows", "learning_rate", "beta", "loss_type", "loss_weights",
    "max_length", "per_device_train_batch_size", "num_train_epochs", "max_steps", "save_strategy", "save_steps",
    "eval_samples", "on_nonfinite", "max_nonfinite_skips", "max_prompt_length", "hub_token", "fp16", "bf16",
    "packing", "padding_free", "warmup_steps", "lr_scheduler_type", "load_in_4bit", "repo_id", "push", "sft", "dpo",
]  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["sft", "dpo", "all", "none", "auto", "sigmoid", "steps", "no", "float32", "data/sft/train.jsonl"]),
    st.text(max_size=20),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(RECIPE_KEYS) | st.text(max_size=8), inner, max_size=5)
    ),  # fmt: skip
    max_leaves=25,
)


def base_recipe() -> dict:
    return {
        "model": {"name_or_path": "m"},
        "data": {"sft": {"train": [{"path": "a.jsonl"}]}, "dpo": {"train": [{"path": "b.jsonl"}]}},
    }


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@settings(FUZZ, max_examples=600 * SCALE)
@given(sections=st.dictionaries(st.sampled_from(RECIPE_KEYS), VALUES, max_size=6), keep_base=st.booleans())
def test_recipe_mappings(work, sections, keep_base):
    raw = {**base_recipe(), **sections} if keep_base else sections
    try:
        text = yaml.safe_dump(raw, allow_unicode=True)
    except yaml.YAMLError:
        return
    try:
        load_recipe(write(work / "r.yaml", text.encode("utf-8")))
        event("loaded")
    except AlignError:
        event("AlignError")


def _set(tree: dict, path: list[str], value) -> dict:
    node = tree
    for key in path[:-1]:
        child = node.get(key)
        node[key] = child = child if isinstance(child, dict) else {}
        node = child
    node[path[-1]] = value
    return tree


def _leaves(tree: dict, prefix: tuple = ()) -> list[tuple]:
    out = []
    for key, value in tree.items():
        out += _leaves(value, (*prefix, key)) if isinstance(value, dict) else [(*prefix, key)]
    return out


SHIPPED = yaml.safe_load((Path(__file__).parent.parent / "recipes/tiny-mixtral/pipeline.yaml").read_text())
EXTRA_PATHS = [
    ("sft", "save_steps"), ("dpo", "loss_weights"), ("resume",), ("sft", "on_nonfinite"), ("hub", "repo_id"),
    ("lora", "rank_by_load"), ("dpo", "label_smoothing"), ("sft", "max_steps"),
]  # fmt: skip
PATHS = st.sampled_from(_leaves(SHIPPED) + EXTRA_PATHS).map(list)
PLAUSIBLE = st.one_of(
    SCALARS,
    st.integers(min_value=-2, max_value=64),
    st.floats(min_value=-1, max_value=2),
    st.sampled_from([[], ["sft"], ["dpo"], ["sigmoid", "sft"], [0.5], {"top_p": 0.5}, {"top_k_per_layer": 1}]),
)


@settings(FUZZ, max_examples=600 * SCALE)
@given(changes=st.lists(st.tuples(PATHS, PLAUSIBLE), min_size=1, max_size=3))
def test_recipe_mutations(work, changes):
    """The shipped recipe with 1-3 of its keys set to generated values: reaches the deep checks (TRL types,
    ranges, cross-key rules) and often loads."""
    raw = json.loads(json.dumps(SHIPPED))
    for path, value in changes:
        _set(raw, path, value)
    try:
        text = yaml.safe_dump(raw, allow_unicode=True)
    except yaml.YAMLError:
        return
    try:
        load_recipe(write(work / "m.yaml", text.encode("utf-8")))
        event("loaded")
    except AlignError:
        event("AlignError")


@settings(FUZZ, max_examples=500 * SCALE)
@given(text=st.one_of(st.text(max_size=300), st.binary(max_size=300).map(lambda b: b.decode("latin-1"))))
def test_recipe_text(work, text):
    for data in (text.encode("utf-8", "surrogatepass"), b"\xef\xbb\xbf" + text.encode("utf-8", "surrogatepass")):
        try:
            load_recipe(write(work / "t.yaml", data))
        except AlignError:
            pass


@settings(FUZZ, max_examples=500 * SCALE)
@given(
    items=st.lists(
        st.tuples(
            st.lists(st.sampled_from(RECIPE_KEYS) | st.text(max_size=5), min_size=0, max_size=4).map(".".join),
            st.sampled_from(["=", "", "=="]),
            st.text(max_size=30) | SCALARS.map(json.dumps),
        ).map("".join),
        max_size=4,
    )
)
def test_overrides(work, items):
    path = work / "base.yaml"
    if not path.exists():
        path.write_text(yaml.safe_dump(base_recipe()))
    try:
        load_recipe(path, items)
        event("loaded")
    except AlignError:
        event("AlignError")


def test_deeply_nested_yaml_is_a_recipe_error(work):
    from align.errors import RecipeError

    with pytest.raises(RecipeError, match="nested too deeply"):
        load_recipe(write(work / "deep.yaml", b"model: " + b"[" * 20000 + b"]" * 20000))
    with pytest.raises(RecipeError, match="nested too deeply"):
        load_recipe(write(work / "ok.yaml", yaml.safe_dump(base_recipe()).encode()), ["seed=" + "[" * 20000])


ROW_KEYS = ["messages", "role", "content", "prompt", "chosen", "rejected", "instruction", "input", "output",
            "conversations", "from", "value", "system", "text"]  # fmt: skip
ROLES = ["user", "assistant", "system", "human", "gpt", "model", "tool", ""]
TEXT = st.text(max_size=40) | st.sampled_from(["", " ", "hi", "answer", "\u0000", "\ud7ff", "é" * 30])
TURN = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(ROLES) | TEXT,
        "from": st.sampled_from(ROLES),
        "content": TEXT | st.none() | st.integers(),
        "value": TEXT,
    },
)
TURNS = st.lists(TURN, max_size=5)
FIELD = st.one_of(TEXT, TURNS, st.none(), st.integers(), st.floats(), st.lists(TEXT, max_size=2))
WORDS = st.text(alphabet="abc xyzé?\n", min_size=1, max_size=30)


# mostly valid rows (an alternating conversation, a distinct pair), so the loaders get past the first check
def _conversation(pairs: list[tuple[str, str]]) -> dict:
    turns = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in pairs]
    return {"messages": [t for pair in turns for t in pair]}


GOOD_CONV = st.lists(st.tuples(WORDS, WORDS), min_size=1, max_size=3).map(_conversation)
GOOD_PAIR = st.tuples(WORDS, WORDS, WORDS).map(lambda t: {"prompt": t[0], "chosen": t[1], "rejected": t[2] + "!"})
ROW = st.one_of(
    GOOD_CONV,
    GOOD_PAIR,
    GOOD_CONV.map(lambda r: {**r, "system": "s"}),
    st.dictionaries(st.sampled_from(ROW_KEYS), FIELD, max_size=5),
    st.fixed_dictionaries({"messages": TURNS}),
    st.fixed_dictionaries({"prompt": TEXT | TURNS, "chosen": TEXT | TURNS, "rejected": TEXT | TURNS}),
    st.fixed_dictionaries({"instruction": TEXT, "output": TEXT}, optional={"input": FIELD, "system": FIELD}),
    st.fixed_dictionaries({"conversations": TURNS}, optional={"system": FIELD}),
    st.lists(st.integers(), max_size=2),
    st.integers(),
)


def line_of(item) -> bytes:
    if isinstance(item, bytes):
        return item
    return json.dumps(item, allow_nan=True).encode("utf-8", "surrogatepass")


LINES = st.lists(ROW | st.binary(max_size=30) | st.sampled_from([b"", b"{", b"\xef\xbb\xbf{}", b"null"]), max_size=8)


def load(path: Path, kind: str, skip: bool, allow_system: bool, fmt: str, check=None) -> None:
    data = StageData(train=[DataSource(path=str(path), format=fmt)], skip_bad_rows=skip, eval_fraction=0.0)
    try:
        out = load_stage(data, kind, seed=0, allow_system=allow_system, log=lambda _m: None, check=check)
    except AlignError:
        event("AlignError")  # --hypothesis-show-statistics shows how many inputs got how far
        return
    event("loaded")
    assert len(out.train) > 0  # a result is never empty: no rows is a DataError
    for row in out.train:
        turns = row["messages"] if kind == "sft" else row["prompt"] + row["chosen"] + row["rejected"]
        assert all(isinstance(t["content"], str) and t["content"].strip() for t in turns)


@settings(FUZZ, max_examples=700 * SCALE)
@given(
    lines=LINES,
    kind=st.sampled_from(["sft", "preference"]),
    skip=st.booleans(),
    allow_system=st.booleans(),
    fmt=st.sampled_from(["auto", "auto", "messages", "alpaca", "sharegpt", "preference"]),
    bom=st.booleans(),
)
def test_jsonl_loader(work, lines, kind, skip, allow_system, fmt, bom):
    data = (b"\xef\xbb\xbf" if bom else b"") + b"\n".join(line_of(x) for x in lines)
    load(write(work / "d.jsonl", data), kind, skip, allow_system, fmt)


@settings(FUZZ, max_examples=400 * SCALE)
@given(doc=st.one_of(st.lists(ROW, max_size=6), st.dictionaries(st.sampled_from(["train", "test", "x"]),
                                                                 st.lists(ROW, max_size=4), max_size=2),  # fmt: skip
                     SCALARS, st.binary(max_size=60)),
       kind=st.sampled_from(["sft", "preference"]), skip=st.booleans())  # fmt: skip
def test_json_loader(work, doc, kind, skip):
    data = doc if isinstance(doc, bytes) else json.dumps(doc).encode("utf-8", "surrogatepass")
    load(write(work / "d.json", data), kind, skip, True, "auto")


@settings(FUZZ, max_examples=300 * SCALE)
@given(rows=st.lists(ROW.filter(lambda r: isinstance(r, dict)), min_size=1, max_size=5), junk=st.binary(max_size=40),
       kind=st.sampled_from(["sft", "preference"]), corrupt=st.booleans())  # fmt: skip
def test_parquet_loader(work, rows, junk, kind, corrupt):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = work / "d.parquet"
    if corrupt:
        path.write_bytes(b"PAR1" + junk)
    else:
        try:
            pq.write_table(pa.Table.from_pylist([{k: json.dumps(v) for k, v in r.items()} for r in rows]), path)
        except (pa.ArrowException, ValueError):
            return
    load(path, kind, True, True, "auto")


@settings(FUZZ, max_examples=300 * SCALE)
@given(lines=st.lists(ROW, min_size=1, max_size=5), kind=st.sampled_from(["sft", "preference"]),
       max_length=st.integers(min_value=1, max_value=64))  # fmt: skip
def test_prompt_length_check_with_the_real_tokenizer(work, tokenizer, lines, kind, max_length):
    from align.stages.inputs import prompt_fits

    check = prompt_fits(tokenizer, max_length, "sft" if kind == "sft" else "dpo")
    data = b"\n".join(line_of(x) for x in lines)
    load(write(work / "p.jsonl", data), kind, True, False, "auto", check=check)


def test_nan_and_huge_numbers_in_rows_are_data_errors(work):
    from align.errors import DataError

    path = write(work / "n.jsonl", b'{"messages": NaN}\n{"messages": 1e999}\n' + b'{"a": ' + b"9" * 5000 + b"}\n")
    with pytest.raises(DataError):
        load_stage(StageData(train=[DataSource(path=str(path))]), "sft", seed=0, allow_system=True, log=print)
    assert math.isnan(json.loads("NaN"))  # Python's json accepts NaN: the row shape check must still refuse it


def test_a_key_that_looks_like_a_pydantic_union_tag(work):
    """Found by test_overrides: `A=null` made the error formatter index an empty key path (IndexError)."""
    from align.errors import RecipeError

    base = write(work / "ok.yaml", yaml.safe_dump(base_recipe()).encode())
    with pytest.raises(RecipeError, match="unknown key 'A' in"):
        load_recipe(base, ["A=null"])
    with pytest.raises(RecipeError, match="unknown key 'lora.TopP' in"):
        load_recipe(base, ["lora.TopP=1"])
