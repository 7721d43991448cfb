"""Searching videos with a retrieval run: text queries against videos (ranked videos per query),
videos against a caption file (ranked captions per video), and a saved embedding index of a
video folder, built once and queried many times.

An index keeps the run it was built with (its path and backbone checksum), the frame
sampling, the videos and their normalised embeddings; a query loads the run's text encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from cpt import retrieval
from cpt import run as R
from cpt.console import log
from cpt.data.clips import ClipSource
from cpt.data.video import VIDEO_SUFFIXES
from cpt.deploy.predict import list_files
from cpt.errors import CptError
from cpt.io import save_torch
from cpt.kinds import KINDS
from cpt.kinds.retrieval import RetrievalOptions
from cpt.methods.retrieval.base import RetrievalMethod
from cpt.options import build

INDEX_FORMAT = "cpt-video-index/1"


@dataclass
class VideoIndex:
    run: str  # the run whose encoders made it
    backbone_sha256: str
    sampling: dict
    videos: list[str]
    embeddings: Tensor  # (n, dim), normalised


@dataclass
class Match:
    query: str  # the text query, or the video path (video -> text)
    rank: int
    match: str  # the video path, or the caption
    score: float  # cosine similarity


def list_videos(inputs: list[str]) -> list[Path]:
    """Video files named directly, plus the video files under named folders (recursive, sorted)."""
    return list_files(inputs, VIDEO_SUFFIXES, "video")


def build_index(run: Path, method: RetrievalMethod, source: ClipSource, videos: list[Path]) -> VideoIndex:
    """Embed every readable video of `videos` (the others are reported and left out)."""
    keep = source.readable(videos).tolist()
    for path, reason in source.stats.failed.items():
        log.warning("skipped %s: %s", path, reason)
    if not keep:
        raise CptError("None of the videos could be decoded (see the warnings above).")
    kept = [videos[i] for i in keep]
    embeddings, _ = retrieval.embed(method, source, kept, [])
    return VideoIndex(str(run), method.backbone.checksum, source.sampling.key(), [str(v) for v in kept], embeddings)


def save_index(index: VideoIndex, path: Path) -> None:
    save_torch(path, {"format": INDEX_FORMAT, "run": index.run, "backbone_sha256": index.backbone_sha256,
                      "sampling": index.sampling, "videos": index.videos, "embeddings": index.embeddings})


def is_index(path: Path) -> bool:
    """Whether `path` is a saved video index (a file, not a run directory)."""
    return path.is_file() and _read(path) is not None


def _read(path: Path) -> dict | None:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not an index: the caller says what it expected
        return None
    return payload if isinstance(payload, dict) and payload.get("format") == INDEX_FORMAT else None


def load_index(path: Path) -> VideoIndex:
    payload = _read(path)
    if payload is None:
        raise CptError(f"{path} is not a video index written by `cpt index`.")
    return VideoIndex(payload["run"], payload["backbone_sha256"], payload["sampling"], payload["videos"],
                      payload["embeddings"])


def _ranked(queries: list[str], sim: Tensor, names: list[str], top_k: int) -> list[Match]:
    """The `top_k` best of each query's row of `sim` (queries x names), as the retrieval kind decodes a row."""
    out = []
    for query, row in zip(queries, sim):
        order, scores = KINDS["retrieval"].decode(row, top_k, 0.0)
        out += [Match(query, r, names[i], score) for r, (i, score) in enumerate(zip(order, scores), start=1)]
    return out


def search_text(method: RetrievalMethod, index: VideoIndex, queries: list[str], top_k: int) -> list[Match]:
    """Text -> video: each query's `top_k` videos of the index."""
    _, text = retrieval.embed(method, None, [], queries)
    return _ranked(queries, text @ index.embeddings.T, index.videos, top_k)


def search_captions(method: RetrievalMethod, index: VideoIndex, captions: list[str], top_k: int) -> list[Match]:
    """Video -> text: each video's `top_k` captions among `captions`."""
    _, text = retrieval.embed(method, None, [], captions)
    return _ranked(index.videos, index.embeddings @ text.T, captions, top_k)


def check_query(queries: list[str], captions: Path | None, top_k: int) -> None:
    """Exactly one of --query / --captions, and a usable --top-k."""
    if bool(queries) == (captions is not None):
        raise CptError("A retrieval run answers text queries (--query TEXT, repeatable) or ranks captions for each "
                       "video (--captions FILE, one per line): give one of the two.")
    if top_k < 1:
        raise CptError(f"--top-k {top_k} must be at least 1.")


def open_run(run: Path, device: str) -> tuple[dict, RetrievalMethod]:
    """A finished retrieval run's config and its method with the learned weights."""
    config, _, method = R.load_run(run, device)
    if config["kind"] != "retrieval":
        raise CptError(f"{run} is a {config['kind']} run; --query and --captions are for retrieval runs.")
    return config, method


def index_videos(run: Path, inputs: list[str], device: str,
                 cache_dir: str | None = None) -> tuple[VideoIndex, RetrievalMethod]:
    """Embed the videos of `inputs` with the run's video encoder, sampled as the run was (`cpt index`)."""
    config, method = open_run(run, device)
    options = build(RetrievalOptions, config["resolved"]["kind"])
    source = retrieval.clip_source(method.backbone, options, cache_dir or config["request"].get("cache_dir"))
    return build_index(run, method, source, list_videos(inputs)), method


def search(source: Path, videos: list[str] | None, queries: list[str], captions: Path | None, top_k: int,
           device: str) -> list[Match]:
    """`cpt predict` on a retrieval run or a saved index: ranked videos per query, or ranked
    captions (one per line of `captions`) per video."""
    check_query(queries, captions, top_k)
    if is_index(source):
        if videos:
            raise CptError(f"{source} is an index: its videos are fixed. Query it alone, or pass the run to search "
                           "other videos.")
        index = load_index(source)
        _, method = open_run(Path(index.run), device)
        if method.backbone.checksum != index.backbone_sha256:
            raise CptError(f"The index {source} was built with other weights than the run {index.run} has now; "
                           "rebuild it with `cpt index`.")
    else:
        if not videos:
            raise CptError("Give the videos to search (files or folders), or a saved index (`cpt index`).")
        index, method = index_videos(source, videos, device)
    if queries:
        return search_text(method, index, queries, top_k)
    lines = [line.strip() for line in _read_lines(captions) if line.strip()]
    if not lines:
        raise CptError(f"--captions {captions} holds no caption (one per line).")
    return search_captions(method, index, lines, top_k)


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise CptError(f"Cannot read --captions {path}: {exc.strerror or exc}.") from None
