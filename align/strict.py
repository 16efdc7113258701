"""Base class for every recipe section: unknown keys are errors, fields carry help text."""

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A recipe section. `extra="forbid"` makes a misspelled key an error, never a silent default."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())
