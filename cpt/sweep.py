"""`cpt sweep`: methods x shots (or x known ratios, multi-label) x seeds of `cpt fit`, gathered
into one tidy CSV, a table and a plot.

A method may carry SCPNet ablation flags, e.g. `scpnet+no-prior`. Every combination runs into
OUT/<method>-<shots>shot-seed<seed>/ (or OUT/<method>-known<ratio>-seed<seed>/); finished runs
are reused, so an interrupted sweep continues where it stopped.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from cpt import run as R  # noqa: E402
from cpt.console import log  # noqa: E402
from cpt.errors import CptError  # noqa: E402
from cpt.fit import fit  # noqa: E402
from cpt.io import atomic_path, write_csv, write_text  # noqa: E402
from cpt.options import RUN_FLAGS, FitRequest  # noqa: E402
from cpt.report import plot_map_vs_known_ratio  # noqa: E402


def parse_method(label: str) -> tuple[str, dict[str, bool]]:
    """`scpnet+no-prior+no-gcn` -> ("scpnet", {"no_prior": True, "no_gcn": True})."""
    method, *flags = label.split("+")
    options = {f.replace("-", "_"): True for f in flags}
    unknown = [f for f in options if f not in RUN_FLAGS]
    if unknown:
        raise CptError(f"--methods {label}: unknown flag {unknown[0]!r}; flags are "
                       f"{', '.join(f.replace('_', '-') for f in RUN_FLAGS)}.")
    return method, options


def sweep(base: FitRequest, methods: list[str], shots: list[int], seeds: list[int], out: Path,
          known_ratios: list[float] | None = None) -> pd.DataFrame:
    """Run (or reuse) every combination; returns the tidy results (one row per run, task, metric).

    With `known_ratios` the second axis is the known-label ratio (multi-label tasks) instead of shots.
    """
    axis, values = ("known_ratio", known_ratios) if known_ratios else ("shots", shots)
    frames = []
    for label in methods:
        method, flags = parse_method(label)
        for value in values:
            for seed in seeds:
                stem = f"known{value:g}" if axis == "known_ratio" else f"{value}shot"
                run = out / f"{label}-{stem}-seed{seed}"
                done = (run / R.CONFIG).exists() and R.read_config(run).get("status") == "finished"
                if not done:
                    log.info("sweep: %s, %s %s, seed %d", label, axis, value, seed)
                    fit(replace(base, method=method, seed=seed, out=str(run), **{axis: value}, **flags), overwrite=True)
                frames.append(pd.read_csv(run / "metrics.csv").assign(method=label, **{axis: value}, seed=seed))
    results = pd.concat(frames, ignore_index=True)
    write_csv(out / "results.csv", results)
    summary = headline(results, axis)
    write_text(out / "table.md", table(summary, methods, axis))
    if axis == "known_ratio":
        per_run = results[results.metric == "mAP"].groupby(["method", "known_ratio", "seed"], as_index=False)["value"].mean()
        plot_map_vs_known_ratio(per_run.rename(columns={"method": "label", "value": "mAP"}), out / "map_vs_known_ratio.png")
    else:
        plot(summary, methods, out / "accuracy_vs_shots.png")
    return results


def headline(results: pd.DataFrame, axis: str = "shots") -> pd.DataFrame:
    """Mean and std over seeds of each run's headline metric (mAP for multi-label; accuracy or mean
    per-class accuracy per task otherwise) averaged over its tasks."""
    metric = "mAP" if axis == "known_ratio" else "headline"
    rows = results[(results.metric == metric) & (results.task != "mean")]
    per_run = rows.groupby(["method", axis, "seed"], as_index=False)["value"].mean()
    return per_run.groupby(["method", axis])["value"].agg(["mean", "std"]).fillna(0.0).reset_index()


def _column(axis: str, value) -> str:
    if axis == "known_ratio":
        return f"known {value:g}"
    return f"{value} shot{'s' if value > 1 else ''}"


def table(summary: pd.DataFrame, methods: list[str], axis: str = "shots") -> str:
    """Markdown: a row per method, a column per shot count (or known ratio), cells mean ± std."""
    values = sorted(summary[axis].unique())
    lines = ["| method | " + " | ".join(_column(axis, v) for v in values) + " |", "|---|" + "---|" * len(values)]
    for method in methods:
        rows = summary[summary.method == method].set_index(axis)
        cells = [f"{rows.loc[v, 'mean']:.1f} ± {rows.loc[v, 'std']:.1f}" if v in rows.index else "" for v in values]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(summary: pd.DataFrame, methods: list[str], path: Path) -> None:
    """Accuracy against shots, one line per method, seed spread as error bars."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in methods:
        rows = summary[summary.method == method]
        ax.errorbar(rows.shots, rows["mean"], yerr=rows["std"], marker="o", capsize=3, label=method)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(summary.shots.unique()), [str(s) for s in sorted(summary.shots.unique())])
    ax.set_xlabel("shots per class")
    ax.set_ylabel("mean accuracy (%)")
    ax.legend()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
