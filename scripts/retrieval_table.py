"""The toy-video retrieval tables of README: each method over seeds through the real CLI, then both
directions' R@1 / R@5 / RSum, the order score and the median seconds per training epoch, mean ±
std over the seeds.

The order score is what frame averaging cannot earn: every toy-video clip has a twin that is
itself played backwards (cpt_datasets.toy_video: videos 2k and 2k + 1), so for each test
caption it is the share of captions that score their own video above its time-reversed twin
(50 for a model blind to time, ties counting half).

    python scripts/retrieval_table.py --out runs/retrieval-table            # about an hour on 2 CPU cores
    python scripts/retrieval_table.py --out runs/tempme-table \
        --methods "tempme,lora (no merging),dgl,clip4clip,clip4clip (tempme merging)"
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from cpt import retrieval
from cpt import run as R
from cpt.kinds import KINDS
from cpt.kinds.retrieval import RetrievalOptions
from cpt.options import build

# method label -> cpt fit options (the toy recipe's frame rate is its preset)
METHODS = {
    "zeroshot-video": ["--method", "zeroshot-video"],
    "coop-video": ["--method", "coop-video", "--epochs", "30"],
    "clip4clip": ["--method", "clip4clip", "--epochs", "2", "--optimizer", "adam", "--lr", "1e-5",
                  "--weight-decay", "0"],
    "dgl": ["--method", "dgl", "--epochs", "20", "--optimizer", "adam", "--lr", "1e-3", "--weight-decay", "0"],
    "dgl (no global-local)": ["--method", "dgl", "--dgl-no-global-local", "--epochs", "20", "--optimizer", "adam",
                              "--lr", "1e-3", "--weight-decay", "0"],
    "tempme": ["--method", "tempme", "--epochs", "20", "--optimizer", "adam", "--lr", "1e-3", "--weight-decay", "0"],
    "lora (no merging)": ["--method", "tempme", "--merge", "none", "--epochs", "20",
                          "--optimizer", "adam", "--lr", "1e-3", "--weight-decay", "0"],
    "clip4clip (tempme merging)": ["--method", "clip4clip", "--merge", "tempme", "--epochs", "2", "--optimizer", "adam",
                                   "--lr", "1e-5", "--weight-decay", "0"],
}
COLUMNS = ["t2v_R@1", "t2v_R@5", "t2v_RSum", "v2t_R@1", "v2t_R@5", "v2t_RSum", "RSum", "order", "s/epoch"]


def order_score(run: Path) -> float:
    """Percent of test captions whose own video scores above its twin (ties half)."""
    config, backbone, method = R.load_run(run, "cpu")
    tasks = KINDS["retrieval"].restore(run, config["tasks"])
    source = retrieval.clip_source(backbone, build(RetrievalOptions, config["resolved"]["kind"]),
                                   config["request"].get("cache_dir"))
    scored = retrieval.score(tasks, method, source)[0]
    ids = [int(Path(p).stem) for p in scored.paths]
    where = {v: i for i, v in enumerate(ids)}
    wins = []
    for c, own in enumerate(scored.y_true):
        twin = where.get(ids[own] ^ 1)
        if twin is not None:
            a, b = scored.logits[own, c], scored.logits[twin, c]
            wins.append(1.0 if a > b else 0.5 if a == b else 0.0)
    return 100 * float(np.mean(wins))


def fit(label: str, seed: int, out: Path, tasks: str) -> dict:
    run = out / f"{label.replace(' ', '_').replace('(', '').replace(')', '')}-seed{seed}"
    if not (run / "metrics.csv").exists():
        subprocess.run([sys.executable, "-m", "cpt", "fit", *METHODS[label], "--tasks", tasks, "--backbone", "toy",
                        "--seed", str(seed), "--out", str(run), "--overwrite", "--quiet"], check=True)
    metrics = pd.read_csv(run / "metrics.csv").set_index("metric")["value"]
    history = pd.read_csv(run / "history.csv") if (run / "history.csv").exists() else None
    per_epoch = float(history["time_s"].median()) if history is not None else float("nan")
    return {"method": label, "seed": seed, **{k: float(metrics[k]) for k in COLUMNS[:-2]}, "order": order_score(run),
            "s/epoch": per_epoch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/retrieval-table"))
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--tasks", default="toy-video")
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [fit(m, int(s), args.out, args.tasks) for m in args.methods.split(",") for s in args.seeds.split(",")]
    frame = pd.DataFrame(rows)
    frame.to_csv(args.out / "results.csv", index=False)
    stats = frame.groupby("method", sort=False)[COLUMNS].agg(["mean", "std"])
    lines = ["| method | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for method, row in stats.iterrows():
        cells = [f"{row[(c, 'mean')]:.1f} ± {row[(c, 'std')]:.1f}" for c in COLUMNS]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(json.dumps({"runs": len(rows)}))


if __name__ == "__main__":
    main()
