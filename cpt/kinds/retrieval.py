"""Text-video retrieval: tasks of videos with captions, the symmetric InfoNCE over a batch's
video-caption pairs, recall at K / median and mean rank in both directions, ranked queries.

A retrieval task's training "targets" are its captions' videos: pair i is caption i with its
video. Evaluation scores every caption of a split against every video of it: the
similarity matrix (videos, captions) is what `TaskPredictions.logits` holds, the captions'
videos its `y_true`. The run keeps its splits in `retrieval_splits.csv`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from torch import Tensor

from cpt.data.names import check_task_names
from cpt.data.retrieval import RetrievalSplit, RetrievalTask, load_retrieval
from cpt.data.taskfile import TaskSpec
from cpt.data.tasks import Skipped
from cpt.errors import CptError
from cpt.eval.metrics import TaskPredictions
from cpt.eval.retrieval import ranks, retrieval_metrics, write_retrieval_report
from cpt.io import write_csv
from cpt.kinds.base import Evaluation, TaskKind, val_ratio_option
from cpt.options import Options, option

SPLITS_FILE = "retrieval_splits.csv"
PANEL = "Video retrieval data"


@dataclass
class RetrievalOptions(Options):
    frames: int = option(12, "Frames sampled per video: uniformly for evaluation, with a random offset in each "
                         "segment for training.", panel=PANEL, low=1, high=256)
    fps: float = option(3.0, "Decode at most this many frames per second (the frames sampled from); CLIP4Clip "
                        "decodes MSR-VTT at 1.", panel=PANEL, low=0, above=True)
    val_ratio: float = val_ratio_option(0.1, PANEL)
    test_ratio: float = option(0.2, "Sources without a split: share of the videos kept for testing.", panel=PANEL,
                               low=0, high=0.9, above=True)
    seed: int = 0


class Retrieval(TaskKind):
    name = "retrieval"
    Options = RetrievalOptions
    axis = "frames"
    headline = "RSum"
    excludes = {"class_sample_rate": "retrieval has no classes", "crop_scale": "video frames are centre-cropped",
                "task_sampling": "retrieval trains one task at a time"}
    val_hint = ("Give its source a split column with val rows, or let cpt hold out --val-ratio of the videos (the "
                "default, for sources without a split).")

    def load(self, specs: list[TaskSpec], opts: RetrievalOptions, seed: int) -> tuple[list[RetrievalTask], list[Skipped]]:
        check_task_names([s.name for s in specs], "The run's task list")
        if len(specs) > 1:
            raise CptError("Retrieval runs train one task at a time; give one --tasks NAME=PATH.")
        tasks, skipped = [], []
        for spec in specs:
            task, skip = load_retrieval(spec.path, spec.name, seed, opts.val_ratio, opts.test_ratio)
            if spec.title:
                task.title = spec.title
            tasks.append(task)
            skipped += skip
        return tasks, skipped

    def record(self, task: RetrievalTask, spec: TaskSpec | None, opts: RetrievalOptions, seed: int) -> dict:
        return {"name": task.name, "title": task.title, "source": task.source, "classnames": [],
                "metric": "RSum"}

    def save(self, run: Path, tasks: list[RetrievalTask], failed: dict[str, str]) -> None:
        rows = []
        for task in tasks:
            for split, part in task.splits.items():
                rows += [{"task": task.name, "split": split, "video": str(part.videos[v]), "caption": caption}
                         for caption, v in zip(part.captions, part.caption_video.tolist())
                         if str(part.videos[v]) not in failed]
        write_csv(run / SPLITS_FILE, pd.DataFrame(rows, columns=["task", "split", "video", "caption"]))

    def restore(self, run: Path, recorded: list[dict]) -> list[RetrievalTask] | None:
        if not (run / SPLITS_FILE).exists():
            return None
        frame = pd.read_csv(run / SPLITS_FILE, dtype=str, keep_default_na=False)
        tasks = []
        for record in recorded:
            mine = frame[frame.task == record["name"]]
            splits = {split: split_from_rows(mine[mine.split == split]) for split in ("train", "val", "test")}
            tasks.append(RetrievalTask(record["name"], record["source"], splits, record.get("title") or record["name"]))
        return tasks

    def train_targets(self, task: RetrievalTask, opts: RetrievalOptions, seed: int, run: Path) -> np.ndarray:
        return task.targets("train")

    def check_training(self, task: RetrievalTask, targets: np.ndarray) -> None:
        if len(np.unique(targets)) < 2:
            raise CptError(f"Task {task.name!r} has fewer than two readable training videos (see skipped.csv); "
                           "contrastive training needs other videos as negatives.")

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        raise NotImplementedError("retrieval methods compute their own InfoNCE (RetrievalMethod.batch_loss)")

    def evaluate(self, scored: list[TaskPredictions], split: str, headline: dict[str, str] | None = None) -> Evaluation:
        metrics, queries = [], []
        for p in scored:
            sim = p.logits  # (videos, captions)
            metrics += [{"task": p.task, "split": split, "metric": k, "value": float(v)}
                        for k, v in retrieval_metrics(sim, p.y_true).items()]
            t2v, _ = ranks(sim, p.y_true)
            queries.append(pd.DataFrame({"task": p.task, "caption": p.classnames,
                                         "video": [p.paths[v] for v in p.y_true.tolist()], "t2v_rank": t2v}))
        per_query = pd.concat(queries, ignore_index=True) if queries else pd.DataFrame()
        return Evaluation(pd.DataFrame(metrics, columns=["task", "split", "metric", "value"]), per_query, scored)

    def selection_score(self, scored: list[TaskPredictions], headline: dict[str, str]) -> float:
        return float(np.mean([retrieval_metrics(p.logits, p.y_true)["RSum"] for p in scored]))

    def write(self, out: Path, title: str, evaluation: Evaluation, details: dict[str, str]) -> None:
        write_csv(out / "metrics.csv", evaluation.metrics)
        write_csv(out / "per_query.csv", evaluation.per_class)
        scored = [(p.task, p.logits, p.y_true, p.classnames, p.paths) for p in evaluation.scored]
        write_retrieval_report(out, title, evaluation.metrics, scored, details)

    def decode(self, logits: Tensor, top_k: int, threshold: float) -> tuple[list[int], list[float]]:
        """A query's similarities (n,) as its `top_k` best matches, best first (ties: the earlier)."""
        chosen = logits.argsort(descending=True, stable=True)[: min(top_k, len(logits))].tolist()
        return chosen, [float(logits[i]) for i in chosen]


def split_from_rows(rows: pd.DataFrame) -> RetrievalSplit:
    """A split from (video, caption) rows: videos in first-seen order."""
    videos = list(dict.fromkeys(rows.video.tolist()))
    where = {v: i for i, v in enumerate(videos)}
    return RetrievalSplit([Path(v) for v in videos], rows.caption.tolist(),
                          np.array([where[v] for v in rows.video], dtype=np.int64))

