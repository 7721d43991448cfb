"""`cpt sweep`: methods x shots x seeds of `cpt fit`, gathered into one tidy CSV, a table and a plot.

Every (method, shots, seed) runs into OUT/<method>-<shots>shot-seed<seed>/; finished runs are
reused, so an interrupted sweep continues where it stopped.
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
from cpt.fit import fit  # noqa: E402
from cpt.io import atomic_path, write_csv, write_text  # noqa: E402
from cpt.options import FitRequest  # noqa: E402


def sweep(base: FitRequest, methods: list[str], shots: list[int], seeds: list[int], out: Path) -> pd.DataFrame:
    """Run (or reuse) every combination; returns the tidy results (one row per run, task, metric)."""
    frames = []
    for method in methods:
        for k in shots:
            for seed in seeds:
                run = out / f"{method}-{k}shot-seed{seed}"
                done = (run / R.CONFIG).exists() and R.read_config(run).get("status") == "finished"
                if not done:
                    log.info("sweep: %s, %d shots, seed %d", method, k, seed)
                    fit(replace(base, method=method, shots=k, seed=seed, out=str(run)), overwrite=True)
                frames.append(pd.read_csv(run / "metrics.csv").assign(method=method, shots=k, seed=seed))
    results = pd.concat(frames, ignore_index=True)
    write_csv(out / "results.csv", results)
    summary = headline(results)
    write_text(out / "table.md", table(summary, methods))
    plot(summary, methods, out / "accuracy_vs_shots.png")
    return results


def headline(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of each run's headline metric (accuracy or mean per-class accuracy
    per task) averaged over tasks (the `mean` row when several)."""
    acc = results[results.metric == "headline"]
    several = (acc.task == "mean").any()
    acc = acc[acc.task == "mean"] if several else acc
    return acc.groupby(["method", "shots"])["value"].agg(["mean", "std"]).fillna(0.0).reset_index()


def table(summary: pd.DataFrame, methods: list[str]) -> str:
    """Markdown: a row per method, a column per shot count, cells mean ± std."""
    shots = sorted(summary.shots.unique())
    lines = ["| method | " + " | ".join(f"{s} shot{'s' if s > 1 else ''}" for s in shots) + " |",
             "|---|" + "---|" * len(shots)]
    for method in methods:
        rows = summary[summary.method == method].set_index("shots")
        cells = [f"{rows.loc[s, 'mean']:.1f} ± {rows.loc[s, 'std']:.1f}" if s in rows.index else "" for s in shots]
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
