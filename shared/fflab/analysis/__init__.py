"""Pure analysis of representations and weights (numpy only)."""

from fflab.analysis.aggregate import (
    DATASET_NAMES,
    MODEL_NAMES,
    Table,
    accuracy_table,
    ensemble_size_table,
    mean_and_standard_error,
    weight_sign_table,
)
from fflab.analysis.compare import LinearFit, linear_fit, method_size_regression
from fflab.analysis.ensembles import (
    Method1Result,
    Method2Result,
    UnseenClassActivity,
    class_ensembles,
    class_sparseness,
    ensemble_sizes,
    method1_ensemble,
    method2_decision_diagram,
    method2_ensemble,
    shared_units_matrix,
    sparseness_index,
    unseen_class_activity,
)
from fflab.analysis.weights import fraction_negative_incoming, fraction_positive_weights

__all__ = [
    "DATASET_NAMES",
    "MODEL_NAMES",
    "LinearFit",
    "Method1Result",
    "Method2Result",
    "Table",
    "UnseenClassActivity",
    "accuracy_table",
    "class_ensembles",
    "class_sparseness",
    "ensemble_size_table",
    "ensemble_sizes",
    "fraction_negative_incoming",
    "fraction_positive_weights",
    "linear_fit",
    "mean_and_standard_error",
    "method1_ensemble",
    "method2_decision_diagram",
    "method2_ensemble",
    "method_size_regression",
    "shared_units_matrix",
    "sparseness_index",
    "unseen_class_activity",
    "weight_sign_table",
]
