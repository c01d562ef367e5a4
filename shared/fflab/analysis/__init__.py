"""Pure analysis of representations and weights (numpy only).

The names below are loaded from their modules on first use (``__getattr__``), so
that importing one analysis module (the spec reads ``fflab.analysis.ensembles``)
does not import every other one and their libraries."""

from __future__ import annotations

from importlib import import_module
from typing import Any

# Each exported name and the module that defines it.
_MODULES = {
    **dict.fromkeys([
        "Table", "accuracy_table", "ensemble_size_table", "mean_and_standard_error",
        "shared_units_table", "sparseness_table", "unseen_activity_table", "weight_sign_table",
    ], "fflab.analysis.aggregate"),
    **dict.fromkeys([
        "LinearFit", "MethodFits", "linear_fit", "method_size_fits", "method_size_regression",
    ], "fflab.analysis.compare"),
    **dict.fromkeys([
        "METHOD1_THRESHOLDS", "METHOD2_CUTS", "SPARSENESS_MEASURES", "Method1Result",
        "Method2Result", "UnseenClassActivity", "class_ensembles", "class_sparseness",
        "ensemble_sizes", "hoyer_sparseness", "mean_shared_units", "mean_sparseness",
        "method1_ensemble", "method1_threshold", "method1_units", "method2_decision_diagram",
        "method2_ensemble", "method2_top_cluster", "shared_units_matrix", "sparseness_index",
        "unseen_class_activity",
    ], "fflab.analysis.ensembles"),
    **dict.fromkeys([
        "VERDICTS", "Verdict", "above_chance", "compare_estimates",
    ], "fflab.analysis.paper_comparison"),
    **dict.fromkeys([
        "stack_tables", "sweep_cells", "sweep_table",
    ], "fflab.analysis.sweep"),
    **dict.fromkeys([
        "all_negative_incoming", "fraction_negative_incoming", "fraction_positive_weights",
        "fraction_units_negative_share_near", "negative_share_near",
    ], "fflab.analysis.weights"),
}

__all__ = list(_MODULES)


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        value = getattr(import_module(_MODULES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULES))
