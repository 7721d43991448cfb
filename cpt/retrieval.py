"""Retrieval's stages of fit, eval and predict: a task's training pairs as the method reads them,
and a split scored as the similarity matrix of its videos and captions.

Videos that do not decode are left out (and listed in skipped.csv) with their captions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from cpt.core.backbone import Backbone
from cpt.core.text import tokenize
from cpt.data.clips import ClipSource, TrainClips
from cpt.data.retrieval import RetrievalTask
from cpt.data.video import FrameSampling
from cpt.eval.metrics import TaskPredictions
from cpt.errors import CptError
from cpt.kinds.base import TaskKind
from cpt.kinds.retrieval import RetrievalOptions
from cpt.methods.base import TaskData
from cpt.methods.retrieval.base import RetrievalMethod


def clip_source(backbone: Backbone, kind_options: RetrievalOptions, cache_dir: str | None,
                batch_size: int = 64) -> ClipSource:
    """Decoded frames and frame features of `backbone`, sampled as the run's --frames and --fps say."""
    sampling = FrameSampling(kind_options.frames, kind_options.fps, backbone.preprocess.resolution)
    return ClipSource(backbone, sampling, Path(cache_dir) if cache_dir else None, batch_size)


def _readable_pairs(task: RetrievalTask, split: str, source: ClipSource) -> tuple[list[Path], Tensor, list[str]]:
    """(readable videos, each kept caption's video among them, the kept captions) of a split."""
    videos = task.paths(split)
    keep = source.readable(videos).tolist()
    where = {old: new for new, old in enumerate(keep)}
    captions, owners = [], []
    for caption, video in zip(task.captions(split), task.targets(split).tolist()):
        if video in where:
            captions.append(caption)
            owners.append(where[video])
    return [videos[i] for i in keep], torch.tensor(owners, dtype=torch.long), captions


def training_pairs(kind: TaskKind, method: RetrievalMethod, task: RetrievalTask, source: ClipSource, views: int,
                   seed: int) -> TaskData:
    """The task's training pairs: caption tokens, each pair's video, and `views` random-offset
    clips of every video (frame features or pixels, as the method reads them)."""
    videos, owners, captions = _readable_pairs(task, "train", source)
    kind.check_training(task, owners.numpy())
    dim = source.backbone.geometry["embed_dim"]
    tokens = tokenize(captions, source.backbone.model)
    clips = TrainClips(source, videos, owners, views, seed, method.video_input)
    empty = torch.empty(0, dim)
    return TaskData(task.name, [], kind, owners, clips, empty, empty, torch.empty(0, dtype=torch.long),
                    tokens=tokens)


@torch.no_grad()
def embed(method: RetrievalMethod, source: ClipSource, videos: list[Path], captions: list[str],
          batch_size: int = 64) -> tuple[Tensor, Tensor]:
    """(video embeddings (n_videos, dim), caption embeddings (n_captions, dim)), normalised."""
    device = method.backbone.device
    was = method.training
    method.eval()
    try:
        video = [method.encode_video(source.eval_clips(videos[i:i + batch_size], method.video_input).to(device))
                 .float().cpu() for i in range(0, len(videos), batch_size)]
        tokens = tokenize(captions, method.backbone.model)
        text = [method.encode_text(part.to(device)).float().cpu() for part in tokens.split(batch_size) if len(part)]
    finally:
        method.train(was)
    dim = method.backbone.geometry["embed_dim"]
    return (torch.cat(video) if video else torch.empty(0, dim)), (torch.cat(text) if text else torch.empty(0, dim))


def score(tasks: list[RetrievalTask], method: RetrievalMethod, source: ClipSource,
          split: str = "test") -> list[TaskPredictions]:
    """Each task's split as (videos x captions) similarities, its captions' videos as targets."""
    scored = []
    for task in tasks:
        videos, owners, captions = _readable_pairs(task, split, source)
        if not videos:
            raise CptError(f"Task {task.name!r} has no readable {split} video (see skipped.csv).")
        video, text = embed(method, source, videos, captions)
        scored.append(TaskPredictions(task.name, captions, owners.numpy(), (video @ text.T).numpy(),
                                      [str(v) for v in videos]))
    return scored


def val_scorer(kind: TaskKind, method: RetrievalMethod, tasks: list[RetrievalTask],
               source: ClipSource) -> Callable[[], float]:
    """The validation split's R-Sum under the method's current weights (--select val)."""
    return lambda: kind.selection_score(score(tasks, method, source, "val"), {})
