"""The toy-suite results table: zero-shot, linear probe and CoOp at 1/2/4/8/16 shots, 3 seeds.

    python scripts/toy_table.py --out runs/toy-table

Runs every (method, shots, seed) with `cpt.fit` into OUT/<method>-<shots>shot-seed<seed>/,
then writes OUT/results.csv (one row per run, task and metric) and OUT/table.md (mean
accuracy over the four toy tasks, mean ± standard deviation over seeds). Runs already
finished are reused, so an interrupted sweep continues where it stopped.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from cpt import run as R
from cpt.console import setup
from cpt.fit import fit
from cpt.options import FitRequest

SHOTS = [1, 2, 4, 8, 16]
SEEDS = [1, 2, 3]
METHODS = ["zeroshot", "linear-probe", "coop"]


def one(out: Path, method: str, shots: int, seed: int) -> pd.DataFrame:
    run = out / f"{method}-{shots}shot-seed{seed}"
    finished = (run / R.CONFIG).exists() and R.read_config(run).get("status") == "finished"
    if not finished:
        fit(FitRequest(method=method, tasks="toy", backbone="toy", shots=shots, seed=seed, out=str(run)), overwrite=True)
    metrics = pd.read_csv(run / "metrics.csv")
    return metrics.assign(method=method, shots=shots, seed=seed)


def table(results: pd.DataFrame) -> str:
    """Markdown: rows = method, columns = shots, cells = mean ± std over seeds of the task-mean accuracy."""
    acc = results[(results.metric == "accuracy") & (results.task == "mean")]
    stats = acc.groupby(["method", "shots"])["value"].agg(["mean", "std"]).reset_index()
    shots = sorted(stats.shots.unique())
    lines = ["| method | " + " | ".join(f"{s} shot{'s' if s > 1 else ''}" for s in shots) + " |",
             "|---|" + "---|" * len(shots)]
    for method in METHODS:
        rows = stats[stats.method == method].set_index("shots")
        lines.append(f"| {method} | " + " | ".join(
            f"{rows.loc[s, 'mean']:.1f} ± {rows.loc[s, 'std']:.1f}" if s in rows.index else "" for s in shots) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/toy-table"))
    args = parser.parse_args()
    setup(quiet=True)
    frames = []
    for method in METHODS:
        for shots in SHOTS:
            for seed in SEEDS:
                frames.append(one(args.out, method, shots, seed))
                print(f"done {method} {shots}-shot seed {seed}", flush=True)
    results = pd.concat(frames, ignore_index=True)
    results.to_csv(args.out / "results.csv", index=False)
    (args.out / "table.md").write_text(table(results))
    print(table(results))


if __name__ == "__main__":
    main()
