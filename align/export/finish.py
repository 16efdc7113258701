"""The end of `align run`: export the merged checkpoint and push, as the recipe's `export:` / `hub:` ask."""

from __future__ import annotations

import logging
from pathlib import Path

from align.config import Recipe

log = logging.getLogger("align")


def finish_run(recipe: Recipe, final_stage: str) -> dict:
    """Main process, after summary.json: OUTPUT_DIR/final (export.merge or hub.folder merged), then the push.

    Returns what to add to the summary: {"export": path} and/or {"hub": {url, commit, uploaded, unchanged}}.
    """
    from align.export.run import export_run

    root = Path(recipe.output_dir)
    out: dict = {}
    merged = root / "final"
    if recipe.export.merge or (recipe.hub.push and recipe.hub.folder == "merged"):
        export_run(
            root,
            merged,
            merge=True,
            stage=final_stage,
            dtype=recipe.export.dtype,
            max_shard_size=recipe.export.max_shard_size,
            force=True,
        )
        out["export"] = str(merged.resolve())
    if recipe.hub.push:
        from align.hub import push_folder

        folder = merged if recipe.hub.folder == "merged" else root / final_stage
        result = push_folder(folder, recipe.hub.repo_id, recipe.hub.private, recipe.hub.revision)
        out["hub"] = {
            "repo_id": recipe.hub.repo_id,
            "url": result.url,
            "commit": result.commit,
            "uploaded": len(result.uploaded),
            "unchanged": len(result.unchanged),
        }
    return out
