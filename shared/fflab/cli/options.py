"""What the verbs share: reading a spec from a preset, a JSON file and
``--set KEY=VALUE`` assignments, and printing validation errors by field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from fflab.spec import ExperimentSpec, build_spec, deep_merge


def validation_message(error: ValidationError) -> str:
    """One line per problem: the field's dotted path and what is allowed."""
    lines = []
    for problem in error.errors():
        where = ".".join(str(part) for part in problem["loc"]) or "spec"
        lines.append(f"  {where}: {problem['msg']}")
    return "invalid settings:\n" + "\n".join(lines)


def parse_overrides(assignments: tuple[str, ...]) -> dict[str, Any]:
    """``("ff.epochs=3", 'models=["ff"]')`` -> ``{"ff": {"epochs": 3}, "models": ["ff"]}``.

    Values are read as JSON when they parse, else as strings; a value that starts
    like a JSON list, object or string (``[``, ``{``, ``"``) must parse.
    """
    overrides: dict[str, Any] = {}
    for assignment in assignments:
        path, sep, raw = assignment.partition("=")
        if not sep or not path:
            raise click.BadParameter(f"expected KEY=VALUE, got {assignment!r}", param_hint="--set")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as error:
            if raw.lstrip()[:1] in ("[", "{", '"'):
                raise click.BadParameter(f"{path}: {raw!r} is not valid JSON ({error.msg} at character "
                                         f"{error.pos})", param_hint="--set") from None
            value = raw
        target = overrides
        *parents, leaf = path.split(".")
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = value
    return overrides


def read_overrides(spec_file: Path | None, assignments: tuple[str, ...]) -> dict[str, Any]:
    """A (partial) JSON spec file with ``--set`` assignments merged over it."""
    overrides: dict[str, Any] = {}
    if spec_file is not None:
        try:
            overrides = json.loads(spec_file.read_text())
        except json.JSONDecodeError as error:
            raise click.BadParameter(f"{spec_file} is not valid JSON: {error}", param_hint="--spec") from error
    return deep_merge(overrides, parse_overrides(assignments))


def load_spec(preset: str | None, spec_file: Path | None, assignments: tuple[str, ...]) -> ExperimentSpec:
    overrides = read_overrides(spec_file, assignments)
    try:
        return build_spec(preset, overrides)
    except ValidationError as error:
        raise click.UsageError(validation_message(error)) from None
    except ValueError as error:
        raise click.UsageError(str(error)) from None
