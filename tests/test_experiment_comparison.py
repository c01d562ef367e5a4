"""Experiments and runs compared with each other, in the library: the statistics
against known answers and scipy, the Jaccard index on hand-built sets, the spec
diff, the comparison document from hand-built sides and its figures, and the
search expressions (parsed, refused, matched)."""

from __future__ import annotations

import io
import math
from datetime import UTC, datetime

import numpy as np
import pytest
from scipy import stats

from fflab import comparison, experiment_search
from fflab.analysis.experiment_comparison import (
    compare_samples,
    ensemble_overlaps,
    estimate,
    flatten,
    jaccard,
    spec_differences,
)
from fflab.experiment_search import FilterError, matches, parse_filter, parse_filters


def test_jaccard_known_answers() -> None:
    assert jaccard({1, 2, 3}, {2, 3, 4}) == 0.5
    assert jaccard([1, 2], [1, 2]) == 1.0
    assert jaccard(set(), set()) == 1.0  # both runs agree: no ensemble
    assert jaccard({7}, set()) == 0.0
    assert jaccard({1, 2, 3, 4}, {4, 5}) == pytest.approx(1 / 5)


def test_ensemble_overlaps_pairs_only_the_classes_both_runs_analysed() -> None:
    a = {(1, 0): [1, 2, 3], (1, 1): [], (2, 0): [5]}
    b = {(1, 0): [2, 3, 4], (1, 1): [], (1, 2): [9]}
    overlaps = ensemble_overlaps(a, b)
    assert [(o.layer, o.class_index, o.size_a, o.size_b, o.shared, o.jaccard) for o in overlaps] == [
        (1, 0, 3, 3, 2, 0.5), (1, 1, 0, 0, 0, 1.0)]


def test_welch_t_known_answer() -> None:
    d = compare_samples([1, 2, 3], [4, 5, 6])
    assert d.difference == 3.0
    assert d.combined_se == pytest.approx(math.sqrt(2 / 3))
    assert d.df == pytest.approx(4.0)  # (2/3)^2 / (2 * (1/3)^2 / 2)
    assert d.t == pytest.approx(3 / math.sqrt(2 / 3))
    assert d.p == pytest.approx(2 * stats.t.sf(3 / math.sqrt(2 / 3), 4))
    assert d.p == pytest.approx(0.0213, abs=1e-4) and d.verdict == "differs"
    low, high = d.ci
    assert (low + high) / 2 == pytest.approx(3.0) and high - 3.0 == pytest.approx(2.776445 * math.sqrt(2 / 3))


@pytest.mark.parametrize("seed", range(5))
def test_welch_t_equals_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(0.9, 0.01, 2 + seed), rng.normal(0.91, 0.03, 3 + 2 * seed)
    d = compare_samples(list(a), list(b))
    reference = stats.ttest_ind(b, a, equal_var=False)
    assert d.t == pytest.approx(reference.statistic) and d.p == pytest.approx(reference.pvalue)
    assert d.df == pytest.approx(reference.df)
    assert d.verdict == ("differs" if reference.pvalue < 0.05 else "consistent")


def test_one_run_a_side_has_no_error_bar_and_no_verdict() -> None:
    d = compare_samples([0.9], [0.8, 0.82])
    assert d.verdict == "no error bar" and d.difference == pytest.approx(-0.09)
    assert d.t is None and d.p is None and "side A" in d.note
    assert compare_samples([], [0.8]).verdict == "not comparable"
    assert compare_samples([None, float("nan")], [0.8, 0.7]).verdict == "not comparable"
    same = compare_samples([0.5, 0.5], [0.5, 0.5])
    assert same.verdict == "no error bar" and same.p is None
    assert estimate([1.0, None, 3.0]) == estimate([1.0, 3.0])
    with pytest.raises(ValueError, match="confidence"):
        compare_samples([1, 2], [3, 4], confidence=95)


def test_spec_differences_flag_only_the_differing_fields() -> None:
    a = {"network": {"threshold": 0.3, "width": 784}, "seeds": [0, 1], "name": "a"}
    b = {"network": {"threshold": 0.5, "width": 784}, "seeds": [0, 1], "name": "b", "extra": None}
    assert flatten(a) == {"network.threshold": 0.3, "network.width": 784, "seeds": [0, 1], "name": "a"}
    fields = {f.field: (f.values, f.differs) for f in spec_differences([a, b])}
    assert fields["network.threshold"] == ([0.3, 0.5], True)
    assert fields["network.width"] == ([784, 784], False)
    assert fields["seeds"][1] is False and fields["name"][1] is True
    assert fields["extra"] == (["(absent)", None], True)
    with pytest.raises(ValueError, match="at least 2"):
        spec_differences([a])


def record(run_id: str, model: str, seed: int, accuracy: float, sizes: list[list[int | None]],
           positive: list[float]) -> dict:
    return {"run_id": run_id, "model": model, "dataset": "mnist", "seed": seed, "unseen_class": None,
            "accuracy": accuracy, "ensemble_sizes_method1": sizes, "fraction_positive_weights": positive}


def side(label: str, threshold: float, accuracies: list[float], units: dict) -> comparison.Side:
    spec = {"name": label, "network": {"threshold": threshold, "layers": 2},
            "analysis": {"quantiles": [0.9, 0.99], "table_quantile": 0.99}}
    records = [record(f"ff-mnist-seed{s}", "ff", s, a, [[10, 20], [4, None]], [0.4 + s / 100, 0.5])
               for s, a in enumerate(accuracies)]
    return comparison.Side(label=label, experiment=label, run_id=None, name=label, spec=spec, records=records,
                           losses={r["run_id"]: [[1.0, 0.8, 0.7], [0.9, 0.6, 0.5]] for r in records},
                           ensembles={r["run_id"]: units for r in records}, runs_total=len(records))


def test_compare_sides_cells_overlaps_text_and_figures() -> None:
    a = side("a", 0.3, [0.90, 0.92, 0.91], {(1, 0): [1, 2, 3], (2, 0): []})
    b = side("b", 0.5, [0.80, 0.81], {(1, 0): [2, 3, 4], (2, 0): []})
    quantile = comparison.common_quantile([a.spec, b.spec])
    assert quantile == 0.99
    found = comparison.compare_sides([a, b], quantile)
    assert [f.field for f in found.spec if f.differs] == ["name", "network.threshold"]
    accuracy = next(c for c in found.tables if c.table == "table1")
    assert [e.n for e in accuracy.estimates] == [3, 2] and accuracy.estimates[0].mean == pytest.approx(0.91)
    welch = compare_samples([0.90, 0.92, 0.91], [0.80, 0.81])
    assert accuracy.differences[0].p == pytest.approx(welch.p) and accuracy.differences[0].verdict == "differs"
    sizes = [c for c in found.tables if c.table == "table2"]
    assert [c.layer for c in sizes] == [1, 2] and sizes[0].estimates[0].mean == 15.0  # mean over classes
    assert sizes[1].estimates[0].mean == 4.0  # the class without analysed images is left out
    assert sizes[0].differences[0].verdict == "no error bar"  # no spread on either side
    # The reference's seeds 0 and 1 pair with b's; seed 2 has no partner.
    pairs = {(o.run_a, o.run_b, o.layer, o.jaccard) for o in found.overlaps}
    assert pairs == {(f"ff-mnist-seed{s}", f"ff-mnist-seed{s}", layer, j) for s in (0, 1)
                     for layer, j in ((1, 0.5), (2, 1.0))}
    text = comparison.to_markdown(found)
    assert "network.threshold" in text and "differs" in text and "0.5" in text
    csv_text = comparison.to_csv(found)
    assert csv_text.splitlines()[0].startswith("table,model,dataset,layer") and len(csv_text.splitlines()) == 6
    for name in comparison.FIGURES:
        buffer = io.BytesIO()
        comparison.figure(name, found, [a, b]).savefig(buffer, format="png")
        assert buffer.getvalue()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="figure must be one of"):
        comparison.figure("nope", found, [a, b])
    with pytest.raises(ValueError, match="2-8"):
        comparison.compare_sides([a], quantile)


def test_two_single_runs_are_paired_and_no_common_quantile_means_no_overlaps() -> None:
    a = side("a", 0.3, [0.9], {(1, 0): [1, 2]})
    b = side("b", 0.3, [0.9, 0.8], {(1, 0): [2]})
    b.records, b.run_id = b.records[1:], "ff-mnist-seed1"
    found = comparison.compare_sides([a, b], 0.99)
    assert [(o.run_a, o.run_b, o.jaccard) for o in found.overlaps] == [("ff-mnist-seed0", "ff-mnist-seed1", 0.5)]
    b.spec = {**b.spec, "analysis": {"quantiles": [0.95], "table_quantile": 0.95}}
    assert comparison.common_quantile([a.spec, b.spec]) is None
    assert comparison.compare_sides([a, b], None).overlaps == []


def test_search_expressions_parse() -> None:
    c = parse_filter("network.threshold=0.3")
    assert (c.field, c.operator, c.value, c.kind) == ("network.threshold", "=", 0.3, "spec")
    assert parse_filter("accuracy>=0.9").kind == "metric"
    assert parse_filter("accuracy.ff.mnist < 0.5").value == 0.5
    assert parse_filter("name=quick run").value == "quick run"
    assert parse_filter("tag=baseline").kind == "column"
    assert parse_filter("models=ff").value == "ff"
    assert parse_filter("ff.batch_size=null").value is None
    assert parse_filter("created_at>2026-01-01T00:00:00+00:00").value == datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("expression, message", [
    ("network.treshold=0.3", "did you mean network.threshold"),
    ("acuracy>0.9", "did you mean accuracy"),
    ("network.threshold=NaN", "NaN and Infinity"),
    ("network.threshold>Infinity", "NaN and Infinity"),
    ("network.threshold=1e999", "finite"),
    ("network.threshold=" + "9" * 200, "out of range"),
    ("network.threshold=-1e300", "out of range"),
    ("network.threshold=abc", "is a number"),
    ("network.threshold", "expected <field><operator><value>"),
    ("network.threshold=", "value is missing"),
    ("name>abc", "= or != only"),
    ("models>1", "compares numbers"),
    ("accuracy=high", "is a number"),
    ("tf32=3", "true or false"),
    ("created_at>yesterday", "ISO 8601"),
    ("created_at>2026-01-01T00:00:00", "ISO 8601"),
    ("name=\ud800", "lone surrogate"),
    ("name=a\x00b", "control characters"),
    ("__import__('os').system('id')=1", "expected <field><operator><value>"),
    ("network.threshold={\"$gt\": 0}", "object"),
    ("x" * 400, "at most 300"),
])
def test_hostile_or_wrong_expressions_are_refused(expression: str, message: str) -> None:
    with pytest.raises(FilterError, match=message.replace("(", r"\(")):
        parse_filter(expression)


def test_too_many_filters_and_matching() -> None:
    with pytest.raises(FilterError, match="at most 20"):
        parse_filters(["accuracy>0"] * 21)
    spec = flatten({"network": {"threshold": 0.3}, "models": ["ff", "bp"], "ff": {"batch_size": None}})
    metrics = experiment_search.experiment_metrics([("ff", "mnist", 0.95), ("bp", "mnist", 0.97),
                                                    ("bp", "fashion_mnist", 0.87)])
    assert metrics == {"accuracy.ff.mnist": 0.95, "accuracy.bp.mnist": 0.97, "accuracy.bp.fashion_mnist": 0.87,
                       "accuracy.ff": 0.95, "accuracy.bp": pytest.approx(0.92), "accuracy": 0.95}
    holds = {e: matches(parse_filter(e), spec, metrics) for e in (
        "network.threshold=0.3", "network.threshold!=0.3", "network.threshold<0.5", "models=ff", "models!=ff",
        "models=symba", 'models=["ff","bp"]', "ff.batch_size=null", "accuracy>0.9", "accuracy.bp.mnist>0.96",
        "accuracy.symba>0")}
    assert holds == {"network.threshold=0.3": True, "network.threshold!=0.3": False, "network.threshold<0.5": True,
                     "models=ff": True, "models!=ff": False, "models=symba": False, 'models=["ff","bp"]': True,
                     "ff.batch_size=null": True, "accuracy>0.9": True, "accuracy.bp.mnist>0.96": True,
                     "accuracy.symba>0": False}


def test_welch_false_differs_rate_as_documented() -> None:
    """docs/service.md: with nothing to find, Welch's t says "differs" in about 2.3%
    of draws at 2 runs a side and 11% at 2 against 15 (here 20 000 draws each)."""
    rng = np.random.default_rng(0)
    rates = {}
    for n_a, n_b in ((2, 2), (2, 15)):
        a, b = rng.normal(size=(20_000, n_a)), rng.normal(size=(20_000, n_b))
        rates[n_a, n_b] = float((stats.ttest_ind(a, b, axis=1, equal_var=False).pvalue < 0.05).mean())
    assert 0.015 < rates[2, 2] < 0.035 and 0.095 < rates[2, 15] < 0.13
    first = compare_samples(list(a[0]), list(b[0]))  # the function is that test (test_welch_t_equals_scipy)
    assert first.p == pytest.approx(stats.ttest_ind(b[0], a[0], equal_var=False).pvalue)
