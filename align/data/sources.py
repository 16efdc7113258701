"""Reads rows from .jsonl/.json/.parquet files, directories or hub datasets, naming file and row on error.

File-level problems (missing, empty, not UTF-8, unreadable) always raise `DataError`. Row-level problems
(malformed JSON line, non-object row, unknown or inconsistent shape) raise too, unless the caller passes
`on_error`, which then receives them and the row is left out (the caller counts and reports it).
"""

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from align.data.schemas import SHAPES, RowError, RowFormat, describe_keys, detect_format, has_shape
from align.data.spec import DataSource, Format
from align.errors import DataError

OnError = Callable[[str, int, str], None]  # (file or hub id, row number, reason)
Raw = Iterator[tuple[str, int, object]]  # (file or hub id, row number, row or RowError)

SUFFIXES = (".jsonl", ".json", ".parquet")
SPLIT_STEMS = frozenset({"train", "test", "validation", "valid", "eval", "dev"})
BOM = b"\xef\xbb\xbf"
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def resolve(source: DataSource, base_dir: Path | None = None) -> Path:
    """The local path of a source: relative paths are taken from `base_dir` (default: working directory)."""
    path = Path(source.path).expanduser()
    return path if base_dir is None or path.is_absolute() else base_dir / path


def is_hub_id(source: DataSource, base_dir: Path | None = None) -> bool:
    """A path that is not on disk, looks like `owner/name` and has no data-file suffix is a hub dataset."""
    if resolve(source, base_dir).exists() or source.path.lower().endswith(SUFFIXES):
        return False
    return HUB_ID.fullmatch(source.path) is not None


def _files(path: Path, split: str) -> list[Path]:
    """The data files of a local source: the file itself, `<dir>/<split>.*`, or every data file in the dir."""
    if not path.exists():
        raise DataError(f"no such file: {path}")
    if path.is_file():
        if path.suffix.lower() not in SUFFIXES:
            raise DataError(f"{path}: unsupported file type {path.suffix!r} (use .jsonl, .json or .parquet)")
        return [path]
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIXES and not p.name.startswith("."))
    files = [p for p in files if p.is_file()]
    named = [p for p in files if p.stem == split]
    if named:
        return named
    splits = sorted({p.stem for p in files if p.stem in SPLIT_STEMS})
    if splits:
        # Reading train.jsonl + test.jsonl together for a missing split would silently mix splits.
        raise DataError(f"{path}: no file for split {split!r} (the directory has: {', '.join(splits)})")
    if not files:
        raise DataError(f"{path}: directory has no .jsonl, .json or .parquet files")
    return files


def _not_utf8(where: str, raw: bytes, index: int, offset: int) -> DataError:
    """The error for an undecodable byte: which byte, where, and how to fix it."""
    return DataError(
        f"{where}: not UTF-8: byte 0x{raw[index]:02x} at byte offset {offset} cannot be decoded "
        "(re-save the file as UTF-8)"
    )


def _parse_line(text: str, n: int) -> object:
    """One JSON line -> its value, or a RowError saying why it is not JSON (never raises)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        return RowError(f"invalid JSON: {err.msg} (line {n}, column {err.colno})")
    except (ValueError, RecursionError) as err:  # e.g. too deeply nested, or an integer with 5000 digits
        return RowError(f"invalid JSON: {str(err)[:200] or type(err).__name__}")


def _read_jsonl(path: Path, split: str) -> Raw:
    """JSON Lines: row number = line number; blank lines are not rows; a leading BOM is dropped."""
    offset = 0
    with path.open("rb") as f:
        for n, raw in enumerate(f, start=1):
            start, offset = offset, offset + len(raw)
            if n == 1 and raw.startswith(BOM):
                raw, start = raw[len(BOM) :], start + len(BOM)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise _not_utf8(f"{path} row {n}", raw, err.start, start + err.start) from None
            if text.strip():
                yield str(path), n, _parse_line(text.rstrip("\r\n"), n)


def _json_rows(path: Path, data: object, split: str) -> list:
    """The rows of a parsed .json file: a list of rows, or `data[split]` of an object of splits."""
    if isinstance(data, list):
        return data
    if isinstance(data, dict) and isinstance(data.get(split), list):
        return data[split]
    keys = f" (keys: {describe_keys(data)})" if isinstance(data, dict) else ""
    raise DataError(
        f"{path}: no list of rows for split {split!r}{keys}; a .json file must hold a list of rows "
        "or an object mapping split names to lists of rows"
    )


def _read_json(path: Path, split: str) -> Raw:
    """A whole-file JSON document: row number = index + 1 in the list."""
    raw = path.read_bytes()
    start = len(BOM) if raw.startswith(BOM) else 0
    try:
        text = raw[start:].decode("utf-8")
    except UnicodeDecodeError as err:
        offset = start + err.start
        line = raw.count(b"\n", 0, offset) + 1
        raise _not_utf8(f"{path} line {line}", raw, offset, offset) from None
    if not text.strip():
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        hint = " (one object per line? then name the file .jsonl)" if err.msg == "Extra data" else ""
        where = f"line {err.lineno}, column {err.colno}"
        raise DataError(f"{path}: invalid JSON: {err.msg} ({where}){hint}") from None
    except (ValueError, RecursionError) as err:
        raise DataError(f"{path}: invalid JSON: {str(err)[:200] or type(err).__name__}") from None
    for i, row in enumerate(_json_rows(path, data, split), start=1):
        yield str(path), i, row


def _read_parquet(path: Path, split: str) -> Raw:
    """A parquet file, read in batches: row number = index + 1."""
    n = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                n += 1
                yield str(path), n, row
    except pa.ArrowException as err:
        raise DataError(f"{path}: cannot read parquet: {err}") from None


def _read_file(path: Path, split: str) -> Raw:
    """Rows of one local file; an empty file or an OS error is a DataError naming the file."""
    reader = {".jsonl": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet}[path.suffix.lower()]
    empty = True
    try:
        if path.stat().st_size > 0:
            for item in reader(path, split):
                empty = False
                yield item
    except OSError as err:
        raise DataError(f"{path}: cannot read: {err.strerror or err}") from None
    if empty:
        raise DataError(f"{path}: empty file (no rows)")


def _read_hub(source: DataSource) -> Raw:
    """Rows of a hub dataset (row number = index + 1); any failure of the hub is a DataError naming the id."""
    try:
        dataset = datasets.load_dataset(source.path, source.subset, split=source.split)
    except Exception as err:  # the hub raises many types (connection, not found, bad split, auth)
        raise DataError(
            f"{source.path}: not a local file or directory, and loading it as a hub dataset "
            f"(subset {source.subset!r}, split {source.split!r}) failed: "
            f"{type(err).__name__}: {str(err)[:500]}"
        ) from None
    for i, row in enumerate(dataset, start=1):
        yield source.path, i, row


def _raw_rows(source: DataSource, base_dir: Path | None) -> Raw:
    """Every row of a source, file after file, as parsed (rows may be RowErrors or non-objects)."""
    if is_hub_id(source, base_dir):
        yield from _read_hub(source)
        return
    try:
        files = _files(resolve(source, base_dir), source.split)
    except OSError as err:
        raise DataError(f"{source.path}: cannot read: {err.strerror or err}") from None
    for path in files:
        yield from _read_file(path, source.split)


def _shape(row: object, declared: Format, first: RowFormat | None) -> RowFormat:
    """A row's shape: the declared one (checked), or detected and equal to the file's first row's."""
    if isinstance(row, RowError):
        raise row
    if not isinstance(row, dict):
        kind = "a list" if isinstance(row, list) else type(row).__name__
        raise RowError(f"row is not a JSON object (got {kind})")
    if declared != "auto":
        if not has_shape(row, declared):
            raise RowError(
                f"row does not have the declared format {declared!r} ({SHAPES[declared]}); "
                f"its keys are {describe_keys(row)}"
            )
        return declared
    fmt = detect_format(row)
    if first is not None and fmt != first:
        raise RowError(f"shape {fmt!r} differs from the file's first row ({first!r})")
    return fmt


def read_shaped_rows(
    source: DataSource, base_dir: Path | None = None, on_error: OnError | None = None
) -> Iterator[tuple[str, int, dict, RowFormat]]:
    """Yields (file, row number, row, shape), stopping after `max_rows` rows read (bad rows count).

    A bad row raises DataError("<file> row <n>: <reason>"), or goes to `on_error` and is left out.
    """
    first: dict[str, RowFormat] = {}
    for count, (where, n, row) in enumerate(_raw_rows(source, base_dir), start=1):
        try:
            fmt = _shape(row, source.format, first.get(where))
        except RowError as err:
            if on_error is None:
                raise DataError(f"{where} row {n}: {err}") from None
            on_error(where, n, str(err))
        else:
            first.setdefault(where, fmt)
            yield where, n, row, fmt
        if source.max_rows is not None and count >= source.max_rows:
            return


def read_rows(source: DataSource, base_dir: Path | None = None) -> Iterator[tuple[int, dict]]:
    """Yields (row number, row) of a source; row number is the line in .jsonl, index + 1 otherwise."""
    for _, n, row, _ in read_shaped_rows(source, base_dir):
        yield n, row
