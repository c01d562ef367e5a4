import pytest
from pydantic import ValidationError

from fflab.spec import PRESETS, ExperimentSpec, RunKey, build_spec


def test_paper_preset_has_the_papers_settings():
    spec = build_spec("paper")
    assert (spec.network.layers, spec.network.width) == (3, 784)
    assert (spec.network.activation, spec.network.goodness) == ("sigmoid", "l_inf")
    assert (spec.ff.epochs, spec.ff.learning_rate, spec.ff.batch_size) == (1000, 1e-2, None)
    assert (spec.bp.epochs, spec.bp.learning_rate) == (20, 1e-2)
    assert spec.seeds == list(range(15))
    assert 0 < spec.network.threshold < 1
    # 3 models x 2 data sets x 15 seeds, plus FF without class 0 on Fashion-MNIST per seed
    assert len(spec.runs()) == 90 + 15


def test_every_preset_validates():
    for name in PRESETS:
        assert build_spec(name).name == name


def test_overrides_merge_into_nested_settings():
    spec = build_spec("quick", {"ff": {"epochs": 3}, "models": ["ff", "bp"], "unseen_class": None})
    assert spec.ff.epochs == 3
    assert spec.ff.batch_size == PRESETS["quick"]["ff"]["batch_size"]
    assert [key.run_id for key in spec.runs()] == [
        f"{model}-mnist-seed{seed}" for model in ("ff", "bp") for seed in (0, 1, 2)
    ]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"ff": {"epochs": 0}}, "ff.epochs"),
        ({"network": {"activation": "tanh"}}, "network.activation"),
        ({"models": ["ff", "ff"]}, "models"),
        ({"seeds": [-1]}, "seeds"),
        ({"data": {"train_subset": 10**9}}, "data.train_subset"),
        ({"unknown": 1}, "unknown"),
        ({"analysis": {"quantiles": [0.9], "table_quantile": 0.95}}, "analysis"),
        ({"unseen_class": 10}, "unseen_class"),
        # Per-layer learning-rate factors: at least one, each positive, and only for the
        # model types trained layer by layer.
        ({"ff": {"layer_learning_rate_factors": []}}, "ff.layer_learning_rate_factors"),
        ({"ff": {"layer_learning_rate_factors": [0.6, 0, 1]}}, "ff.layer_learning_rate_factors.1"),
        ({"bp": {"layer_learning_rate_factors": [1, 1, 1]}}, "bp.layer_learning_rate_factors"),
        ({"bpff": {"layer_learning_rate_factors": [1]}}, "bpff.layer_learning_rate_factors"),
    ],
)
def test_bad_settings_name_the_field(overrides, field):
    with pytest.raises(ValidationError) as raised:
        build_spec("quick", overrides)
    locations = [".".join(str(p) for p in e["loc"]) for e in raised.value.errors()]
    assert any(loc.startswith(field) for loc in locations), locations


def test_unknown_preset_is_named():
    with pytest.raises(ValueError, match="preset must be one of"):
        build_spec("fast")


def test_run_ids_round_trip():
    for key in build_spec("paper").runs():
        assert RunKey.parse(key.run_id) == key


def test_spec_json_round_trip():
    spec = build_spec("quick")
    assert ExperimentSpec.model_validate_json(spec.model_dump_json()) == spec


@pytest.mark.parametrize(
    ("overrides", "field", "kind"),
    [
        ({"ff": {"epochs": True}}, "ff.epochs", "int_type"),
        ({"ff": {"epochs": "3"}}, "ff.epochs", "int_type"),
        ({"ff": {"epochs": 3.0}}, "ff.epochs", "int_type"),
        ({"ff": {"learning_rate": "0.1"}}, "ff.learning_rate", "float_type"),
        ({"ff": {"learning_rate": float("nan")}}, "ff.learning_rate", "finite_number"),
        ({"analysis": {"rho_cut": float("inf")}}, "analysis.rho_cut", "finite_number"),
        ({"network": {"threshold": float("-inf")}}, "network.threshold", "finite_number"),
        ({"analysis": {"correct_only": 1}}, "analysis.correct_only", "bool_type"),
        ({"seeds": [True]}, "seeds.0", "int_type"),
    ],
)
def test_values_of_the_wrong_type_or_not_finite_are_refused(overrides, field, kind):
    with pytest.raises(ValidationError) as raised:
        build_spec("quick", overrides)
    problems = {(".".join(str(p) for p in e["loc"]), e["type"]) for e in raised.value.errors()}
    assert (field, kind) in problems, problems


def test_an_integer_is_a_valid_float():
    spec = build_spec("quick", {"ff": {"learning_rate": 1}, "network": {"threshold": 2}})
    assert (spec.ff.learning_rate, spec.network.threshold) == (1.0, 2.0)


def test_layer_learning_rate_factors_scale_the_learning_rate_per_layer():
    spec = build_spec("quick", {"ff": {"learning_rate": 1e-3, "layer_learning_rate_factors": [2, 4, 8]},
                                "symba": {"learning_rate": 1e-3}, "network": {"layers": 4}})
    assert [spec.ff.learning_rate_of_layer(i) for i in range(4)] == [2e-3, 4e-3, 8e-3, 8e-3]  # the last repeats
    assert [spec.symba.learning_rate_of_layer(i) for i in range(4)] == [1e-3] * 4
    quick = build_spec("quick")
    assert [quick.ff.learning_rate_of_layer(i) for i in range(3)] == [3e-3, 5e-3, 5e-3]
    # the quick preset's two factors fit any depth, and its learning rate scales every layer
    assert build_spec("quick", {"network": {"layers": 5}}).ff.learning_rate_of_layer(4) == 5e-3
    assert build_spec("quick", {"network": {"layers": 1}}).ff.learning_rate_of_layer(0) == 3e-3
    assert build_spec("quick", {"ff": {"learning_rate": 1e-2}}).ff.learning_rate_of_layer(0) == 6e-3
    with pytest.raises(ValidationError) as raised:
        build_spec("quick", {"bp": {"layer_learning_rate_factors": [1, 1, 1]}})
    message = raised.value.errors()[0]["msg"]
    assert "trained end to end" in message and "bp.learning_rate" in message


@pytest.mark.parametrize(
    ("overrides", "loc", "suggested"),
    [
        ({"network": {"widht": 64}}, ("network", "widht"), "did you mean width?"),
        ({"ff": {"epohcs": 2}}, ("ff", "epohcs"), "did you mean epochs?"),
        ({"netwrok": {}}, ("netwrok",), "did you mean network?"),
        ({"analysis": {"quantile": [0.9]}}, ("analysis", "quantile"), "did you mean quantiles"),
        ({"zzzz": 1}, ("zzzz",), None),
    ],
)
def test_an_unknown_field_names_the_nearest_fields_of_its_section(overrides, loc, suggested):
    with pytest.raises(ValidationError) as raised:
        build_spec("quick", {**overrides, "bp": {"epochs": 0}})
    problems = {problem["loc"]: problem for problem in raised.value.errors()}
    assert problems[loc]["type"] == "extra_forbidden"
    if suggested is None:
        assert "did you mean" not in problems[loc]["msg"]
    else:
        assert suggested in problems[loc]["msg"]
    assert problems[("bp", "epochs")]["type"] == "greater_than_equal" and problems[("bp", "epochs")]["ctx"] == {"ge": 1}
