"""Search expressions over experiments: ``network.threshold=0.3``, ``accuracy>0.9``,
``tag=baseline`` (``GET /v1/experiments?filter=...``, ``Client.experiments(filters=...)``,
``fflab status --filter``).

An expression is ``<field><operator><value>``:

- operators: ``=``, ``!=``, ``<``, ``<=``, ``>``, ``>=``;
- fields (``allowed_fields``): the experiment's own columns (``name``, ``status``,
  ``owner``, ``visibility``, ``priority``, ``created_at``, ``tag``: has this tag),
  every field of the spec as a dotted path (``network.threshold``, ``ff.epochs``,
  ``models``, ``analysis.table_quantile``, ...; ``fflab spec`` prints them), and the
  metrics: ``accuracy.<model>.<dataset>`` (the mean test accuracy of that model's
  finished runs trained on all classes, on that data set), ``accuracy.<model>``
  (the mean over its data sets) and ``accuracy`` (the best model's); an experiment without
  such runs has no value and matches no comparison;
- values: JSON where it parses (``0.3``, ``true``, ``null``, ``["ff"]``), a plain
  string otherwise (``name=baseline``); a list field (``models``, ``seeds``) with a
  single value tests membership (``models=ff``: trains FF). Numbers must be finite
  and within ±2^53; ``<``/``>`` apply to numbers and to ``created_at`` (ISO 8601
  with a time zone) only.

Several expressions must all hold. Parsing is a regular expression and
``json.loads``: nothing is evaluated. A bad expression raises ``FilterError``
naming what is allowed (and the nearest field: "did you mean ...").
"""

from __future__ import annotations

import difflib
import json
import math
import re
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from fflab.analysis.experiment_comparison import flatten
from fflab.data import DATASETS
from fflab.models import MODELS
from fflab.spec import build_spec

__all__ = ["COLUMN_FIELDS", "Condition", "FilterError", "MAX_FILTERS", "allowed_fields", "experiment_metrics",
           "matches", "metric_fields", "parse_filter", "parse_filters", "spec_fields"]

OPERATORS = ("<=", ">=", "!=", "=", "<", ">")
ORDERING = {"<", "<=", ">", ">="}
# The experiment's own columns (applied in SQL).
COLUMN_FIELDS = ("name", "status", "owner", "visibility", "priority", "created_at", "tag")
MAX_FILTERS = 20
MAX_LENGTH = 300
MAX_EXACT_INTEGER = 2 ** 53
EXPRESSION = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(<=|>=|!=|=|<|>)\s*(.*?)\s*", re.DOTALL)


class FilterError(ValueError):
    """A filter that cannot be applied: ``message`` says why and what is allowed."""

    def __init__(self, expression: str, message: str, allowed: str | None = None):
        super().__init__(message)
        self.expression, self.message, self.allowed = expression, message, allowed


@dataclass(frozen=True)
class Condition:
    """One parsed expression."""

    field: str
    operator: str
    value: Any
    expression: str

    @property
    def kind(self) -> str:
        """``column``, ``metric`` or ``spec``."""
        if self.field in COLUMN_FIELDS:
            return "column"
        return "metric" if self.field in metric_fields() else "spec"


@lru_cache(maxsize=1)
def spec_fields() -> dict[str, Any]:
    """Every dotted spec field with its default value (the ``quick`` preset's), whose
    type says which values a filter on it takes."""
    return flatten(build_spec("quick").model_dump(mode="json"))


@lru_cache(maxsize=1)
def metric_fields() -> tuple[str, ...]:
    return ("accuracy", *(f"accuracy.{m}" for m in MODELS),
            *(f"accuracy.{m}.{d}" for m in MODELS for d in DATASETS))


def allowed_fields() -> list[str]:
    return [*COLUMN_FIELDS, *metric_fields(), *spec_fields()]


def _check_text(expression: str, text: str) -> None:
    for character in text:
        if 0xD800 <= ord(character) <= 0xDFFF:
            raise FilterError(expression, "a filter must be valid Unicode text: it holds a lone surrogate")
        if ord(character) < 32 or ord(character) == 127:
            raise FilterError(expression, "a filter must not hold control characters")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a filter can compare with")


def _check_number(expression: str, value: Any) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise FilterError(expression, "numbers must be finite", "a finite number within ±2^53")
    if isinstance(value, (int, float)) and abs(value) > MAX_EXACT_INTEGER:
        raise FilterError(expression, f"the number {value:.3g} is out of range", "a finite number within ±2^53")
    if isinstance(value, list):
        for item in value:
            _check_number(expression, item)


def _value(expression: str, raw: str) -> Any:
    if raw == "":
        raise FilterError(expression, "the value is missing", "a value after the operator, e.g. 0.3 or null")
    try:
        value = json.loads(raw, parse_constant=_reject_constant)
    except ValueError as error:
        if "not a number a filter can compare" in str(error):
            raise FilterError(expression, "NaN and Infinity are not values a filter can compare with",
                              "a finite number within ±2^53") from None
        return raw  # a plain string
    if isinstance(value, dict):
        raise FilterError(expression, "an object is not a value a filter can compare with",
                          "a number, string, true, false, null or a list")
    _check_number(expression, value)
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def nearest_fields(field: str) -> list[str]:
    return difflib.get_close_matches(field, allowed_fields(), n=3, cutoff=0.6)


def did_you_mean(field: str) -> str:
    close = nearest_fields(field)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def parse_filter(expression: str) -> Condition:
    """One expression as a ``Condition``; ``FilterError`` where it cannot be applied."""
    if not isinstance(expression, str):
        raise FilterError(str(expression), "a filter must be text")
    if len(expression) > MAX_LENGTH:
        raise FilterError(expression[:40] + "...", f"a filter may have at most {MAX_LENGTH} characters")
    _check_text(expression, expression)
    match = EXPRESSION.fullmatch(expression)
    if match is None:
        raise FilterError(expression, "expected <field><operator><value>, e.g. network.threshold=0.3 or "
                                      "accuracy>0.9", "operators: " + " ".join(OPERATORS))
    field, operator, raw = match.groups()
    if field not in allowed_fields():
        close = nearest_fields(field)  # first: a long list is cut where it is shown
        raise FilterError(expression, f"unknown field {field!r}{did_you_mean(field)}",
                          ", ".join([*close, *(name for name in allowed_fields() if name not in close)]))
    value = raw if field in COLUMN_FIELDS else _value(expression, raw)
    condition = Condition(field, operator, value, expression)
    if field in COLUMN_FIELDS:
        if field == "created_at":
            try:
                parsed = datetime.fromisoformat(raw)
            except ValueError:
                parsed = None
            if parsed is None or parsed.tzinfo is None:
                raise FilterError(expression, "created_at takes an ISO 8601 time with a time zone",
                                  "e.g. 2026-12-01T00:00:00+00:00")
            return Condition(field, operator, parsed, expression)
        if operator in ORDERING:
            raise FilterError(expression, f"{field} takes = or != only", "= !=")
        if raw == "":
            raise FilterError(expression, "the value is missing", f"a {field} after the operator")
        return condition
    if field in metric_fields():
        if not _is_number(value):
            raise FilterError(expression, f"{field} is a number: compare it with a number", "e.g. accuracy>0.9")
        return condition
    default = spec_fields()[field]
    if _is_number(default) and value is not None and not _is_number(value):
        raise FilterError(expression, f"{field} is a number: {raw!r} is not", "a number or null")
    if isinstance(default, bool) and value is not None and not isinstance(value, bool):
        raise FilterError(expression, f"{field} is true or false: {raw!r} is neither", "true false")
    if operator in ORDERING and not (_is_number(value) and (default is None or _is_number(default))):
        raise FilterError(expression, f"{operator} compares numbers: {field} = {json.dumps(default)} by default",
                          "= !=")
    return condition


def parse_filters(expressions: list[str]) -> list[Condition]:
    if len(expressions) > MAX_FILTERS:
        raise FilterError(f"{len(expressions)} filters", f"at most {MAX_FILTERS} filters at once")
    return [parse_filter(expression) for expression in expressions]


def _compare(actual: Any, operator: str, wanted: Any) -> bool:
    if isinstance(actual, list) and not isinstance(wanted, list) and operator in ("=", "!="):
        return (wanted in actual) == (operator == "=")
    if operator == "=":
        return bool(actual == wanted)
    if operator == "!=":
        return bool(actual != wanted)
    if not (_is_number(actual) and _is_number(wanted)) and not (
            isinstance(actual, datetime) and isinstance(wanted, datetime)):
        return False
    result: bool = {"<": actual < wanted, "<=": actual <= wanted, ">": actual > wanted, ">=": actual >= wanted}[operator]
    return result


def matches(condition: Condition, flat_spec: dict[str, Any], metrics: dict[str, float]) -> bool:
    """Whether a spec (``flatten``-ed) and its metrics (``metric_fields`` -> value)
    satisfy a spec or metric condition. A field the spec lacks is null; a metric
    the experiment has no value for matches nothing."""
    if condition.kind == "metric":
        value = metrics.get(condition.field)
        return value is not None and _compare(value, condition.operator, condition.value)
    return _compare(flat_spec.get(condition.field), condition.operator, condition.value)


def experiment_metrics(groups: list[tuple[str, str, float | None]]) -> dict[str, float]:
    """The metric fields of one experiment from its (model, dataset, mean accuracy)
    groups: ``accuracy.<model>.<dataset>``, ``accuracy.<model>`` (its data sets'
    runs pooled: the mean of the groups weighted equally) and ``accuracy`` (the
    highest ``accuracy.<model>``)."""
    metrics: dict[str, float] = {}
    per_model: dict[str, list[float]] = {}
    for model, dataset, accuracy in groups:
        if accuracy is None:
            continue
        metrics[f"accuracy.{model}.{dataset}"] = float(accuracy)
        per_model.setdefault(model, []).append(float(accuracy))
    for model, values in per_model.items():
        metrics[f"accuracy.{model}"] = sum(values) / len(values)
    if per_model:
        metrics["accuracy"] = max(metrics[f"accuracy.{model}"] for model in per_model)
    return metrics
