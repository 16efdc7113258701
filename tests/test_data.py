"""Tests of align.data: row shapes, file reading and its errors, mixing, eval split, system-turn merging."""

import json
import re
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from align.data import DataSource, StageData, load_stage
from align.data.schemas import RowError, check_conversation, detect_format, to_messages, to_preference
from align.data.sources import read_rows
from align.errors import DataError

U, A, S = "user", "assistant", "system"


def turn(role: str, content: str) -> dict:
    """A {role, content} turn."""
    return {"role": role, "content": content}


def chat(i: int) -> dict:
    """A distinct one-exchange messages row."""
    return {"messages": [turn(U, f"q{i}"), turn(A, f"a{i}")]}


def write_jsonl(path: Path, rows: list) -> Path:
    """Writes rows as JSON Lines and returns the path."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def load(path: Path, kind: str = "sft", *, seed: int = 0, allow_system: bool = True, src: dict | None = None, **kw):
    """load_stage on one source; returns (StageDatasets, log lines)."""
    logs: list[str] = []
    data = StageData(train=[DataSource(path=str(path), **(src or {}))], **kw)
    return load_stage(data, kind, seed=seed, allow_system=allow_system, log=logs.append), logs


def firsts(ds: datasets.Dataset) -> list[str]:
    """The first user turn of each SFT row, to identify rows."""
    return [row["messages"][0]["content"] for row in ds]


# --- schemas: shapes and conversion ---------------------------------------------------------------


def test_detect_format_each_shape_and_unknown():
    assert detect_format({"messages": []}) == "messages"
    assert detect_format({"instruction": "i", "output": "o"}) == "alpaca"
    assert detect_format({"conversations": []}) == "sharegpt"
    assert detect_format({"chosen": "c", "rejected": "r", "messages": []}) == "preference"
    with pytest.raises(RowError, match=r"unrecognised row shape with keys \['foo', 'text'\].*alpaca"):
        detect_format({"text": "x", "foo": 1})


def test_alpaca_to_messages_with_input_and_system():
    row = {"system": "Be brief.", "instruction": "Translate", "input": "bonjour", "output": "hello"}
    assert to_messages(row, "alpaca") == [
        turn(S, "Be brief."),
        turn(U, "Translate\n\nbonjour"),
        turn(A, "hello"),
    ]
    assert to_messages({"instruction": "Hi", "input": "", "output": "Yo"}, "alpaca") == [
        turn(U, "Hi"),
        turn(A, "Yo"),
    ]


def test_sharegpt_and_messages_to_messages():
    row = {
        "conversations": [
            {"from": "system", "value": "S"},
            {"from": "human", "value": "h"},
            {"from": "gpt", "value": "g"},
        ]
    }
    assert to_messages(row, "sharegpt") == [turn(S, "S"), turn(U, "h"), turn(A, "g")]
    row = {"conversations": [{"from": "user", "value": "u"}, {"from": "model", "value": "m"}]}
    assert to_messages(row, "sharegpt") == [turn(U, "u"), turn(A, "m")]
    row = {"messages": [{"role": U, "content": "x", "name": "n"}, {"role": A, "content": "y", "weight": 0}]}
    assert to_messages(row, "messages") == [turn(U, "x"), turn(A, "y")]
    with pytest.raises(RowError, match="turn 2: unknown speaker 'tool'"):
        to_messages({"conversations": [{"from": "human", "value": "h"}, {"from": "tool", "value": "t"}]}, "sharegpt")


@pytest.mark.parametrize(
    ("messages", "reason"),
    [
        (
            [turn(U, "a"), turn(A, "b"), turn(U, "c"), turn(U, "d")],
            "turn 4: expected role 'assistant', got 'user'",
        ),
        ([turn(U, "a"), turn(A, "  ")], "turn 2: empty content"),
        ([turn(A, "a"), turn(U, "b")], "turn 1: expected role 'user', got 'assistant'"),
        (
            [turn(U, "a"), turn(S, "s"), turn(A, "b")],
            "turn 2: a system turn is only allowed as the first turn",
        ),
        ([turn(S, "s"), turn(S, "t"), turn(U, "a"), turn(A, "b")], "turn 2: a system turn is only allowed"),
        (
            [turn(U, "a"), turn(A, "b"), turn(U, "c")],
            "turn 3: last turn is 'user'; an SFT conversation must end",
        ),
        ([turn("tool", "a")], "turn 1: unknown role 'tool'"),
        ([turn(U, "a"), {"role": A, "content": ["x"]}], "turn 2: content must be a string, got list"),
        ([turn(U, "a"), {"role": A}], "turn 2: missing content"),
        (["hi"], "turn 1: expected an object"),
        ([], "conversation is empty"),
        ([turn(S, "s")], "system turn but no user turn"),
    ],
)
def test_check_conversation_errors(messages, reason):
    with pytest.raises(RowError, match=re.escape(reason)):
        check_conversation(messages, allow_system=True)


def test_check_conversation_system_merge():
    conv = [turn(S, "Sys"), turn(U, "Hi"), turn(A, "Yo")]
    assert check_conversation(conv, allow_system=True) == (conv, False)
    assert check_conversation(conv, allow_system=False) == ([turn(U, "Sys\n\nHi"), turn(A, "Yo")], True)
    assert check_conversation(conv[1:], allow_system=False) == (conv[1:], False)


# --- schemas: preference ----------------------------------------------------------------------------


def test_preference_string_shape():
    row, merged = to_preference({"prompt": "Q", "chosen": "good", "rejected": "bad"})
    assert row == {"prompt": [turn(U, "Q")], "chosen": [turn(A, "good")], "rejected": [turn(A, "bad")]}
    assert merged is False


def test_preference_multi_turn_prompt_with_string_and_list_completions():
    prompt = [turn(S, "sys"), turn(U, "q1"), turn(A, "a1"), turn(U, "q2")]
    row, merged = to_preference({"prompt": prompt, "chosen": [turn(A, "good")], "rejected": "bad"})
    assert row == {"prompt": prompt, "chosen": [turn(A, "good")], "rejected": [turn(A, "bad")]}
    full = {"prompt": prompt, "chosen": [*prompt, turn(A, "good")], "rejected": [*prompt, turn(A, "bad")]}
    row, merged = to_preference(full, allow_system=False)
    assert row["prompt"] == [turn(U, "sys\n\nq1"), turn(A, "a1"), turn(U, "q2")]
    assert (row["chosen"], row["rejected"], merged) == ([turn(A, "good")], [turn(A, "bad")], True)


def test_preference_prompt_string_with_full_conversations():
    """The ultrafeedback_binarized shape: prompt str, chosen/rejected = [user, assistant]."""
    row = {
        "prompt": "Q",
        "chosen": [turn(U, "Q"), turn(A, "good")],
        "rejected": [turn(U, "Q"), turn(A, "bad")],
    }
    assert to_preference(row)[0] == {
        "prompt": [turn(U, "Q")],
        "chosen": [turn(A, "good")],
        "rejected": [turn(A, "bad")],
    }


def test_preference_full_conversations_prefix_becomes_prompt():
    prefix = [turn(U, "q1"), turn(A, "a1"), turn(U, "q2")]
    row, _ = to_preference({"chosen": [*prefix, turn(A, "good")], "rejected": [*prefix, turn(A, "bad")]})
    assert row == {"prompt": prefix, "chosen": [turn(A, "good")], "rejected": [turn(A, "bad")]}


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"prompt": "Q", "rejected": "b"}, "missing field 'chosen'"),
        ({"prompt": "Q", "chosen": " ", "rejected": "b"}, "field 'chosen' is empty"),
        ({"prompt": "", "chosen": "a", "rejected": "b"}, "field 'prompt' is empty"),
        ({"prompt": "Q", "chosen": "same ", "rejected": " same"}, "chosen and rejected are identical"),
        (
            {"prompt": [turn(U, "q"), turn(A, "a")], "chosen": "c", "rejected": "r"},
            "prompt: turn 2: last turn is",
        ),
        ({"chosen": "c", "rejected": "r"}, "missing field 'prompt'"),
        (
            {"prompt": "Q", "chosen": [turn(A, "a"), turn(A, "b")], "rejected": "r"},
            "field 'chosen' must be one",
        ),
        (
            {"prompt": "Q", "chosen": [turn(U, "other"), turn(A, "a")], "rejected": "r"},
            "field 'chosen' must be",
        ),
        ({"prompt": "Q", "chosen": 3, "rejected": "r"}, "field 'chosen' must be a string or a list"),
        (
            {"chosen": [turn(U, "x"), turn(A, "c")], "rejected": [turn(U, "y"), turn(A, "r")]},
            "chosen and rejected differ at turn 1",
        ),
        (
            {
                "chosen": [turn(U, "x"), turn(A, "c")],
                "rejected": [turn(U, "x"), turn(A, "a"), turn(U, "z"), turn(A, "r")],
            },
            "chosen has 2 turns and rejected 4",
        ),
        (
            {"chosen": [turn(U, "x")], "rejected": [turn(U, "x"), turn(A, "r")]},
            "chosen: turn 1: last turn is 'user'",
        ),
    ],
)
def test_preference_errors(row, reason):
    with pytest.raises(RowError, match=re.escape(reason)):
        to_preference(row)


# --- loading: formats and files ---------------------------------------------------------------------


def test_load_sft_jsonl_each_shape(tmp_path):
    rows = [
        {"messages": [turn(U, "m"), turn(A, "M")]},
        {"instruction": "i", "input": "x", "output": "o"},
        {"conversations": [{"from": "human", "value": "h"}, {"from": "gpt", "value": "g"}]},
    ]
    expected = [[turn(U, "m"), turn(A, "M")], [turn(U, "i\n\nx"), turn(A, "o")], [turn(U, "h"), turn(A, "g")]]
    for i, row in enumerate(rows):
        result, logs = load(write_jsonl(tmp_path / f"{i}.jsonl", [row, row]), shuffle=False)
        assert result.train.column_names == ["messages"]
        assert result.train["messages"] == [expected[i], expected[i]]
        assert result.eval is None and logs == []


def test_load_preference_dataset_columns(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Q", "chosen": "c", "rejected": "r", "score": 3}])
    result, _ = load(path, "preference")
    assert result.train.column_names == ["prompt", "chosen", "rejected"]
    assert result.train[0] == {"prompt": [turn(U, "Q")], "chosen": [turn(A, "c")], "rejected": [turn(A, "r")]}


def test_load_json_list_dict_of_splits_parquet_and_dir(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps([chat(1), chat(2)]))
    assert firsts(load(tmp_path / "list.json", shuffle=False)[0].train) == ["q1", "q2"]
    (tmp_path / "splits.json").write_text(json.dumps({"train": [chat(1)], "test": [chat(7), chat(8)]}))
    assert firsts(load(tmp_path / "splits.json", shuffle=False, src={"split": "test"})[0].train) == [
        "q7",
        "q8",
    ]
    pq.write_table(pa.Table.from_pylist([chat(3), chat(4)]), tmp_path / "t.parquet")
    assert firsts(load(tmp_path / "t.parquet", shuffle=False)[0].train) == ["q3", "q4"]
    folder = tmp_path / "dir"
    folder.mkdir()
    write_jsonl(folder / "b.jsonl", [chat(6)])
    write_jsonl(folder / "a.jsonl", [chat(5)])
    (folder / "notes.txt").write_text("ignored")
    assert firsts(load(folder, shuffle=False)[0].train) == ["q5", "q6"]
    write_jsonl(folder / "train.jsonl", [chat(9)])
    assert firsts(load(folder, shuffle=False)[0].train) == ["q9"]
    with pytest.raises(
        DataError, match=re.escape(f"{folder}: no file for split 'validation' (the directory has: train)")
    ):
        load(folder, src={"split": "validation"})


def test_read_rows_numbers_lines_skips_blank_lines_and_accepts_bom(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(chat(1)).encode() + b"\n\n   \r\n" + json.dumps(chat(2)).encode())
    assert list(read_rows(DataSource(path=str(path)))) == [(1, chat(1)), (4, chat(2))]
    assert firsts(load(path, shuffle=False)[0].train) == ["q1", "q2"]
    bom_json = tmp_path / "bom.json"
    bom_json.write_bytes(b"\xef\xbb\xbf" + json.dumps([chat(3)]).encode())
    assert list(read_rows(DataSource(path=str(bom_json)))) == [(1, chat(3))]


def test_relative_path_uses_base_dir(tmp_path):
    write_jsonl(tmp_path / "rel.jsonl", [chat(1)])
    data = StageData(train=[DataSource(path="rel.jsonl")])
    result = load_stage(data, "sft", seed=0, allow_system=True, base_dir=tmp_path, log=lambda _: None)
    assert firsts(result.train) == ["q1"]


# --- loading: errors name file, row and reason ------------------------------------------------------


def test_file_level_errors(tmp_path):
    missing = tmp_path / "missing.jsonl"
    with pytest.raises(DataError, match=re.escape(f"no such file: {missing}")):
        load(missing)
    for name, content in [("empty.jsonl", b""), ("blank.jsonl", b"\n  \n"), ("empty.json", b"[]")]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DataError, match=re.escape(f"{tmp_path / name}: empty file (no rows)")):
            load(tmp_path / name)
    (tmp_path / "d.csv").write_text("a,b\n")
    with pytest.raises(DataError, match=r"d\.csv: unsupported file type '\.csv'"):
        load(tmp_path / "d.csv")
    (tmp_path / "bad.json").write_text('{"train": [1, 2}')
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'bad.json'}: invalid JSON: Expecting ',' delimiter")):
        load(tmp_path / "bad.json")
    (tmp_path / "nosplit.json").write_text(json.dumps({"test": [chat(1)]}))
    with pytest.raises(DataError, match=re.escape("nosplit.json: no list of rows for split 'train' (keys: ['test'])")):
        load(tmp_path / "nosplit.json")
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"broken\.parquet: cannot read parquet"):
        load(tmp_path / "broken.parquet")


def test_row_level_errors_name_file_row_and_reason(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(chat(1)) + "\n\n" + '{"messages": [}\n')
    with pytest.raises(DataError, match=re.escape(f"{path} row 3: invalid JSON: Expecting value (line 3, column 15)")):
        load(path)
    write_jsonl(path, [chat(1), [1, 2]])
    with pytest.raises(DataError, match=re.escape(f"{path} row 2: row is not a JSON object (got a list)")):
        load(path)
    write_jsonl(path, [chat(1), {"messages": [turn(U, "a"), turn(A, "b"), turn(U, "c"), turn(U, "d")]}])
    with pytest.raises(DataError, match=re.escape(f"{path} row 2: turn 4: expected role 'assistant', got 'user'")):
        load(path)
    write_jsonl(path, [chat(1), {"prompt": "q", "chosen": "c", "rejected": "r"}])
    with pytest.raises(DataError, match=re.escape(f"{path} row 2: shape 'preference' differs from the file's first")):
        load(path)
    write_jsonl(path, [{"prompt": "q", "chosen": "c", "rejected": "r"}])
    with pytest.raises(DataError, match=re.escape(f"{path} row 1: a preference row (chosen/rejected) in an SFT stage")):
        load(path)
    with pytest.raises(DataError, match=re.escape(f"{path}: format 'preference' cannot be used in a sft stage")):
        load(path, src={"format": "preference"})
    write_jsonl(path, [chat(1)])
    with pytest.raises(DataError, match=re.escape(f"{path} row 1: a 'messages' row in a preference stage")):
        load(path, "preference")


def test_non_utf8_file_names_byte_offset(tmp_path):
    path = tmp_path / "latin1.jsonl"
    first = (json.dumps(chat(1)) + "\n").encode()
    path.write_bytes(first + '{"messages": [{"role": "user", "content": "café"}]}\n'.encode("latin-1"))
    offset = len(first) + '{"messages": [{"role": "user", "content": "caf'.__len__()
    with pytest.raises(DataError, match=re.escape(f"{path} row 2: not UTF-8: byte 0xe9 at byte offset {offset}")):
        load(path)
    as_json = tmp_path / "latin1.json"
    as_json.write_bytes('[{"instruction": "é"}]'.encode("latin-1"))
    with pytest.raises(DataError, match=re.escape(f"{as_json} line 1: not UTF-8: byte 0xe9 at byte offset 18")):
        load(as_json)


def test_mixed_schema_file_and_declared_format(tmp_path):
    alpaca = {"instruction": "i", "output": "o"}
    path = write_jsonl(tmp_path / "mixed.jsonl", [chat(1), alpaca])
    with pytest.raises(
        DataError,
        match=re.escape(f"{path} row 2: shape 'alpaca' differs from the file's first row ('messages')"),
    ):
        load(path)
    with pytest.raises(DataError, match=re.escape(f"{path} row 2: row does not have the declared format 'messages'")):
        load(path, src={"format": "messages"})
    both = write_jsonl(tmp_path / "both.jsonl", [{**chat(1), "chosen": "c", "rejected": "r"}])
    assert firsts(load(both, src={"format": "messages"})[0].train) == ["q1"]


def test_very_long_lines_parse_or_fail_clearly(tmp_path):
    long_text = "x" * 10_000_000
    path = write_jsonl(tmp_path / "long.jsonl", [{"messages": [turn(U, long_text), turn(A, "ok")]}])
    assert len(load(path)[0].train[0]["messages"][0]["content"]) == 10_000_000
    path.write_text('{"messages": "' + long_text + "\n")
    with pytest.raises(DataError, match=re.escape(f"{path} row 1: invalid JSON: Unterminated string")) as info:
        load(path)
    assert len(str(info.value)) < 300
    path.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(DataError, match=re.escape(f"{path} row 1: invalid JSON")):
        load(path)


def test_hub_failure_names_the_id(monkeypatch, tmp_path):
    def fail(path, name=None, split=None):
        raise ConnectionError(f"Couldn't reach '{path}' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", fail)
    with pytest.raises(
        DataError,
        match=r"^owner/name: not a local file or directory, and loading it as a hub.*"
        r"Couldn't reach 'owner/name'",
    ):
        load(Path("owner/name"))
    hub_rows = datasets.Dataset.from_list([chat(1), chat(2)])
    monkeypatch.setattr(datasets, "load_dataset", lambda path, name=None, split=None: hub_rows)
    assert firsts(load(Path("owner/name"), shuffle=False)[0].train) == ["q1", "q2"]
    with pytest.raises(DataError, match=re.escape("no such file: data/missing.jsonl")):
        load(Path("data/missing.jsonl"))


# --- skipping, merging, mixing, eval ------------------------------------------------------------------


def test_skip_bad_rows_counts_and_reports(tmp_path):
    path = tmp_path / "d.jsonl"
    lines = [
        json.dumps(chat(1)),
        "{oops",
        json.dumps({"messages": [turn(U, "x"), turn(A, "")]}),
        json.dumps(chat(2)),
    ]
    path.write_text("\n".join([*lines, json.dumps({"text": "t"})]) + "\n")
    result, logs = load(path, skip_bad_rows=True, shuffle=False)
    assert firsts(result.train) == ["q1", "q2"]
    report = result.report
    assert (report.skipped, report.sources[0].read, report.sources[0].valid) == (3, 5, 2)
    bad_json = "invalid JSON: Expecting property name enclosed in double quotes (line 2, column 2)"
    assert report.skip_reasons[0] == f"{path} row 2: {bad_json}"
    assert report.skip_reasons[1] == f"{path} row 3: turn 2: empty content"
    assert report.skip_reasons[2].startswith(f"{path} row 5: unrecognised row shape with keys ['text']")
    assert logs == [f"skipped 3 of 5 rows in {path}: row 2: {bad_json}"]
    assert "2 train rows" in report.summary() and "3 bad rows skipped" in report.summary()


def test_all_rows_bad_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a"}, {"text": "b"}])
    with pytest.raises(DataError, match=re.escape(f"no valid training rows in {path} (2 bad rows skipped)")):
        load(path, skip_bad_rows=True)


def test_system_turns_merged_or_kept(tmp_path):
    row = {"system": "Sys", "instruction": "Hi", "output": "Yo"}
    path = write_jsonl(tmp_path / "d.jsonl", [row, row, {"instruction": "No", "output": "sys"}])
    result, logs = load(path, allow_system=False, shuffle=False)
    assert result.train["messages"][0] == [turn(U, "Sys\n\nHi"), turn(A, "Yo")]
    assert result.report.merged_system == 2
    assert logs == ["2 system turns merged into the first user turn (the chat template has no system role)"]
    result, logs = load(path, allow_system=True, shuffle=False)
    assert result.train["messages"][0] == [turn(S, "Sys"), turn(U, "Hi"), turn(A, "Yo")]
    assert (result.report.merged_system, logs) == (0, [])


def test_mixture_weights(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [chat(i) for i in range(10)])
    half = firsts(load(path, src={"weight": 0.5}, seed=1)[0].train)
    assert len(half) == 5 and len(set(half)) == 5
    assert half == firsts(load(path, src={"weight": 0.5}, seed=1)[0].train)
    assert half != firsts(load(path, src={"weight": 0.5}, seed=2)[0].train)
    double = firsts(load(path, src={"weight": 2.0})[0].train)
    assert sorted(double) == sorted([f"q{i}" for i in range(10)] * 2)
    one_and_half = firsts(load(path, src={"weight": 1.5})[0].train)
    assert len(one_and_half) == 15 and set(one_and_half) == {f"q{i}" for i in range(10)}
    assert firsts(load(path, shuffle=False)[0].train) == [f"q{i}" for i in range(10)]
    shuffled = firsts(load(path, seed=3)[0].train)
    assert shuffled != [f"q{i}" for i in range(10)] and sorted(shuffled) == sorted(f"q{i}" for i in range(10))


def test_two_sources_concatenate_with_counts(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [chat(i) for i in range(4)])
    b = write_jsonl(tmp_path / "b.jsonl", [chat(i) for i in range(10, 14)])
    data = StageData(train=[DataSource(path=str(a), weight=0.5), DataSource(path=str(b))], shuffle=False)
    result = load_stage(data, "sft", seed=0, allow_system=True, log=lambda _: None)
    names = firsts(result.train)
    assert len(names) == 6 and set(names[:2]) <= {"q0", "q1", "q2", "q3"} and names[2:] == ["q10", "q11", "q12", "q13"]
    assert [(s.read, s.valid, s.used) for s in result.report.sources] == [(4, 4, 2), (4, 4, 4)]
    assert result.report.summary() == f"sft data: 6 train rows ({a}: 2 of 4 valid, {b}: 4 of 4 valid), 0 eval rows"


def test_eval_fraction_split_sizes_and_disjoint(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [chat(i) for i in range(20)])
    result, _ = load(path, eval_fraction=0.25, seed=5)
    train, held = firsts(result.train), firsts(result.eval)
    assert (len(train), len(held)) == (15, 5)
    assert set(train).isdisjoint(held) and set(train) | set(held) == {f"q{i}" for i in range(20)}
    assert held == firsts(load(path, eval_fraction=0.25, seed=5)[0].eval)
    assert (result.report.eval_rows, result.report.sources[0].held_out) == (5, 5)
    repeated, _ = load(path, eval_fraction=0.25, src={"weight": 2.0})
    assert len(repeated.train) == 30 and set(firsts(repeated.train)).isdisjoint(firsts(repeated.eval))


def test_eval_sources(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [chat(1), chat(2)])
    held = write_jsonl(tmp_path / "eval.jsonl", [chat(8), chat(9), {"bad": 1}])
    data = StageData(train=[DataSource(path=str(train))], eval=[DataSource(path=str(held))], eval_fraction=0.5)
    with pytest.raises(DataError, match=re.escape(f"{held} row 3: unrecognised row shape")):
        load_stage(data, "sft", seed=0, allow_system=True, log=lambda _: None)
    data.train[0].max_rows = 1
    data.skip_bad_rows = True
    result = load_stage(data, "sft", seed=0, allow_system=True, log=lambda _: None)
    assert (firsts(result.train), firsts(result.eval)) == (["q1"], ["q8", "q9"])


def test_max_rows_caps_rows_read(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [chat(i) for i in range(10)])
    assert firsts(load(path, src={"max_rows": 3}, shuffle=False)[0].train) == ["q0", "q1", "q2"]
    path.write_text(json.dumps(chat(0)) + "\n{bad\n" + json.dumps(chat(2)) + "\n" + json.dumps(chat(3)) + "\n")
    result, _ = load(path, src={"max_rows": 3}, skip_bad_rows=True, shuffle=False)
    assert firsts(result.train) == ["q0", "q2"] and result.report.sources[0].read == 3
