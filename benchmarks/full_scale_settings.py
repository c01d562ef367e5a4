"""How FF's cells of the paper's Tables 1-3 move with each open choice, at full scale.

    python -m benchmarks.full_scale_settings [--figure docs/img/reproduction_ff_settings.png]

Reads benchmarks/ff_full_scale_runs.json (what each full-scale run gave, per
setting and seed; docs/reproduction.md gives the commands and the dates), and
prints two markdown tables. The first: per setting and cell, mean ± standard
error over the seeds and the verdict against the paper as ``fflab compare``
computes it (``fflab.analysis.compare_estimates``: Student's t with the paper's
rounding where the paper prints an error, p and df; descriptive, no verdict,
where it prints none). The second ranks the settings by their distance to the
paper, the rule the `paper` preset is chosen by: the mean over the seven cells
of |log(ours / paper)|, with a bootstrap standard error over seeds. Counting
"consistent" cells rewards noisy settings (a wide spread makes a far mean
"consistent"); the distance does not, since noise can only raise it on average.
With ``--figure``, draws the first table as a PNG: one panel per cell, one point
per setting, each seed as a dot, the paper's value as a line and its band.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from fflab import analysis
from fflab.analysis.paper_comparison import compare_estimates
from fflab.figures import VERDICT_COLORS, save_png
from fflab.paper import published_cells

RUNS_FILE = Path(__file__).with_name("ff_full_scale_runs.json")
# (published cell id, quantity in a run's record, layer index or None, panel title)
CELLS = (
    ("table1/ff/mnist", "accuracy", None, "accuracy"),
    *((f"table2/ff/mnist/layer{layer}", "ensemble_size", layer - 1, f"Method 1 ensemble, layer {layer}")
      for layer in (1, 2, 3)),
    *((f"table3/ff/mnist/layer{layer}", "fraction_positive_weights", layer - 1, f"positive weights, layer {layer}")
      for layer in (1, 2, 3)),
)


def cell_values(setting: dict, quantity: str, layer: int | None) -> list[float]:
    """The seeds' values of one cell, in seed order."""
    runs = [setting["runs"][seed] for seed in sorted(setting["runs"], key=int)]
    return [run[quantity] if layer is None else run[quantity][layer] for run in runs]


def compare_settings(settings: list[dict]) -> list[dict]:
    """One row per (setting, cell): the seeds' values, mean, SE and the verdict."""
    paper = {cell["id"]: cell for cell in published_cells()}
    rows = []
    for setting in settings:
        for cell_id, quantity, layer, title in CELLS:
            values = cell_values(setting, quantity, layer)
            mean, se = analysis.mean_and_standard_error(values)
            published = paper[cell_id]
            verdict = compare_estimates(
                published["mean"], published["se"], published["n"], mean,
                None if math.isnan(se) else se, len(values), paper_resolution=published["resolution"],
            )
            rows.append({"setting": setting["label"], "cell": title, "cell_id": cell_id, "values": values,
                         "mean": mean, "se": se, "paper": published, "verdict": verdict})
    return rows


BOOTSTRAP_DRAWS = 2000


def log_distance(means: dict[str, float], paper: dict[str, dict]) -> float:
    """Mean over cells of ``|log(ours / paper)|`` (inf where a mean is <= 0)."""
    gaps = [abs(math.log(mean / paper[cell_id]["mean"])) if mean > 0 else math.inf
            for cell_id, mean in means.items()]
    return float(np.mean(gaps))


def setting_distances(settings: list[dict], seed: int = 0) -> list[dict]:
    """Per setting: its distance to the paper (``log_distance`` of its cell means)
    and the bootstrap SE over its seeds (None with one seed), best first."""
    paper = {cell["id"]: cell for cell in published_cells()}
    rng = np.random.default_rng(seed)
    rows = []
    for setting in settings:
        values = {cell_id: np.asarray(cell_values(setting, quantity, layer), dtype=float)
                  for cell_id, quantity, layer, _ in CELLS}
        distance = log_distance({c: float(v.mean()) for c, v in values.items()}, paper)
        n = len(setting["runs"])
        se = None
        if n >= 2:
            draws = rng.integers(0, n, (BOOTSTRAP_DRAWS, n))
            resampled = [log_distance({c: float(v[d].mean()) for c, v in values.items()}, paper) for d in draws]
            se = float(np.std(resampled, ddof=1))
        rows.append({"setting": setting["label"], "seeds": n, "distance": distance, "se": se})
    return sorted(rows, key=lambda row: row["distance"])


def distances_to_markdown(rows: list[dict]) -> str:
    lines = ["| setting | seeds | mean abs log ratio to the paper | its bootstrap SE |", "|---|---|---|---|"]
    lines += [f"| {r['setting']} | {r['seeds']} | {r['distance']:.3f} | "
              f"{'-' if r['se'] is None else format(r['se'], '.3f')} |" for r in rows]
    return "\n".join(lines)


def _seeds(setting: dict) -> str:
    count = len(setting["runs"])
    return f"{count} seed" + ("" if count == 1 else "s")


def _number(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3g}"


def to_markdown(rows: list[dict], settings: list[dict]) -> str:
    titles = [title for _, _, _, title in CELLS]
    lines = ["| cell | paper | " + " | ".join(f"{s['label']} ({_seeds(s)})" for s in settings) + " |",
             "|---|---|" + "---|" * len(settings)]
    for title in titles:
        cells = [row for row in rows if row["cell"] == title]
        published = cells[0]["paper"]
        paper = f"{published['mean']:g}" + ("" if published["se"] is None else f" ± {published['se']:g}") + \
            ("" if published["n"] is None else f" (n {published['n']})")
        entries = []
        for row in cells:
            verdict = row["verdict"]
            test = "" if verdict.t is None else f", t {verdict.t:+.1f}, df {verdict.df:.0f}, p {verdict.p:.2g}"
            if verdict.verdict == "descriptive" and verdict.relative_gap is not None:
                test = f", {verdict.relative_gap:+.0%}"
            spread = "" if math.isnan(row["se"]) else f" ± {row['se']:.2g}"
            entries.append(f"{_number(row['mean'])}{spread} ({verdict.verdict}{test})")
        lines.append(f"| {title} | {paper} | " + " | ".join(entries) + " |")
    return "\n".join(lines)


def settings_figure(rows: list[dict], settings: list[dict]):
    """One panel per cell; x: the settings; y: mean ± SE (bars), the seeds (dots),
    the paper (line; band: ± 2 of its standard error with its rounding)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    fig = Figure(figsize=(14, 6.4), layout="constrained")
    axes = fig.subplots(2, 4).ravel()
    x = np.arange(len(settings))
    for ax, (cell_id, _, _, title) in zip([axes[0], axes[1], axes[2], axes[3], axes[5], axes[6], axes[7]], CELLS):
        cells = [row for row in rows if row["cell_id"] == cell_id]
        published = cells[0]["paper"]
        # the band: the paper's run-to-run SD where it prints an error, else its rounding interval
        half_width = (published["se"] * math.sqrt(published["n"]) if published["se"] is not None
                      else published["resolution"] / 2)
        ax.axhspan(published["mean"] - half_width, published["mean"] + half_width, color="0.85", zorder=0)
        ax.axhline(published["mean"], color="0.3", linewidth=1, zorder=1, label="paper")
        for i, row in enumerate(cells):
            colour = VERDICT_COLORS.get(row["verdict"].verdict, "0.5")
            ax.scatter(np.full(len(row["values"]), i) + 0.12, row["values"], s=10, color=colour, alpha=0.6, zorder=2)
            ax.errorbar(i, row["mean"], yerr=0 if math.isnan(row["se"]) else row["se"], fmt="o", color=colour,
                        capsize=3, zorder=3)
        ax.set_title(title, fontsize=9)
        ax.set_xticks(x)
        ax.set_xticklabels([str(i + 1) for i in x], fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if "layer 2" in title or "layer 3" in title:
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
            ax.yaxis.set_minor_formatter(NullFormatter())
    axes[4].set_axis_off()
    legend = "\n".join(f"{i + 1}: {s['label']} ({_seeds(s)})" for i, s in enumerate(settings))
    axes[4].text(0.0, 0.5, "FF, MNIST, full scale\n\n" + legend + "\n\nbar: mean ± SE; dots: seeds\n"
                 "green: consistent, red: differs (p < 0.05),\nblue: descriptive (no published error)\n"
                 "grey band: the paper's run-to-run SD\n(its SE x sqrt(15)); Table 3: its rounding",
                 fontsize=7.5, va="center", ha="left", transform=axes[4].transAxes)
    return fig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=RUNS_FILE)
    parser.add_argument("--figure", type=Path, default=None, help="also write the figure to this PNG")
    args = parser.parse_args(argv)
    settings = json.loads(args.runs.read_text())["settings"]
    rows = compare_settings(settings)
    print(to_markdown(rows, settings))
    print("\nSettings by distance to the paper (best first):\n")
    print(distances_to_markdown(setting_distances(settings)))
    if args.figure is not None:
        save_png(settings_figure(rows, settings), args.figure)
        print(f"\nwrote {args.figure}")


if __name__ == "__main__":
    main()
