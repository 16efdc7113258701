"""Loads one stage's data: read, normalise and check every row, mix sources by weight, split off eval."""

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import datasets

from align.data.schemas import RowError, RowFormat, check_conversation, to_messages, to_preference
from align.data.sources import read_shaped_rows, resolve
from align.data.spec import DataSource, StageData
from align.errors import DataError

Kind = Literal["sft", "preference"]
Log = Callable[[str], None]

MAX_REASONS = 5
TURNS = datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")})
FEATURES = {
    "sft": datasets.Features({"messages": TURNS}),
    "preference": datasets.Features({"prompt": TURNS, "chosen": TURNS, "rejected": TURNS}),
}
SFT_FORMATS = ("messages", "alpaca", "sharegpt")


@dataclass
class SourceReport:
    """What one source contributed, so a user can see where rows went."""

    path: str
    role: Literal["train", "eval"]
    read: int = 0  # rows read (capped by max_rows), bad ones included
    valid: int = 0  # rows that passed every check
    skipped: int = 0  # bad rows left out (skip_bad_rows)
    held_out: int = 0  # valid rows moved to eval by eval_fraction
    used: int = 0  # rows in the mix after weight (repeats counted)


@dataclass
class LoadReport:
    """Counts of a stage's data loading: per source, skipped rows (first reasons), merged system turns."""

    kind: Kind
    sources: list[SourceReport] = field(default_factory=list)
    skipped: int = 0
    skip_reasons: list[str] = field(default_factory=list)
    merged_system: int = 0
    train_rows: int = 0
    eval_rows: int = 0

    def summary(self) -> str:
        """One line for the run log: rows per source, eval size, skipped and merged counts."""
        parts = ", ".join(
            f"{s.path}: {s.used} of {s.valid} valid" + (f", {s.held_out} held out" if s.held_out else "")
            for s in self.sources
            if s.role == "train"
        )
        line = f"{self.kind} data: {self.train_rows} train rows ({parts}), {self.eval_rows} eval rows"
        if self.skipped:
            line += f", {self.skipped} bad rows skipped"
        if self.merged_system:
            line += f", {self.merged_system} system turns merged"
        return line


@dataclass
class StageDatasets:
    """A stage's datasets, ready for TRL, and how they were made."""

    train: datasets.Dataset
    eval: datasets.Dataset | None
    report: LoadReport


def _check_declared(source: DataSource, kind: Kind) -> None:
    """A declared format must suit the stage (no alpaca file in a DPO stage), checked before reading."""
    if source.format == "auto":
        return
    if (kind == "sft") != (source.format in SFT_FORMATS):
        raise DataError(f"{source.path}: format {source.format!r} cannot be used in a {kind} stage")


def _normalise(row: dict, fmt: RowFormat, kind: Kind, allow_system: bool) -> tuple[dict, bool]:
    """One row -> the stage's record ({messages} or {prompt, chosen, rejected}) and its merged flag."""
    if kind == "sft":
        if fmt == "preference":
            raise RowError("a preference row (chosen/rejected) in an SFT stage (SFT takes messages, alpaca, sharegpt)")
        messages, merged = check_conversation(to_messages(row, fmt), allow_system=allow_system)
        return {"messages": messages}, merged
    if fmt != "preference":
        raise RowError(f"a {fmt!r} row in a preference stage; preference rows need 'chosen' and 'rejected'")
    return to_preference(row, allow_system=allow_system)


@dataclass
class _Options:
    """Settings shared by every source of a stage."""

    kind: Kind
    allow_system: bool
    skip: bool
    base_dir: Path | None
    log: Log
    check: Callable[[dict], None] | None = None  # a further per-row check (RowError), e.g. prompt length


def _load_source(
    source: DataSource, role: Literal["train", "eval"], opts: _Options, report: LoadReport
) -> tuple[list[dict], SourceReport]:
    """Reads and checks one source; bad rows raise, or (skip_bad_rows) are counted, reported and left out."""
    _check_declared(source, opts.kind)
    bad: list[tuple[str, int, str]] = []
    rows: list[dict] = []
    on_error = (lambda where, n, reason: bad.append((where, n, reason))) if opts.skip else None
    for where, n, row, fmt in read_shaped_rows(source, opts.base_dir, on_error):
        try:
            record, merged = _normalise(row, fmt, opts.kind, opts.allow_system)
            if opts.check is not None:
                opts.check(record)
        except RowError as err:
            if not opts.skip:
                raise DataError(f"{where} row {n}: {err}") from None
            bad.append((where, n, str(err)))
            continue
        rows.append(record)
        report.merged_system += merged
    stats = SourceReport(source.path, role, read=len(rows) + len(bad), valid=len(rows), skipped=len(bad))
    report.sources.append(stats)
    report.skipped += len(bad)
    room = MAX_REASONS - len(report.skip_reasons)
    report.skip_reasons.extend(f"{w} row {n}: {r}" for w, n, r in bad[:room])
    if bad:
        where, n, reason = bad[0]
        place = "" if where in (source.path, str(resolve(source, opts.base_dir))) else f"{where} "
        opts.log(f"skipped {len(bad)} of {stats.read} rows in {source.path}: {place}row {n}: {reason}")
    return rows, stats


def _round(x: float) -> int:
    """Round half up (Python's round() rounds 2.5 to 2, which surprises people setting weights)."""
    return math.floor(x + 0.5)


def _weighted(rows: list[dict], weight: float, rng: random.Random) -> list[dict]:
    """round(weight * n) rows: whole copies for the integer part, then a seeded subset (in file order)."""
    if not rows:
        return []
    copies, extra = divmod(_round(weight * len(rows)), len(rows))
    picked = sorted(rng.sample(range(len(rows)), extra))
    return rows * copies + [rows[i] for i in picked]


Parts = list[tuple[list[dict], SourceReport]]


def _mix(parts: Parts, sources: list[DataSource], seed: int, log: Log) -> list[dict]:
    """Concatenates the sources' weighted rows; each source has its own seeded generator."""
    mixed: list[dict] = []
    for i, ((rows, stats), source) in enumerate(zip(parts, sources, strict=True)):
        picked = _weighted(rows, source.weight, random.Random(f"{seed}/{stats.role}/{i}"))
        stats.used = len(picked)
        if rows and not picked:
            log(f"{source.path}: weight {source.weight} of {len(rows)} rows rounds to 0 rows (source unused)")
        mixed.extend(picked)
    return mixed


def _hold_out(parts: Parts, fraction: float, seed: int) -> list[dict]:
    """Moves a seeded `fraction` of each train source's valid rows to eval, before weighting.

    Splitting before weighting keeps eval disjoint from train even when weight > 1 repeats rows.
    """
    counts = [min(_round(fraction * len(rows)), max(len(rows) - 1, 0)) for rows, _ in parts]
    if sum(counts) == 0:
        largest = max(range(len(parts)), key=lambda i: len(parts[i][0]))
        if len(parts[largest][0]) < 2:
            raise DataError(f"eval_fraction {fraction} needs at least 2 valid training rows in one source")
        counts[largest] = 1
    held: list[dict] = []
    for i, ((rows, stats), k) in enumerate(zip(parts, counts, strict=True)):
        chosen = set(random.Random(f"{seed}/eval/{i}").sample(range(len(rows)), k))
        held.extend(row for j, row in enumerate(rows) if j in chosen)
        rows[:] = [row for j, row in enumerate(rows) if j not in chosen]
        stats.held_out = k
    return held


def load_stage(
    data: StageData,
    kind: Kind,
    *,
    seed: int,
    allow_system: bool,
    base_dir: Path | None = None,
    log: Log = print,
    check: Callable[[dict], None] | None = None,
) -> StageDatasets:
    """Loads, checks and mixes a stage's data into `messages` (SFT) or `prompt/chosen/rejected` datasets.

    Deterministic for a given seed. Bad data raises DataError naming file and row (or is skipped and
    reported when `data.skip_bad_rows`). `allow_system=False` merges system turns into the first user turn.
    `check`, if given, sees every normalised record and may reject it with RowError (same file/row handling).
    """
    if kind not in FEATURES:
        raise ValueError(f"kind must be 'sft' or 'preference', got {kind!r}")
    report = LoadReport(kind=kind)
    opts = _Options(kind, allow_system, data.skip_bad_rows, base_dir, log, check)
    train_parts = [_load_source(source, "train", opts, report) for source in data.train]
    eval_parts = [_load_source(source, "eval", opts, report) for source in data.eval]
    if report.merged_system:
        n = report.merged_system
        log(f"{n} system turns merged into the first user turn (the chat template has no system role)")
    if not any(rows for rows, _ in train_parts):
        paths = ", ".join(s.path for s in data.train)
        raise DataError(f"no valid training rows in {paths} ({report.skipped} bad rows skipped)")
    split_off = data.eval_fraction > 0 and not data.eval
    held = _hold_out(train_parts, data.eval_fraction, seed) if split_off else []
    train = _mix(train_parts, data.train, seed, log)
    eval_rows = _mix(eval_parts, data.eval, seed, log) if data.eval else held
    if not train:
        raise DataError("no training rows left after weighting (raise the sources' weights)")
    if data.eval and not eval_rows:
        raise DataError(f"no valid eval rows in {', '.join(s.path for s in data.eval)}")
    if data.shuffle:
        random.Random(f"{seed}/shuffle").shuffle(train)
    report.train_rows, report.eval_rows = len(train), len(eval_rows)
    features = FEATURES[kind]
    eval_set = datasets.Dataset.from_list(eval_rows, features=features) if eval_rows else None
    return StageDatasets(datasets.Dataset.from_list(train, features=features), eval_set, report)
