"""The `data.<stage>` section of a recipe: which sources, how they mix, what to do with bad rows."""

from typing import Literal

from pydantic import Field

from align.strict import StrictModel

Format = Literal["auto", "messages", "alpaca", "sharegpt", "preference"]


class DataSource(StrictModel):
    """One dataset: a local .jsonl/.json/.parquet file (or directory) or a hub dataset id."""

    path: str = Field(description="Local file/dir (relative to the working directory) or hub dataset id.")
    split: str = Field("train", description="Split to read (hub datasets and dict-of-splits files).")
    subset: str | None = Field(None, description="Hub dataset configuration name.")
    weight: float = Field(
        1.0,
        gt=0,
        description="Fraction of this source's rows to use (>1 repeats rows), as in handbook mixers.",
    )
    max_rows: int | None = Field(None, gt=0, description="Cap on rows read from this source.")
    format: Format = Field("auto", description="Row shape; `auto` detects it from the first row.")


class StageData(StrictModel):
    """Training and held-out data of one stage."""

    train: list[DataSource] = Field(min_length=1, description="Training sources, mixed by weight.")
    eval: list[DataSource] = Field(default_factory=list, description="Held-out sources.")
    eval_fraction: float = Field(
        0.0, ge=0, lt=1, description="Held-out share split off the training mix when `eval` is empty."
    )
    skip_bad_rows: bool = Field(
        False, description="Skip invalid rows (counted and reported) instead of stopping at the first."
    )
    shuffle: bool = Field(True, description="Shuffle the training mix (seeded by the recipe's `seed`).")
