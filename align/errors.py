"""Errors a user can fix. The CLI prints them on one line and exits with code 2."""


class AlignError(Exception):
    """A user error: bad recipe, bad data, unsupported model. Never a bug in align."""


class RecipeError(AlignError):
    """The recipe (or a command-line override) is invalid."""


class DataError(AlignError):
    """A data file or row is invalid; the message names the file and row."""


class ModelError(AlignError):
    """The model or tokenizer cannot be used (missing, wrong architecture, no template)."""


class OutputError(AlignError):
    """Outputs or checkpoints cannot be written or do not verify (disk full, read-only, corrupt)."""


class TrainingError(AlignError):
    """Training hit a fault the recipe can address (NaN/Inf loss or gradients); the last good checkpoint is kept."""
