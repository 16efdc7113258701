"""Export a run: the final adapter, or base + adapter merged into a stock Mixtral checkpoint."""

from align.export.run import export_run, read_run, resolve_base

__all__ = ["export_run", "read_run", "resolve_base"]
