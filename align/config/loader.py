"""Load a recipe: YAML (safe_load) + dotted overrides -> a validated `Recipe`, or one clear error."""

from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from align.config.bounds import check_section, check_value
from align.config.schema import STAGES, Recipe, StageSection
from align.config.trl_fields import OWNED_BY_ALIGN, REMOVED, check_trl_value, trl_field_types
from align.errors import RecipeError
from align.security import is_secret_key


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Parse a recipe file with `yaml.safe_load`; it must be a mapping."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML{_yaml_reason(err)}") from None
    except UnicodeDecodeError as err:
        raise RecipeError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except RecursionError:  # PyYAML recurses per nesting level
        raise RecipeError(f"{path}: nested too deeply to be a recipe") from None
    if raw is None:
        raise RecipeError(f"{path}: the recipe is empty")
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections, got {type(raw).__name__}")
    return raw


def _yaml_reason(err: yaml.YAMLError) -> str:
    """A YAML error on one line: where, and what (PyYAML's own message spans several lines)."""
    if not isinstance(err, yaml.MarkedYAMLError):
        return ": " + " ".join(str(err).split())[:200]
    mark = err.problem_mark
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    what = " ".join(filter(None, [err.context, err.problem]))
    if isinstance(err, yaml.constructor.ConstructorError):
        what += "; recipes are read with yaml.safe_load, which builds no Python objects"
    return f"{where}: {what}"


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (values parsed as YAML scalars/lists) to a copy of `raw`."""
    out = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        shown = repr(f"{key}=***" if sep and is_secret_key(key.strip()) else item)  # never echo a secret
        if not sep or not key.strip():
            raise RecipeError(f"override {shown} is not of the form key.path=value")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as err:
            raise RecipeError(f"override {shown}: value is not valid YAML{_yaml_reason(err)}") from None
        except RecursionError:
            raise RecipeError(f"override {shown}: value nested too deeply") from None
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise RecipeError(f"override {shown}: '{part}' is not a section")
            node = child
        node[parts[-1]] = value
    return out


def _closest(key: str, options: list[str]) -> str:
    match = difflib.get_close_matches(key, options, n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else ""


def _split_stage(stage: str, section: Any, source: str) -> dict[str, Any]:
    """Separate align's own stage keys from TRL fields, validating the latter."""
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise RecipeError(f"{source}: '{stage}' must be a mapping, got {type(section).__name__}")
    own = set(StageSection.model_fields) - {"trainer"}
    trl_types = trl_field_types(stage)
    kept: dict[str, Any] = {k: v for k, v in section.items() if k in own}
    trainer: dict[str, Any] = {}
    for key, value in section.items():
        if key in own:
            continue
        where = f"'{stage}.{key}' in {source}"
        if key in REMOVED:
            raise RecipeError(f"{where}: {REMOVED[key]}")
        if key in OWNED_BY_ALIGN:
            raise RecipeError(f"{where} is not set here: {OWNED_BY_ALIGN[key]}")
        if key not in trl_types:
            hint = _closest(key, sorted(own | set(trl_types)))
            raise RecipeError(f"unknown key '{stage}.{key}' in {source}{hint}")
        try:
            trainer[key] = check_trl_value(stage, key, value)
            check_value(key, trainer[key])
        except ValueError as err:
            raise RecipeError(f"{where}: {err}") from None
    try:
        check_section(stage, trainer)
    except ValueError as err:
        raise RecipeError(f"{source}: {err}") from None
    kept["trainer"] = trainer
    return kept


def _model_at(loc: tuple, model: type[BaseModel]) -> type[BaseModel] | None:
    """The pydantic model class that owns the field at `loc[:-1]` (to suggest its valid keys)."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int) or not (isinstance(current, type) and issubclass(current, BaseModel)):
            continue
        field = current.model_fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        candidates = [annotation, *typing_args(annotation)]
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def typing_args(annotation: Any) -> tuple:
    """Flattened type arguments (list[X] | None -> X, ...)."""
    out: list = []
    for arg in getattr(annotation, "__args__", ()) or ():
        out.append(arg)
        out.extend(typing_args(arg))
    return tuple(out)


UNION_TAG = re.compile(r"^(literal\[|dict\[|list\[|function-)|^[A-Z]\w*$")


def _union_tag(loc: tuple, i: int) -> bool:
    """Whether loc[i] names a union branch (pydantic's tag) rather than a key the user wrote.

    A class-name tag (`TopP`) is always followed by the branch's field; a key the user wrote that merely
    looks like one (`A: 1`) is the last element of its error (found by fuzzing).
    """
    part = loc[i]
    if not isinstance(part, str) or not UNION_TAG.match(part):
        return False
    return not part[0].isupper() or i < len(loc) - 1


def _collapse_unions(errors: list[dict]) -> list[dict]:
    """A value that matches no branch of a union gives one error per branch: keep one, at the field."""
    seen: dict[tuple, dict] = {}
    for e in errors:
        loc = tuple(e["loc"])
        cut = next((i for i in range(1, len(loc)) if _union_tag(loc, i)), None)
        if cut is None:
            seen[loc] = e
            continue
        key = loc[:cut]
        if key not in seen:
            seen[key] = {**e, "loc": key, "type": "union", "input": e.get("input")}
    return list(seen.values())


def _shown(loc: tuple, value: Any) -> str:
    """A rejected value as echoed in an error: secrets hidden, long values cut."""
    text = "'***'" if loc and is_secret_key(str(loc[-1])) and isinstance(value, str) else repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line per problem: the dotted key, the file, and what is expected."""
    lines = []
    errors = _collapse_unions(err.errors())
    # a misspelled key also leaves the key it meant "missing": the misspelling alone explains both
    misspelled = {tuple(e["loc"][:-1]) for e in errors if e["type"] == "extra_forbidden"}
    errors = [e for e in errors if not (e["type"] == "missing" and tuple(e["loc"][:-1]) in misspelled)]
    for e in errors:
        loc = tuple(e["loc"])
        dotted = ".".join(str(p) for p in loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            owner = _model_at(loc, Recipe)
            hint = _closest(str(loc[-1]), list(owner.model_fields)) if owner else ""
            lines.append(f"unknown key '{dotted}' in {source}{hint}")
        elif e["type"] == "union":
            owner = _model_at(loc, Recipe)
            field = owner.model_fields.get(str(loc[-1])) if owner else None
            expected = field.description if field is not None else "a different value"
            lines.append(f"'{dotted}' in {source}: invalid value {_shown(loc, e.get('input'))}; expected: {expected}")
        elif e["type"] == "missing":
            lines.append(f"missing key '{dotted}' in {source}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            value = e.get("input")
            # a section-level check (the input is a whole section) or a message that already shows the value
            echo = loc and not isinstance(value, dict) and repr(value) not in msg
            got = f" (got {_shown(loc, value)})" if echo else ""
            lines.append(f"'{dotted}' in {source}: {msg}{got}")
    return "\n".join(lines)


def recipe_from_dict(raw: dict[str, Any], source: str = "<recipe>") -> Recipe:
    """Validate a raw mapping into a `Recipe`; TRL pass-through keys land in `<stage>.trainer`."""
    raw = dict(raw)
    for stage in STAGES:
        if stage in raw:
            raw[stage] = _split_stage(stage, raw[stage], source)
    try:
        return Recipe.model_validate(raw)
    except ValidationError as err:
        raise RecipeError(format_validation_error(err, source)) from None


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe file."""
    raw = apply_overrides(read_yaml(path), overrides or [])
    return recipe_from_dict(raw, source=str(path))
