"""The FF benchmark's own honesty (benchmarks/ff_bench.py), on made-up timings: the
headline is the best round (noise only adds time), the spread is reported, and a
ratio to the roofline below 1 is a measurement error, never a result."""

from __future__ import annotations

from benchmarks.ff_bench import ff_report_lines, ff_totals, layer_row

CPU = {"reference": [1.0] * 3, "engine": [0.3] * 3, "roofline": [0.25] * 3}


def ff(walls: list[dict[str, list[float]]]) -> dict:
    layers = [layer_row(wall, CPU) for wall in walls]
    return {"layers": layers, **ff_totals(layers)}


def test_the_headline_is_the_best_round_with_the_spread_beside_it() -> None:
    # Round 2 was disturbed (another process took the cores): it must not move the result.
    wall = {"reference": [1.00, 1.90, 1.02], "engine": [0.30, 0.95, 0.31], "roofline": [0.25, 0.26, 0.40]}
    result = ff([wall])
    assert result["estimator"] == "min_wall"
    assert result["epoch"] == {"reference": 1.00, "engine": 0.30, "roofline": 0.25}
    assert result["ff_engine_over_roofline"] == 0.30 / 0.25
    assert result["ff_speedup_vs_reference"] == 1.00 / 0.30
    assert result["layers"][0]["spread_s"]["engine"] == {"min": 0.30, "median": 0.31, "max": 0.95}
    assert result["measurement_errors"] == []
    text = "\n".join(ff_report_lines(result, 3))
    assert "engine 0.300 / 0.310 / 0.950" in text  # min / median / max
    assert "ff_engine_over_roofline = 1.20   (best round of each; by the median wall time: 1.19" in text


def test_a_ratio_below_one_is_flagged_as_a_measurement_error_not_printed_as_a_result() -> None:
    # The roofline's rounds were all disturbed and the engine's were not: 0.91 "over" its bound.
    wall = {"reference": [1.0, 1.1, 1.2], "engine": [0.30, 0.31, 0.32], "roofline": [0.33, 0.34, 0.35]}
    result = ff([wall, wall])
    assert result["ff_engine_over_roofline"] is None and result["ff_speedup_vs_reference"] is None
    assert any(error.startswith("ff_engine_over_roofline = 0.91 < 1") for error in result["measurement_errors"])
    assert any(error.startswith("layer 2 engine/roofline = 0.91 < 1") for error in result["measurement_errors"])
    text = "\n".join(ff_report_lines(result, 3))
    assert "MEASUREMENT ERROR: ff_engine_over_roofline = 0.91 < 1" in text
    assert all(line.startswith("MEASUREMENT ERROR: ") for line in text.splitlines() if "0.91" in line)
    assert "no ratio is reported from this run" in text
    all_row = next(line for line in text.splitlines() if line.startswith("all "))
    assert all_row.split()[-2:] == ["error", "error"]  # the table's ratios for the whole epoch
