"""Dataset recipes: names usable as `--tasks NAME`, materialised on demand into the cache.

`toy` is a few-shot suite of four single-label tasks over the toy world (shape, colour,
count, size) that share little; `toy-related` six that share much (shapes on four
backgrounds, colours on two); `toy-ml` is a
multi-label set whose 18 labels (shapes, colours, backgrounds) co-occur through scene
themes, so a label-to-label prior carries information; `toy-video` short clips of toy objects
that move, appear, disappear or change colour, with captions, for text-video retrieval.
"""

from __future__ import annotations

import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

try:
    import fcntl
except ImportError:  # Windows: no lock; racing builds each finish and the first rename wins
    fcntl = None  # type: ignore[assignment]

import numpy as np
import pandas as pd
from cpt_datasets import benchmarks as B
from cpt_datasets import toy_world as W

from cpt.data.recipes import Recipe, register
from cpt.data.taskfile import TaskSpec
from cpt.io import cache_root, write_refused, write_text

VERSION = "v4"  # bump when the generator changes, so stale materialisations are not reused
TOY_SPLITS = {"train": 32, "val": 8, "test": 40}  # images per class
# Shapes and colours are drawn faded towards the background, a condition pretraining never
# saw: zero-shot knows the words but meets them in an unfamiliar look, so tuning has room.
TOY_TASKS: dict[str, dict[str, dict]] = {
    "shape": {s: {"shapes": [s], "fade": 0.55} for s in W.SHAPES},
    "colour": {c: {"colours": [c], "fade": 0.65} for c in W.COLOURS},
    "count": {f"{w}_object{'s' if i else ''}": {"count": i + 1} for i, w in enumerate(W.COUNT_WORDS)},
    "size": {"small_object": {"count": 1, "radius": (3, 5)}, "large_object": {"count": 1, "radius": (7, 10)}},
}
TOY_RELATED_SPLITS = {"train": 16, "val": 4, "test": 30}  # images per class
# One kind of concept in several domains, with overlapping vocabularies: four shape tasks on
# four backgrounds, each over four of the six shapes, and two colour tasks; objects faded as in
# `toy` (colours more, so neither kind is easy for zero-shot). A context that learns "name the
# faded shape, whatever the background" in one task helps the others: the structure SoftCPT's
# soft sharing is meant to use.
_RELATED = {  # task -> (texture, fixed attribute, classes, fade)
    "striped_shapes": ("striped", "shapes", ["circle", "square", "triangle", "cross"], 0.6),
    "dotted_shapes": ("dotted", "shapes", ["square", "triangle", "diamond", "star"], 0.6),
    "checkered_shapes": ("checkered", "shapes", ["circle", "diamond", "cross", "star"], 0.6),
    "plain_shapes": ("plain", "shapes", ["circle", "square", "triangle", "star"], 0.6),
    "striped_colours": ("striped", "colours", ["red", "green", "blue", "yellow"], 0.8),
    "dotted_colours": ("dotted", "colours", ["blue", "yellow", "purple", "orange"], 0.8),
}
TOY_RELATED_TASKS: dict[str, dict[str, dict]] = {
    task: {c: {what: [c], "texture": texture, "fade": fade} for c in classes}
    for task, (texture, what, classes, fade) in _RELATED.items()
}
THEMES = [  # (colours, shapes, textures) that tend to appear together in toy-ml scenes
    (["red", "orange", "yellow"], ["star", "triangle"], ["striped"]),
    (["blue", "cyan"], ["circle", "diamond"], ["dotted", "plain"]),
    (["green", "yellow"], ["triangle", "cross"], ["checkered"]),
    (["pink", "purple"], ["circle", "star", "square"], ["plain", "dotted"]),
]
TOY_ML_LABELS = [*W.SHAPES, *W.COLOURS, *(f"{t}_background" for t in W.TEXTURES)]


def _scene(rng: np.random.Generator, fixed: dict) -> W.Scene:
    """A scene with the task's fixed attributes; a (low, high) radius is drawn per image."""
    if isinstance(fixed.get("radius"), tuple):
        fixed = {**fixed, "radius": int(rng.integers(*fixed["radius"]))}
    return W.make_scene(rng, **fixed)


def _done(folder: Path) -> bool:
    return (folder / ".complete").exists()


@contextmanager
def _locked(root: Path, name: str) -> Iterator[None]:
    """Hold `root/.NAME.lock` (an exclusive fcntl lock; released by the system if the holder dies,
    even by SIGKILL), so one process at a time builds a recipe and the others wait, then reuse it."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        fh = open(root / f".{name}.lock", "a+b")
    except OSError as exc:
        raise write_refused(root, exc) or exc
    with fh:
        if fcntl is not None:
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def _stale(root: Path, name: str) -> list[Path]:
    """Temp folders of `name` that no build owns (called under the lock): an interrupted or killed
    build's `.NAME.building.PID`, and the `.NAME-NNN` folders of cpt versions without the lock."""
    legacy = re.compile(rf"\.{re.escape(name)}-\d+")
    return [p for p in root.iterdir() if p.is_dir() and (p.name.startswith(f".{name}.building.") or legacy.fullmatch(p.name))]


def _materialise(root: Path, name: str, build: Callable[[Path], None]) -> Path:
    """`root/name`, built once by `build(tmp)` into a temp folder and renamed into place when
    complete: concurrent callers (three `cpt fit --tasks toy` at once) wait for the one that
    builds and reuse its folder; an interrupted build leaves nothing that is used or kept."""
    folder = root / name
    if _done(folder):
        return folder
    with _locked(root, name):
        if _done(folder):  # built while this process waited
            return folder
        for stale in _stale(root, name):
            shutil.rmtree(stale, ignore_errors=True)
        if folder.exists():  # a folder without its .complete mark is not a finished build
            shutil.rmtree(folder)
        tmp = root / f".{name}.building.{os.getpid()}"
        try:
            build(tmp)
            write_text(tmp / ".complete", VERSION)
            try:
                tmp.rename(folder)
            except OSError:
                if not _done(folder):  # without a lock (no fcntl) another process may have won the race
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:  # Ctrl-C, SIGTERM, a full disk: remove the partial build now
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return folder


def _build_suite(tmp: Path, seed: int, tasks: dict[str, dict[str, dict]], splits: dict[str, int], salt: int) -> None:
    for t, (task, classes) in enumerate(tasks.items()):
        for c, (name, fixed) in enumerate(classes.items()):
            rng = np.random.default_rng([seed, t, c, salt] if salt else [seed, t, c])
            for split, n in splits.items():
                out = tmp / task / split / name
                out.mkdir(parents=True)
                for i in range(n):
                    W.render(_scene(rng, fixed), rng).save(out / f"{i:03d}.png")


def materialize_toy(root: Path, seed: int = 0) -> list[tuple[str, Path]]:
    """Write the four toy tasks as train/val/test class folders under `root/toy`."""
    folder = _materialise(root, "toy", lambda tmp: _build_suite(tmp, seed, TOY_TASKS, TOY_SPLITS, 0))
    return [(task, folder / task) for task in TOY_TASKS]


def materialize_toy_related(root: Path, seed: int = 0) -> list[tuple[str, Path]]:
    """Write the six related toy tasks as train/val/test class folders under `root/toy-related`."""
    folder = _materialise(root, "toy-related", lambda tmp: _build_suite(tmp, seed, TOY_RELATED_TASKS,
                                                                          TOY_RELATED_SPLITS, 1))
    return [(task, folder / task) for task in TOY_RELATED_TASKS]


def themed_scene(rng: np.random.Generator) -> W.Scene:
    """Two or three objects whose colours, shapes and background usually come from one theme."""
    count = int(rng.integers(2, 4))
    if rng.random() < 0.85:
        colours, shapes, textures = THEMES[rng.integers(len(THEMES))]
    else:
        colours, shapes, textures = list(W.COLOURS), W.SHAPES, W.TEXTURES
    return W.make_scene(
        rng,
        shapes=[shapes[i] for i in rng.integers(len(shapes), size=count)],
        colours=[colours[i] for i in rng.integers(len(colours), size=count)],
        count=count,
        texture=textures[rng.integers(len(textures))],
    )


def labels(scene: W.Scene) -> list[int]:
    """The scene's toy-ml labels, 0/1 in TOY_ML_LABELS order."""
    present = {o.shape for o in scene.objects} | {o.colour for o in scene.objects} | {f"{scene.texture}_background"}
    return [int(label in present) for label in TOY_ML_LABELS]


def _build_toy_ml(tmp: Path, seed: int, n: dict[str, int] | None) -> None:
    (tmp / "images").mkdir(parents=True)
    for s, (split, count) in enumerate((n or {"train": 600, "test": 600}).items()):
        rng = np.random.default_rng([seed, 100 + s])
        rows = []
        for i in range(count):
            scene = themed_scene(rng)
            rel = f"images/{split}_{i:04d}.png"
            W.render(scene, rng).save(tmp / rel)
            rows.append([rel, *labels(scene)])
        pd.DataFrame(rows, columns=["path", *TOY_ML_LABELS]).to_csv(tmp / f"{split}.csv", index=False)


def materialize_toy_ml(root: Path, seed: int = 0, n: dict[str, int] | None = None) -> list[tuple[str, Path]]:
    """Write toy-ml: images/ plus wide train.csv / test.csv (1 = present, 0 = absent)."""
    return [("toy-ml", _materialise(root, "toy-ml", lambda tmp: _build_toy_ml(tmp, seed, n)))]


def data_root() -> Path:
    """Where recipes materialise: <cache>/data/<version>."""
    return cache_root() / "data" / VERSION


def materialize_toy_video(root: Path, seed: int = 0) -> list[tuple[str, Path]]:
    from cpt_datasets import toy_video  # it builds through this module's _materialise

    return toy_video.materialize_toy_video(root, seed)


BUILDERS: dict[str, Callable[[Path, int], list[tuple[str, Path]]]] = {
    "toy": materialize_toy, "toy-related": materialize_toy_related, "toy-ml": materialize_toy_ml,
    "toy-video": materialize_toy_video}


def materialize(name: str, seed: int = 0) -> list[tuple[str, Path]]:
    """Materialise recipe `name` (once) and return its (task, path) pairs."""
    return BUILDERS[name](data_root() / f"seed{seed}", seed)


def _specs(name: str) -> Callable[[Path | None], list[TaskSpec]]:
    return lambda _root: [TaskSpec(task, str(path)) for task, path in materialize(name)]


def register_all() -> None:
    """Entry point of the `cpt.recipes` group: the toy recipes and the SoftCPT benchmark suites."""
    # 32 px scenes of a few small objects: a random crop can cut away what is counted or
    # measured, so the toy recipes train on flipped full views by default; toy-ml's labels
    # include colours, so its strong views leave out the hue-shifting operations
    register(Recipe("toy", "toy world: shape (6), colour (8), count (4), size (2) classes", "single-label",
                    _specs("toy"), {"crop_scale": 1.0}, materialised=True))
    register(Recipe("toy-related", "toy world, related tasks: shapes on four backgrounds, colours on two (4 classes "
                    "each, overlapping)", "single-label", _specs("toy-related"), {"crop_scale": 1.0}, materialised=True))
    register(Recipe("toy-ml", "toy world, multi-label: 18 co-occurring labels (shapes, colours, backgrounds)",
                    "multi-label", _specs("toy-ml"), {"crop_scale": 1.0, "strong_augment": "colour-safe"},
                    materialised=True))
    # 2-second clips at 8 frames a second: every frame is a candidate for the 12 sampled
    register(Recipe("toy-video", "toy world, text-video retrieval: clips of objects that move, appear, disappear or "
                    "change colour, 2-3 captions each, some of which only frame order tells apart", "retrieval",
                    _specs("toy-video"), {"fps": 8.0}, materialised=True))
    for name, description in B.DESCRIPTIONS.items():
        register(Recipe(name, description, "single-label", lambda root, name=name: B.benchmark_specs(name, root)))
