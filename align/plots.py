"""PNG figures of a run (matplotlib, Agg backend: no display needed): training curves per stage from
metrics.jsonl, and the long-context checks of `align eval --long-context`."""

from __future__ import annotations

import json
import math
from pathlib import Path

CURVES_PNG = "curves.png"
# (panel title, metrics.jsonl keys drawn in it); a panel appears only when one of its keys was logged
PANELS = (
    ("loss", ("loss", "eval_loss")),
    ("router aux loss", ("aux_loss",)),
    ("reward accuracy", ("rewards/accuracies",)),
    ("reward margin / rewards", ("rewards/margins", "rewards/chosen", "rewards/rejected")),
    ("learning rate", ("learning_rate",)),
    ("routing", ("routing/imbalance", "routing/entropy", "routing/drift")),
)


def save_png(fig, out: str | Path, dpi: int = 110) -> Path:
    """Lay the figure out and write it as a PNG at `out` (parent directories created)."""
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    return out


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl (unreadable lines skipped: a killed run may leave half a line)."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def series(records: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of one finite numeric key."""
    steps, values = [], []
    for r in records:
        value = r.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            steps.append(float(r.get("step", len(steps))))
            values.append(float(value))
    return steps, values


def training_curves(metrics: str | Path, out: str | Path, title: str = "") -> Path | None:
    """One figure with a panel per logged quantity (see PANELS); None when nothing plottable was logged."""
    records = read_metrics(metrics)
    panels = [(name, [(k, series(records, k)) for k in keys]) for name, keys in PANELS]
    panels = [(name, [(k, s) for k, s in lines if s[0]]) for name, lines in panels]
    panels = [(name, lines) for name, lines in panels if lines]
    if not panels:
        return None
    plt = _pyplot()
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    try:
        for ax, (name, lines) in zip(axes.flat, panels, strict=False):
            for key, (steps, values) in lines:
                marker = "o" if len(steps) < 30 else None
                ax.plot(steps, values, marker=marker, markersize=3, label=key)
            ax.set_title(name, fontsize=10)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            if len(lines) > 1:
                ax.legend(fontsize=7)
        for ax in list(axes.flat)[len(panels) :]:
            ax.axis("off")
        if title:
            fig.suptitle(title, fontsize=11)
        return save_png(fig, out)
    finally:
        plt.close(fig)


def stage_curves(stage_dir: str | Path, stage: str) -> Path | None:
    """STAGE_DIR/curves.png from STAGE_DIR/metrics.jsonl (None if there is none or it has no numbers)."""
    metrics = Path(stage_dir) / "metrics.jsonl"
    if not metrics.is_file():
        return None
    return training_curves(metrics, Path(stage_dir) / CURVES_PNG, title=f"{stage}: training curves")


def long_context_figure(result: dict, out: str | Path, title: str = "") -> Path:
    """Passkey accuracy (length x position heatmap) and perplexity vs context length, side by side."""
    plt = _pyplot()
    lengths = sorted({c["length"] for c in result["passkey"]})
    positions = sorted({c["position"] for c in result["passkey"]})
    grid = [[0.0] * len(lengths) for _ in positions]
    for c in result["passkey"]:
        grid[positions.index(c["position"])][lengths.index(c["length"])] = c["accuracy"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    try:
        image = left.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto", origin="lower")
        left.set_xticks(range(len(lengths)), [str(n) for n in lengths])
        left.set_yticks(range(len(positions)), [f"{p:.0%}" for p in positions])
        for i, row in enumerate(grid):
            for j, acc in enumerate(row):
                left.text(j, i, f"{acc:.0%}", ha="center", va="center", fontsize=9)
        left.set_xlabel("context length (tokens)")
        left.set_ylabel("key position")
        left.set_title("passkey retrieval accuracy", fontsize=10)
        fig.colorbar(image, ax=left)
        ppl = sorted(result["perplexity"], key=lambda r: r["length"])
        right.plot([r["length"] for r in ppl], [r["perplexity"] for r in ppl], marker="o")
        right.set_xscale("log", base=2)
        right.set_xlabel("context length (tokens)")
        right.set_ylabel("perplexity of the last tokens")
        right.set_title("perplexity vs context length", fontsize=10)
        right.grid(alpha=0.3)
        if title:
            fig.suptitle(title, fontsize=11)
        return save_png(fig, out)
    finally:
        plt.close(fig)
