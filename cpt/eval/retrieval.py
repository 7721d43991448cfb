"""Text-video retrieval metrics and report: ranks in both directions, recall at K, median and mean rank.

A similarity matrix is (n_videos, n_captions). Ties count against the model: a query's rank is 1
plus the number of wrong candidates scoring at least as high as the right one, so a model that
scores everything alike ranks last, never first (a NaN score counts as the lowest). Video-to-text
follows the multi-caption convention: a video's rank is that of its best-scoring own caption.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter, NullFormatter
import numpy as np
import pandas as pd

from cpt.data.names import safe_name
from cpt.eval.report import markdown_table, plain_text, save_figure
from cpt.io import write_csv, write_text

RECALL_AT = (1, 5, 10, 50)
DIRECTIONS = {"t2v": "text → video", "v2t": "video → text"}
WORST_SHOWN = 10
COLUMNS = [*(f"R@{k}" for k in RECALL_AT), "MdR", "MnR", "RSum"]  # of each direction, in the report
Scored = tuple[str, np.ndarray, np.ndarray, list[str], list[str]]  # task, sim, caption_video, captions, videos


def _clean(sim: np.ndarray, caption_video: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`sim` as floats with NaN as -inf, and `caption_video` as int indices, their shapes checked."""
    sim = np.asarray(sim, dtype=np.float64)
    owners = np.asarray(caption_video, dtype=np.int64)
    if sim.ndim != 2 or owners.shape != (sim.shape[1],):
        raise ValueError(f"sim must be (n_videos, n_captions) and caption_video (n_captions,); got {sim.shape} "
                         f"and {owners.shape}")
    if owners.size and (owners.min() < 0 or owners.max() >= sim.shape[0]):
        raise ValueError("caption_video holds an index outside the videos of sim")
    return np.where(np.isnan(sim), -np.inf, sim), owners


def ranks(sim: np.ndarray, caption_video: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(text-to-video ranks (n_captions,), video-to-text ranks (n_videos,)), 1 = best, ties against.

    A caption's rank is 1 + the number of other videos scoring it >= its own video; a video's is
    1 + the number of other videos' captions scoring >= its best own caption (a video without a
    caption ranks after every caption)."""
    sim, owners = _clean(sim, caption_video)
    captions = np.arange(sim.shape[1])
    own_score = sim[owners, captions]
    t2v = (sim >= own_score).sum(axis=0)  # the own video counts once: it is the "1 +"
    own = owners[None, :] == np.arange(sim.shape[0])[:, None]  # (n_videos, n_captions)
    best_own = np.where(own, sim, -np.inf).max(axis=1, initial=-np.inf)
    v2t = 1 + ((sim >= best_own[:, None]) & ~own).sum(axis=1)
    return t2v.astype(np.int64), v2t.astype(np.int64)


def rank_metrics(rank: np.ndarray, prefix: str) -> dict[str, float]:
    """R@K (percent of queries ranked <= K), MdR, MnR and RSum (R@1 + R@5 + R@10) of one direction."""
    out = {f"{prefix}R@{k}": 100.0 * float(np.mean(rank <= k)) for k in RECALL_AT}
    out[f"{prefix}MdR"] = float(np.median(rank))
    out[f"{prefix}MnR"] = float(np.mean(rank))
    out[f"{prefix}RSum"] = sum(out[f"{prefix}R@{k}"] for k in (1, 5, 10))
    return out


def retrieval_metrics(sim: np.ndarray, caption_video: np.ndarray) -> dict[str, float]:
    """t2v_* and v2t_* rank metrics, RSum of both directions, n_videos and n_captions."""
    if np.asarray(sim).size == 0:
        raise ValueError("retrieval metrics need at least one video and one caption")
    t2v, v2t = ranks(sim, caption_video)
    out = rank_metrics(t2v, "t2v_") | rank_metrics(v2t, "v2t_")
    out["RSum"] = out["t2v_RSum"] + out["v2t_RSum"]
    out["n_videos"], out["n_captions"] = float(len(v2t)), float(len(t2v))
    return out


def query_table(sim: np.ndarray, caption_video: np.ndarray, captions: list[str], videos: list[str]) -> pd.DataFrame:
    """Every caption as a text-to-video query, worst first: caption, video, rank, top_video (the video
    ranked first under the tie rule), own_score, top_score."""
    clean, owners = _clean(sim, caption_video)
    t2v, _ = ranks(clean, owners)
    columns = np.arange(clean.shape[1])
    others = clean.copy()
    others[owners, columns] = -np.inf
    top = np.where(t2v > 1, others.argmax(axis=0), owners)
    table = pd.DataFrame({"caption": captions, "video": [videos[v] for v in owners], "rank": t2v,
                          "top_video": [videos[v] for v in top], "own_score": clean[owners, columns],
                          "top_score": clean[top, columns]})
    return table.sort_values("rank", ascending=False, kind="stable").reset_index(drop=True)


@plain_text
def plot_ranks(t2v: np.ndarray, v2t: np.ndarray, task: str, path: Path) -> None:
    """Histograms of both directions' ranks over log-spaced bins (rank 1 in the first bin)."""
    edges = np.unique(np.round(np.geomspace(1, max(t2v.max(), v2t.max()) + 1, 25)))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist([t2v, v2t], bins=edges, histtype="step", linewidth=1.5,
            label=[f"{DIRECTIONS['t2v']} ({len(t2v)} captions)", f"{DIRECTIONS['v2t']} ({len(v2t)} videos)"])
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))  # plain text has no 10^k math labels
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("rank of the right match (1 = best)")
    ax.set_ylabel("queries")
    ax.set_title(f"{task}: retrieval ranks")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def direction_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """The long metrics table (task, [split,] metric, value) as one row per task and direction."""
    keys = [c for c in ("task", "split") if c in metrics.columns]
    rows = []
    for key, part in metrics.groupby(keys, sort=False):
        values = dict(zip(part.metric, part.value))
        for prefix, label in DIRECTIONS.items():
            row = dict(zip(keys, key if isinstance(key, tuple) else (key,)), direction=label)
            row |= {name: values.get(f"{prefix}_{name}") for name in COLUMNS}
            rows.append(row)
    return pd.DataFrame(rows)


def _cell(text: str) -> str:
    """`text` safe inside a markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _task_section(out_dir: Path, entry: Scored) -> list[str]:
    """One task's report lines; writes its ranks_<task>.png and worst_queries_<task>.csv."""
    task, sim, caption_video, captions, videos = entry
    stem = safe_name(task)
    plot_ranks(*ranks(sim, caption_video), task, out_dir / f"ranks_{stem}.png")
    queries = query_table(sim, caption_video, captions, videos)
    write_csv(out_dir / f"worst_queries_{stem}.csv", queries)
    worst = queries.head(WORST_SHOWN)
    shown = pd.DataFrame({"caption": worst.caption.map(_cell), "video": worst.video.map(_file_name),
                          "rank": worst["rank"], "ranked first": worst.top_video.map(_file_name)})
    rsum = retrieval_metrics(sim, caption_video)["RSum"]
    return [f"## {task}", "", f"{len(videos)} videos, {len(captions)} captions; RSum of both directions {rsum:.2f}.",
            "", f"![rank histograms](ranks_{stem}.png)", "",
            f"Worst text → video queries (every caption in worst_queries_{stem}.csv):", "", markdown_table(shown)]


def _file_name(video: str) -> str:
    return _cell(Path(video).name)


def write_retrieval_report(out_dir: Path, title: str, metrics: pd.DataFrame, scored: list[Scored],
                           details: dict[str, str]) -> Path:
    """report.md (settings, both directions' metrics per task, rank histograms ranks_<task>.png, the
    WORST_SHOWN worst text-to-video queries) and worst_queries_<task>.csv with every caption; returns report.md."""
    out_dir = Path(out_dir)
    lines = [f"# {title}", "", "| setting | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in details.items())]
    lines += ["", "## Results (recall in percent, ranks from 1)", "", markdown_table(direction_table(metrics)),
              "Ties count against the model: a query's rank is 1 + the wrong candidates scoring at least as high "
              "as the right one. A video's rank is that of its best-scoring caption.", ""]
    for entry in scored:
        lines += _task_section(out_dir, entry)
    path = out_dir / "report.md"
    write_text(path, "\n".join(lines))
    return path
