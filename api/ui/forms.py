"""Form fields <-> request bodies of the API, and the API's errors next to the
fields they name.

A form's values stay strings until ``number`` reads them: what is not a number
is passed on as typed, so that the API's own validation names the field and says
what it allows, exactly as a JSON client would be told. ``field_errors`` reads an
API error body in either shape the API has had: FastAPI's ``detail`` list of
``{loc, msg}`` or problem+json's ``details`` list of ``{field, message}``;
``form_errors`` then files each message under the form field that holds it.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fflab.models import MODELS
from fflab.spec import PRESETS, build_spec, deep_merge

LOCATIONS = ("body", "query", "path", "header", "cookie")
GENERAL = ""  # errors that name no field of the form: shown above it


def number(text: str) -> Any:
    """``text`` as an int or a float when it is one, else unchanged.

    >>> number("3"), number(" 0.5 "), number("1e-3"), number("three")
    (3, 0.5, 0.001, 'three')
    """
    stripped = text.strip()
    try:
        return int(stripped)
    except ValueError:
        pass
    try:
        return float(stripped)
    except ValueError:
        return text


def number_list(text: str) -> list[Any]:
    """Comma- or space-separated numbers, each as ``number`` reads it."""
    return [number(part) for part in re.split(r"[,\s]+", text.strip()) if part]


def tag_list(text: str) -> list[str]:
    """Comma-separated tags, each stripped; blanks dropped (a tag with a space in it
    stays whole, for the API to refuse naming it).

    >>> tag_list(" baseline, theta:0.5,, my tag ")
    ['baseline', 'theta:0.5', 'my tag']
    """
    return [part.strip() for part in text.split(",") if part.strip()]


def tag_messages(errors: Mapping[str, list[str]], tags: list[str]) -> dict[str, list[str]]:
    """``errors`` with each message on one tag (``tags.2``) starting with that tag,
    so that a person sees which of the tags they typed was refused."""
    out: dict[str, list[str]] = {}
    for name, messages in errors.items():
        head, _, index = name.partition(".")
        if head == "tags" and index.isdigit() and int(index) < len(tags):
            messages = [f"tag {tags[int(index)]!r}: {message}" for message in messages]
        out.setdefault(name, []).extend(messages)
    return out


def gives(document: Any, parts: list[str]) -> bool:
    """Whether ``document`` (a parsed JSON body) holds the field at the dotted path
    ``parts``; a key may itself hold dots (a sweep's ``network.threshold``)."""
    if not parts:
        return True
    if isinstance(document, Mapping):
        for end in range(len(parts), 0, -1):
            key = ".".join(parts[:end])
            if key in document:
                return gives(document[key], parts[end:])
        return False
    if isinstance(document, list) and parts[0].isdigit() and int(parts[0]) < len(document):
        return gives(document[int(parts[0])], parts[1:])
    return False


def _dotted(parts: Iterable[Any]) -> str:
    parts = list(parts)
    if parts and parts[0] in LOCATIONS:
        parts = parts[1:]
    return ".".join(str(part) for part in parts)


def field_errors(body: Mapping[str, Any]) -> dict[str, list[str]]:
    """``{dotted field: [message, ...]}`` of an API error body.

    Understands problem+json (``details``: ``[{"field": "ff.epochs", "message": ...}]``)
    and FastAPI's validation body (``detail``: ``[{"loc": ["body", "ff", "epochs"],
    "msg": ...}]``); the location (body, query, ...) is dropped. A message naming
    no field (a string ``detail``, or ``message`` without ``details``) is filed
    under ``GENERAL``.
    """
    errors: dict[str, list[str]] = {}
    details = body.get("details")
    detail = body.get("detail")
    if isinstance(details, list) and details:
        for entry in details:
            name = str(entry.get("field") or "")
            name = _dotted(name.split(".")) if name else GENERAL
            errors.setdefault(name, []).append(str(entry.get("message", "")))
    elif isinstance(detail, list):
        for entry in detail:
            errors.setdefault(_dotted(entry.get("loc", ())), []).append(str(entry.get("msg", "")))
    else:
        message = body.get("message") or detail or body.get("title") or "the request failed"
        errors[GENERAL] = [str(message)]
    return errors


def form_errors(errors: Mapping[str, list[str]], fields: Mapping[str, str]) -> dict[str, list[str]]:
    """``errors`` (by dotted API field) by form field: ``fields`` maps an API field
    (and everything below it) to the form field holding it; the longest match
    wins. Where one form field holds several API fields (the epochs of every
    model), or a message names no form field, it starts with its API field
    (``ff.epochs: ...``). Unmatched messages go under ``GENERAL``."""
    holders = Counter(fields.values())
    out: dict[str, list[str]] = {}
    for name, messages in errors.items():
        matches = [api for api in fields if name == api or name.startswith(api + ".")]
        target = fields[max(matches, key=len)] if matches else GENERAL
        prefix = f"{name}: " if name and (target == GENERAL or holders[target] > 1) else ""
        out.setdefault(target, []).extend(prefix + message for message in messages)
    return out


# ----------------------------------------------------------------------------- submit

SUBMIT_FIELDS = {
    "preset": "preset", "name": "name", "visibility": "visibility", "models": "models",
    "datasets": "datasets", "seeds": "seeds", "data.train_subset": "train_subset",
    "data.test_subset": "test_subset", "network.threshold": "threshold", "tags": "tags", "sweep": "sweep",
    "priority": "priority",
    **{f"{model}.{name}": name for model in MODELS for name in ("epochs", "learning_rate", "batch_size")},
}
SPEC_JSON = "spec_json"  # the pasted JSON's box; messages on the fields it gives go there
TRAINING_FIELDS = ("epochs", "learning_rate", "batch_size")  # set on every chosen model
FULL_BATCH = ("full", "null", "none")


class SpecJsonError(ValueError):
    """The pasted JSON is no JSON object."""


def training_value(name: str, text: str) -> Any:
    """A per-model training field as typed: a number, or null for a full batch."""
    if name == "batch_size" and text.strip().lower() in FULL_BATCH:
        return None
    return number(text)


@dataclass
class SubmitForm:
    """The submit form's values as typed: a preset, its common overrides, a sweep of
    one setting, and a pasted JSON body (``spec_json``: the fields it gives win
    over the form's, as a JSON client would send them)."""

    preset: str = "quick"
    name: str = ""
    visibility: str = "private"
    models: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    seeds: str = ""
    epochs: str = ""
    train_subset: str = ""
    test_subset: str = ""
    threshold: str = ""
    learning_rate: str = ""
    batch_size: str = ""
    tags: str = ""
    priority: str = "normal"
    sweep_field: str = ""
    sweep_values: str = ""
    spec_json: str = ""

    @classmethod
    def for_preset(cls, preset: str = "quick") -> SubmitForm:
        """The form as first shown: the preset's models, data sets and seeds; the
        other fields blank (blank = the preset's value)."""
        spec = build_spec(preset)
        return cls(preset=preset, models=list(spec.models), datasets=list(spec.datasets),
                   seeds=", ".join(str(seed) for seed in spec.seeds))

    @classmethod
    def from_form(cls, form: Any) -> SubmitForm:
        """From a posted form (starlette's FormData: ``get`` and ``getlist``)."""
        text = {name: str(form.get(name) or "") for name in
                ("preset", "name", "visibility", "seeds", "epochs", "train_subset", "test_subset", "threshold",
                 "learning_rate", "batch_size", "tags", "priority", "sweep_field", "sweep_values", "spec_json")}
        return cls(**text, models=[str(m) for m in form.getlist("models")],
                   datasets=[str(d) for d in form.getlist("datasets")])

    def body(self) -> dict[str, Any]:
        """The body of POST /v1/experiments this form stands for: the form's fields,
        with the pasted JSON's merged over them (SpecJsonError if it is no object)."""
        body: dict[str, Any] = {"preset": self.preset or None, "models": self.models,
                                "datasets": self.datasets, "seeds": number_list(self.seeds)}
        if self.visibility:
            body["visibility"] = self.visibility
        if self.priority:
            body["priority"] = self.priority
        if self.name.strip():
            body["name"] = self.name.strip()
        if tag_list(self.tags):
            body["tags"] = tag_list(self.tags)
        training = {name: training_value(name, getattr(self, name)) for name in TRAINING_FIELDS
                    if getattr(self, name).strip()}
        if training:
            for model in self.models:
                body[model] = dict(training)
        data = {name: number(getattr(self, name)) for name in ("train_subset", "test_subset")
                if getattr(self, name).strip()}
        if data:
            body["data"] = data
        if self.threshold.strip():
            body["network"] = {"threshold": number(self.threshold)}
        if self.sweep_field.strip() or self.sweep_values.strip():
            body["sweep"] = {self.sweep_field.strip(): number_list(self.sweep_values)}
        pasted = self.pasted()
        return deep_merge(body, pasted) if pasted else body

    def pasted(self) -> dict[str, Any] | None:
        """The pasted JSON object (None: the box is blank); SpecJsonError otherwise."""
        if not self.spec_json.strip():
            return None
        try:
            document = json.loads(self.spec_json)
        except json.JSONDecodeError as error:
            raise SpecJsonError(f"not valid JSON: {error.msg} (line {error.lineno}, column {error.colno})") from None
        if not isinstance(document, dict):
            raise SpecJsonError("give a JSON object: the body of POST /v1/experiments (a preset and the fields "
                                "over it, or a whole spec)")
        return document

    def errors(self, api_errors: Mapping[str, list[str]]) -> dict[str, list[str]]:
        """The API's errors by form field (``form_errors``); a message on a field the
        pasted JSON gives goes under the JSON's box and starts with that field."""
        try:
            pasted = self.pasted() or {}
        except SpecJsonError as error:
            return {SPEC_JSON: [str(error)]}
        api_errors = tag_messages(api_errors, tag_list(self.tags))
        from_json = {name: messages for name, messages in api_errors.items()
                     if name and gives(pasted, name.split("."))}
        out = form_errors({name: m for name, m in api_errors.items() if name not in from_json}, SUBMIT_FIELDS)
        for name, messages in from_json.items():
            out.setdefault(SPEC_JSON, []).extend(f"{name}: {message}" for message in messages)
        return out

    def preset_hints(self) -> dict[str, str]:
        """What a blank field means, from the preset (for placeholders)."""
        try:
            spec = build_spec(self.preset if self.preset in PRESETS else "quick")
        except ValueError:
            return {}
        epochs = ", ".join(f"{model} {spec.training(model).epochs}" for model in MODELS)
        rates = ", ".join(f"{model} {spec.training(model).learning_rate:g}" for model in MODELS)
        batches = ", ".join(f"{model} {spec.training(model).batch_size or 'full'}" for model in MODELS)
        return {"epochs": f"preset: {epochs}", "learning_rate": f"preset: {rates}",
                "batch_size": f"preset: {batches}", "train_subset": f"preset: {spec.data.train_subset or 60000}",
                "test_subset": f"preset: {spec.data.test_subset or 10000}",
                "threshold": f"preset: {spec.network.threshold:g}"}


# ----------------------------------------------------------------------------- edit

EDIT_FIELDS = {"name": "name", "tags": "tags", "visibility": "visibility"}


@dataclass
class EditForm:
    """An experiment's name, tags (comma-separated) and visibility, as typed: the
    body of PATCH /v1/experiments/{id}."""

    name: str = ""
    tags: str = ""
    visibility: str = "private"

    @classmethod
    def of(cls, name: str, tags: Iterable[str], visibility: str) -> EditForm:
        return cls(name=name, tags=", ".join(tags), visibility=visibility)

    @classmethod
    def from_form(cls, form: Any) -> EditForm:
        return cls(**{name: str(form.get(name) or "") for name in ("name", "tags", "visibility")})

    def body(self) -> dict[str, Any]:
        """Every field: a blank name is sent as typed, for the API to refuse; blank
        tags clear them."""
        return {"name": self.name.strip(), "tags": tag_list(self.tags), "visibility": self.visibility}

    def errors(self, api_errors: Mapping[str, list[str]]) -> dict[str, list[str]]:
        return form_errors(tag_messages(api_errors, tag_list(self.tags)), EDIT_FIELDS)


# ----------------------------------------------------------------------------- re-analysis

ANALYSIS_FIELDS = {name: name for name in
                   ("quantiles", "table_quantile", "figure_quantile", "method1_threshold", "histogram_bins",
                    "epsilon", "method2_cut", "rho_cut", "nh_cut", "correct_only")}
TEXT_FIELDS = ("table_quantile", "figure_quantile", "histogram_bins", "epsilon", "rho_cut", "nh_cut")


@dataclass
class AnalysisForm:
    """The re-analysis form's values as typed (blank cuts: automatic)."""

    quantiles: str = ""
    table_quantile: str = ""
    figure_quantile: str = ""
    method1_threshold: str = "quantile"
    histogram_bins: str = ""
    epsilon: str = ""
    method2_cut: str = "isolated"
    rho_cut: str = ""
    nh_cut: str = ""
    correct_only: bool = True

    @classmethod
    def from_spec(cls, analysis: Mapping[str, Any]) -> AnalysisForm:
        def text(value: Any) -> str:
            return "" if value is None else f"{value:g}" if isinstance(value, float) else str(value)

        return cls(quantiles=", ".join(text(q) for q in analysis.get("quantiles", [])),
                   method1_threshold=str(analysis.get("method1_threshold", "quantile")),
                   method2_cut=str(analysis.get("method2_cut", "isolated")),
                   **{name: text(analysis.get(name)) for name in TEXT_FIELDS},
                   correct_only=bool(analysis.get("correct_only", True)))

    @classmethod
    def from_form(cls, form: Any) -> AnalysisForm:
        text = {name: str(form.get(name) or "") for name in
                ("quantiles", "method1_threshold", "method2_cut", *TEXT_FIELDS)}
        return cls(**text, correct_only=form.get("correct_only") is not None)

    def body(self) -> dict[str, Any]:
        """The body of POST .../analyses (an AnalysisSpec); blank numbers are left
        to the spec's defaults, blank cuts are null (automatic)."""
        body: dict[str, Any] = {"correct_only": self.correct_only}
        if self.quantiles.strip():
            body["quantiles"] = number_list(self.quantiles)
        for name in ("method1_threshold", "method2_cut"):
            if getattr(self, name):
                body[name] = getattr(self, name)
        for name in ("table_quantile", "figure_quantile", "histogram_bins", "epsilon"):
            if getattr(self, name).strip():
                body[name] = number(getattr(self, name))
        for name in ("rho_cut", "nh_cut"):
            value = getattr(self, name)
            body[name] = number(value) if value.strip() else None
        return body
