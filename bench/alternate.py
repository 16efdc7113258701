"""Run several HF trainers in one process, one optimizer step at a time each, round robin, and time every step.

Each trainer runs its own unmodified `trainer.train()` (callbacks, logging, optimizer, data loading included) in a
thread; a `StepClock` callback lets exactly one trainer compute at a time and hands the turn on at every
`on_step_begin`. A step's window runs from the moment its trainer gets the turn at `on_step_begin` to its next
`on_step_begin` (or `on_train_end`): forward, backward, optimizer, callbacks, logging and fetching the next batch.
Other processes on the machine slow every path alike, so the ratios between paths stay meaningful; the CPU time
each window got (process CPU seconds per wall second) shows how much others competed.
"""

from __future__ import annotations

import resource
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import TrainerCallback


def rss_mib(field: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} missing from /proc/self/status")


def reset_peak() -> bool:
    """Reset this process's peak-RSS mark (VmHWM), Linux >= 4.0."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@dataclass
class StepRecord:
    wall_s: float
    cpu_s: float  # process CPU time (all threads) during the window
    sys_s: float
    minor_faults: int
    rss_start_mib: float  # resident at the window's start (freed memory glibc keeps counts: growth understates)
    peak_mib: float | None  # VmHWM during the window (None: the mark could not be reset)
    tokens: int  # non-padding tokens the step trained on (inputs)
    scored: int  # tokens with a label (the loss positions)
    positions: int  # tensor positions the collator produced (padding included)
    sum_sq_lengths: int  # sum of squared sequence lengths (attention cost)
    cuda_peak_mib: float | None = None  # GPU runs: peak allocated during the window


class Turns:
    """A round-robin token: one name computes at a time."""

    def __init__(self, names: list[str]):
        self.order = list(names)
        self.active = set(names)
        self.current: str | None = None  # nobody until every trainer is ready
        self.cond = threading.Condition()

    def start(self) -> None:
        with self.cond:
            self.current = self.order[0]
            self.cond.notify_all()

    def _advance(self, name: str) -> None:
        i = self.order.index(name)
        for step in range(1, len(self.order) + 1):
            candidate = self.order[(i + step) % len(self.order)]
            if candidate in self.active:
                self.current = candidate
                return
        self.current = None

    def wait(self, name: str) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.current == name)

    def hand_over(self, name: str) -> None:
        with self.cond:
            self._advance(name)
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.current == name)

    def done(self, name: str) -> None:
        with self.cond:
            self.active.discard(name)
            if self.current == name or self.current is None and self.active:
                self._advance(name)
            self.cond.notify_all()


class CountingCollator:
    """Wraps a trainer's collator; records each batch's real tokens, scored tokens and positions."""

    def __init__(self, collator):
        self.collator = collator
        self.batches: list[tuple[int, int, int, int]] = []

    def __call__(self, examples):
        batch = self.collator(examples)
        ids = batch["input_ids"]
        if "attention_mask" in batch:
            tokens = int(batch["attention_mask"].sum())
        else:  # padding-free: one row, no padding
            tokens = int(ids.numel())
        if "completion_mask" in batch:  # DPO
            scored = int(batch["completion_mask"][:, 1:].sum())
        else:
            scored = int((batch["labels"][:, 1:] != -100).sum())
        self.batches.append((tokens, scored, int(ids.numel()), _sum_squared_lengths(batch)))
        return batch


def _sum_squared_lengths(batch) -> int:
    """Sum over the batch's sequences of length^2 (what causal attention costs grows with)."""
    if "attention_mask" in batch:
        return int((batch["attention_mask"].sum(-1) ** 2).sum())
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist() + [batch["position_ids"].size(1)]
    return sum((b - a) ** 2 for a, b in zip(starts[:-1], starts[1:], strict=True))


class StepClock(TrainerCallback):
    """Times each optimizer step of one trainer and takes turns with the others."""

    def __init__(self, name: str, turns: Turns, counter: CountingCollator, ready: threading.Event):
        self.name, self.turns, self.counter, self.ready = name, turns, counter, ready
        self.records: list[StepRecord] = []
        self._open: tuple | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.ready.set()
        self.turns.wait(self.name)

    def _start(self) -> None:
        # no malloc_trim here: returning freed heap to the OS would make the step page-fault it back in
        rss = rss_mib()
        has_peak = reset_peak()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self._open = (time.perf_counter(), time.process_time(), usage, rss, has_peak)

    def _close(self) -> None:
        if self._open is None:
            return
        wall0, cpu0, usage0, rss, has_peak = self._open
        cuda_peak = None
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            cuda_peak = torch.cuda.max_memory_allocated() / 2**20
        usage = resource.getrusage(resource.RUSAGE_SELF)
        index = len(self.records)
        tokens, scored, positions, sum_sq = self.counter.batches[index]
        self.records.append(
            StepRecord(
                wall_s=time.perf_counter() - wall0,
                cpu_s=time.process_time() - cpu0,
                sys_s=usage.ru_stime - usage0.ru_stime,
                minor_faults=usage.ru_minflt - usage0.ru_minflt,
                rss_start_mib=rss,
                peak_mib=rss_mib("VmHWM") if has_peak else None,
                tokens=tokens,
                scored=scored,
                positions=positions,
                sum_sq_lengths=sum_sq,
                cuda_peak_mib=cuda_peak,
            )
        )
        self._open = None

    def on_step_begin(self, args, state, control, **kwargs):
        self._close()
        self.turns.hand_over(self.name)
        self._start()

    def on_train_end(self, args, state, control, **kwargs):
        self._close()


def run_alternating(trainers: dict) -> dict[str, dict]:
    """Train every trainer to its max_steps, one step each in turn. name -> {"steps": [...], "log": [...]}"""
    turns = Turns(list(trainers))
    clocks, threads, errors = {}, [], {}
    for name, trainer in trainers.items():
        counter = CountingCollator(trainer.data_collator)
        trainer.data_collator = counter
        ready = threading.Event()
        clocks[name] = StepClock(name, turns, counter, ready)
        trainer.add_callback(clocks[name])

        def target(name=name, trainer=trainer):
            try:
                trainer.train()
            except BaseException as err:  # noqa: B036 - re-raised in the main thread below
                errors[name] = err
            finally:
                clocks[name].ready.set()
                turns.done(name)

        thread = threading.Thread(target=target, name=f"bench-{name}", daemon=True)
        thread.start()
        ready.wait()  # set-up of one trainer at a time; then it waits for its turn
        threads.append(thread)
    turns.start()
    for thread in threads:
        thread.join()
    if errors:
        name, err = next(iter(errors.items()))
        raise RuntimeError(f"path {name} failed: {err!r}") from err
    return {
        name: {"steps": [asdict(r) for r in clocks[name].records], "log": trainers[name].state.log_history}
        for name in trainers
    }


def matmul_gflops(dtype: torch.dtype = torch.float32, n: int = 1024, repeats: int = 5, device: str = "cpu") -> float:
    """Best measured GEMM rate (n x n x n) on this machine with the current torch threads."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        if device != "cpu":
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.mm(a, b)
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9
