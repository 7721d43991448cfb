"""`cpt predict`: label images with a run or an exported classifier, one record per image.

Single-label records hold the top-k classes with softmax probabilities; multi-label
records hold every class's sigmoid score and the classes at or above the threshold.
Unreadable files are reported and skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


from cpt import dist
from cpt.deploy.artifact import Artifact
from cpt.core.backbone import Backbone
from cpt.console import log
from cpt.data.tasks import IMAGE_EXTENSIONS
from cpt.errors import CptError
from cpt.data.features import FeatureCache
from cpt.kinds import kind


@dataclass
class Prediction:
    path: str
    task: str
    classes: list[str]  # top-k (single-label) or those above the threshold (multi-label)
    scores: list[float]  # their probabilities
    logits: list[float]  # every class, in class order


def list_files(inputs: list[str], suffixes: tuple[str, ...] | set[str], what: str) -> list[Path]:
    """Files named directly, plus the files with one of `suffixes` under named folders (recursive,
    sorted); `what` names them in errors ("image", "video")."""
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if not f.is_dir() and f.suffix.lower() in suffixes)
        elif p.exists():
            found.append(p)
        else:
            raise CptError(f"{item} does not exist; give {what} files or folders of {what}s.")
    if not found:
        raise CptError(f"No {what} files ({', '.join(sorted(suffixes))}) found in {', '.join(inputs)}.")
    return found


def list_images(inputs: list[str]) -> list[Path]:
    """Image files named directly, plus the image files under named folders (recursive, sorted)."""
    return list_files(inputs, IMAGE_EXTENSIONS, "image")


def check_options(top_k: int, threshold: float) -> None:
    """Refuse a --top-k or --threshold that would print nothing, or everything, without saying so."""
    if top_k < 1:
        raise CptError(f"--top-k {top_k} must be at least 1 (the number of classes to report per image).")
    if not 0 <= threshold <= 1:  # also NaN
        raise CptError(f"--threshold {threshold} must be a probability between 0 and 1.")


def predict(artifact: Artifact, backbone: Backbone, images: list[Path], task: str | None = None, top_k: int = 1,
            threshold: float = 0.5, batch: int = 256, cache: FeatureCache | None = None) -> Iterator[Prediction]:
    """Predictions for `images`, batch by batch, so output can stream (options checked at once).
    Under torchrun every rank encodes a share of each batch and yields every prediction."""
    check_options(top_k, threshold)
    tasks = artifact.task_index(task)
    return _predict(artifact, backbone, images, tasks, top_k, threshold, batch, cache)


def _predict(artifact: Artifact, backbone: Backbone, images: list[Path], tasks: list[int], top_k: int,
             threshold: float, batch: int, cache: FeatureCache | None) -> Iterator[Prediction]:
    decoder = kind(artifact.kind)
    cache = cache or FeatureCache(backbone, encoder=artifact.image_encoder)
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        before = set(cache.stats.failed)
        feats = dist.share_features(cache, chunk, None, "Predicting")  # under torchrun: a share per rank
        for path in set(cache.stats.failed) - before:
            log.warning("skipped %s: %s", path, cache.stats.failed[path])
        ok = cache.readable(chunk).tolist()
        if not ok:
            continue
        feats = feats[ok]
        for t in tasks:
            logits = artifact.classifiers[t].logits(feats)
            names = artifact.classnames[t]
            for row, i in zip(logits, ok):
                chosen, probs = decoder.decode(row, top_k, threshold)
                yield Prediction(str(chunk[i]), artifact.tasks[t], [names[c] for c in chosen], probs, row.tolist())
