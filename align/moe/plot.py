"""A PNG heatmap of a routing profile: layers by experts, coloured by token share around the uniform 1/E."""

from __future__ import annotations

from pathlib import Path

from align.moe.profile import RoutingProfile
from align.plots import save_png

MAX_ANNOTATED_EXPERTS = 16


def _figure_size(num_layers: int, num_experts: int) -> tuple[float, float]:
    """Figure inches that keep cells readable from 2 to 64 experts and 1 to 64 layers."""
    return max(5.0, 0.7 * min(num_experts, 32) + 2.5), max(3.0, 0.4 * min(num_layers, 48) + 1.8)


def _annotate(ax, matrix: list[list[float]], norm) -> None:
    """Write each cell's share as a percentage, white on strong colours, black near the uniform share."""
    for row, shares in enumerate(matrix):
        for col, share in enumerate(shares):
            strong = abs(float(norm(share)) - 0.5) > 0.3
            color = "white" if strong else "black"
            ax.text(col, row, f"{100 * share:.1f}%", ha="center", va="center", fontsize=7, color=color)


def routing_heatmap(profile: RoutingProfile, path: str | Path, title: str | None = None) -> Path:
    """Save a layers x experts heatmap of token share (blue under-used, red over-used); return the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    matrix = profile.token_share_matrix()
    num_experts, uniform = profile.num_experts, 1.0 / profile.num_experts
    peak = max(max(row) for row in matrix)
    norm = TwoSlopeNorm(vmin=0.0, vcenter=uniform, vmax=max(peak, 2 * uniform))
    fig, ax = plt.subplots(figsize=_figure_size(len(matrix), num_experts))
    try:
        image = ax.imshow(matrix, aspect="auto", cmap="RdBu_r", norm=norm, interpolation="nearest")
        bar = fig.colorbar(image, ax=ax)
        bar.set_label("token share")
        bar.ax.axhline(uniform, color="black", linestyle="--", linewidth=1)
        ax.set_xlabel("expert")
        ax.set_ylabel("layer")
        if num_experts <= 32:
            ax.set_xticks(range(num_experts))
        if len(matrix) <= 48:
            ax.set_yticks(range(len(matrix)), [str(layer["layer"]) for layer in profile.layers])
        if num_experts <= MAX_ANNOTATED_EXPERTS:
            _annotate(ax, matrix, norm)
        heading = title or f"Routing profile: share of routed tokens (top-{profile.top_k})"
        note = f"uniform share 1/E = {100 * uniform:.1f}% (dashed line on the colour bar) · {profile.tokens} tokens"
        ax.set_title(f"{heading}\n{note}", fontsize=9)
        return save_png(fig, path, dpi=120)
    finally:
        plt.close(fig)
