"""Single-label tasks: load a folder, CSV or CoOp split JSON; split by seed; sample K shots.

Loading only lists files (decoding 100k images is slow); `check_image` (cpt.data.images, the one
place that reads and decodes an image) is called by whoever needs the pixels. An image listed
twice is kept once with a warning when both entries agree, and refused when they disagree (two
classes, or two splits: test images would leak into training). Every random choice is a
`random.Random` seeded with a string built from the seed, the task and the class, so a result
never depends on the order in which tasks or classes are processed, nor on PYTHONHASHSEED.
"""

from __future__ import annotations

import logging
import math
import random
import reprlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from cpt.data.files import read_csv_file, read_json_file, read_text_file
from cpt.data.images import check_image, file_problem  # noqa: F401 (check_image: few_shot's default, and fit's)
from cpt.data.names import check_task_names
from cpt.data.recipes import recipe
from cpt.errors import CptError
from cpt.data.taskfile import TaskSpec, is_task_file, read_task_file, repeated

log = logging.getLogger("cpt")
Check = Callable[[Path], str | None]  # a path -> None if the image is usable, else the reason

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
SPLITS = ("train", "val", "test")
VAL_SHOTS = 4  # CoOp's protocol: the few-shot validation subset has min(K, 4) images per class


@dataclass(frozen=True)
class Sample:
    path: Path  # absolute, resolved
    label: int  # index into Task.classnames


@dataclass(frozen=True)
class Skipped:
    task: str
    path: str
    reason: str


@dataclass
class Task:
    name: str  # key used in CSVs, e.g. "pets"
    classnames: list[str]  # display names
    splits: dict[str, list[Sample]]  # always "train", "val", "test" (val may be empty)
    source: str  # the path the user gave
    title: str  # natural-language task name

    def paths(self, split: str) -> list[Path]:
        """The images of `split`."""
        return [s.path for s in self.splits[split]]

    def targets(self, split: str) -> np.ndarray:
        """The class labels (n,) of `split`."""
        return np.array([s.label for s in self.splits[split]], dtype=np.int64)


def parse_task_spec(spec: str) -> list[tuple[str, str]]:
    """`NAME=PATH[,NAME=PATH...]` as (name, path) pairs; a bare PATH is named after its folder or file stem."""
    pairs = []
    for item in (part.strip() for part in spec.split(",")):
        name, sep, path = item.partition("=")
        if not sep or "/" in name or "\\" in name:  # a bare path (which may itself contain "=")
            name, path = (_default_name(item) if item else ""), item
        name, path = name.strip(), path.strip()
        if not name or not path:
            raise CptError(
                f"--tasks has an empty task name or path in {item!r} (in {spec!r}). Write it as "
                "NAME=PATH[,NAME=PATH...], e.g. --tasks flowers=/data/flowers,pets=/data/pets."
            )
        pairs.append((name, path))
    duplicates = repeated([name for name, _ in pairs])
    if duplicates:
        raise CptError(
            f"--tasks names the task {', '.join(map(repr, duplicates))} more than once ({spec!r}). "
            "Give each task its own name: NAME=PATH."
        )
    check_task_names([name for name, _ in pairs], f"--tasks {spec}")
    return pairs


def _default_name(path: str) -> str:
    """A bare path's task name: the folder name, or the file stem of a CSV/JSON."""
    file = _split_image_root(path)[0]
    return file.stem if file.suffix.lower() in (".csv", ".json") else file.resolve().name


def _split_image_root(path: str) -> tuple[Path, Path | None]:
    """`SPLIT.json@IMAGE_ROOT` as (json, root); any other path as (path, None)."""
    at = path.lower().find(".json@")
    return (Path(path[: at + 5]), Path(path[at + 6 :])) if at >= 0 else (Path(path), None)


def load_task(name: str, path: str, seed: int) -> tuple[Task, list[Skipped]]:
    """Load a task from a folder, a CSV or a CoOp split JSON (`SPLIT.json@IMAGE_ROOT` sets the image root)."""
    file, root = _split_image_root(path)
    for p in (file, root):
        if p is not None and not p.exists():
            raise CptError(
                f"The data path {p} of task '{name}' does not exist. Check the path in "
                f"--tasks {name}=PATH (a folder, a .csv or a CoOp split .json)."
            )
    if file.is_dir() and (file / "train").is_dir():
        classes, splits, skipped = _split_folders(name, file.resolve())
    elif file.is_dir():
        classes, splits, skipped = _class_folders(name, file.resolve(), seed)
    elif file.suffix.lower() == ".csv":
        classes, splits, skipped = _from_csv(name, file.resolve(), seed)
    elif file.suffix.lower() == ".json":
        classes, splits, skipped = _from_coop_json(name, file.resolve(), (root or file.parent).resolve())
    else:
        raise CptError(
            f"Task '{name}': {file} is neither a folder, a .csv nor a .json. Point --tasks {name}=PATH at a "
            "folder of class sub-folders (optionally inside train/ val/ test/), a CSV with path,label "
            "columns, or a CoOp split JSON."
        )
    if file.is_dir():  # CSV and JSON entries went through `_unique`
        _one_place_per_image(name, path, classes, splits)
    if not splits["test"]:
        raise CptError(
            f"Task '{name}' ({path}) has no test images. Add a test split (a test/ folder, split=test "
            "rows, or a \"test\" list) or give each class at least 3 images so a test share can be held out."
        )
    ordered = {k: sorted(v, key=lambda s: (s.label, str(s.path))) for k, v in splits.items()}
    return Task(name, classes, ordered, path, name.replace("_", " ")), skipped


def _one_place_per_image(name: str, source: str, classes: list[str], splits: dict[str, list[Sample]]) -> None:
    """Refuse an image (a resolved path: links followed) of a folder task in two splits or two classes,
    which folders reach through symbolic links."""
    seen: dict[Path, tuple[str, int]] = {}
    for split in SPLITS:
        for s in splits[split]:
            first = seen.setdefault(s.path, (split, s.label))
            if first != (split, s.label):
                raise CptError(
                    f"Task '{name}' ({source}): the image {s.path} is both in {first[0]} (class '{classes[first[1]]}') "
                    f"and in {split} (class '{classes[s.label]}'), through a symbolic link or a copy of the entry. "
                    "An image may be in one split and one class only (an image in both train and test leaks the "
                    "test into training): remove one of them."
                )


def _display(folder: str) -> str:
    return folder.replace("_", " ")


def _classnames_file(root: Path) -> dict[str, str]:
    """Folder -> display name from `classnames.txt` (`<folder> <display name...>` per line), if present."""
    file = root / "classnames.txt"
    if not file.is_file():
        return {}
    names = {}
    text = read_text_file(file, "The class-name file", "It holds one line per class folder: <folder> <display name>.")
    for line in text.splitlines():
        folder, _, display = line.strip().partition(" ")
        if folder:
            names[folder] = display.strip() or _display(folder)
    return names


def _subdirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _list_images(task: str, folder: Path, cls: str) -> tuple[list[Path], list[Skipped]]:
    """The image files directly in `folder`; other non-hidden entries but folders become Skipped
    entries (files of other types, and image names that are no regular file: FIFOs, broken links, link loops)."""
    images, skipped = [], []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or p.is_dir():
            continue
        problem = "not an image file" if p.suffix.lower() not in IMAGE_EXTENSIONS else file_problem(p)
        if problem:
            skipped.append(Skipped(task, str(p), problem))
        else:
            images.append(p)
    if not images:
        raise CptError(
            f"class '{cls}' of task '{task}' has no images in {folder}. Add images "
            f"({', '.join(sorted(IMAGE_EXTENSIONS))}) to it or remove the folder."
        )
    return images, skipped


def _split_folders(task: str, root: Path) -> tuple[list[str], dict[str, list[Sample]], list[Skipped]]:
    """`train/`, optional `val/`, required `test/`, each with one sub-folder per class."""
    if not (root / "test").is_dir():
        raise CptError(
            f"Task '{task}': {root} has a train/ folder but no test/ folder. Add test/ with one "
            "sub-folder per class, or put the class folders directly in the task folder to split by seed."
        )
    folders = _subdirs(root / "train")
    if not folders:
        raise CptError(
            f"Task '{task}': {root / 'train'} has no class sub-folders. Put one folder of images per class in it."
        )
    index = {f: i for i, f in enumerate(folders)}
    splits: dict[str, list[Sample]] = {s: [] for s in SPLITS}
    skipped: list[Skipped] = []
    for split in SPLITS:
        if not (root / split).is_dir():
            continue
        for folder in _subdirs(root / split):
            if folder not in index:
                raise CptError(
                    f"Task '{task}': class folder '{folder}' in {root / split} has no counterpart in "
                    f"{root / 'train'}. Rename it to one of the training classes or add training images for it."
                )
            images, skip = _list_images(task, root / split / folder, folder)
            splits[split] += [Sample(p.resolve(), index[folder]) for p in images]
            skipped += skip
    names = _classnames_file(root)
    return [names.get(f, _display(f)) for f in folders], splits, skipped


def _class_folders(task: str, root: Path, seed: int) -> tuple[list[str], dict[str, list[Sample]], list[Skipped]]:
    """A folder of class sub-folders, split per class under the seed."""
    folders = _subdirs(root)
    if not folders:
        raise CptError(
            f"Task '{task}': {root} has no class sub-folders. Put one folder of images per class in it "
            "(or train/ val/ test/ folders that each hold the class folders)."
        )
    splits: dict[str, list[Sample]] = {s: [] for s in SPLITS}
    skipped: list[Skipped] = []
    for i, folder in enumerate(folders):
        images, skip = _list_images(task, root / folder, folder)
        skipped += skip
        for split, part in zip(SPLITS, _split_by_seed([p.resolve() for p in images], seed, task, folder)):
            splits[split] += [Sample(p, i) for p in part]
    names = _classnames_file(root)
    return [names.get(f, _display(f)) for f in folders], splits, skipped


def _split_by_seed(paths: list[Path], seed: int, task: str, cls: str) -> tuple[list[Path], list[Path], list[Path]]:
    """One class's images as 50/20/30 train/val/test (half rounded up); every split gets one from 3 images on."""
    shuffled = sorted(paths)
    random.Random(f"split/{seed}/{task}/{cls}").shuffle(shuffled)
    n = len(shuffled)
    if n < 3:
        log.warning("class '%s' of task '%s' has only %d image(s): all go to training, none to val/test", cls, task, n)
        return shuffled, [], []
    n_train, n_val = (n + 1) // 2, max(1, round(0.2 * n))
    n_train -= max(0, n_train + n_val + 1 - n)  # leave at least one for test
    return shuffled[:n_train], shuffled[n_train : n_train + n_val], shuffled[n_train + n_val :]


def _class_order(labels: set[str]) -> list[str]:
    """Sorted label strings; numerically when all are integers, so "10" comes after "9"."""
    if all(s.lstrip("-").isdigit() for s in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def _from_csv(task: str, file: Path, seed: int) -> tuple[list[str], dict[str, list[Sample]], list[Skipped]]:
    """A CSV with `path,label[,split]`; paths relative to the CSV's folder; no split column: split by seed."""
    frame = read_csv_file(
        file, f"Task '{task}': the CSV", "A single-label CSV is UTF-8 text with a header row path,label[,split] and "
        "one row per image (paths relative to the CSV's folder).", dtype=str, keep_default_na=False)
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    if not {"path", "label"} <= set(frame.columns):
        raise CptError(
            f"Task '{task}': {file} has columns {', '.join(frame.columns) or '(none)'}, but a single-label CSV "
            "needs 'path' and 'label' (and optionally 'split' with train/val/test). Rename the header row."
        )
    frame = frame.apply(lambda col: col.str.strip())
    has_split = "split" in frame.columns
    if has_split:
        frame["split"] = frame["split"].str.lower()
        bad = frame[~frame["split"].isin(SPLITS)]
        if len(bad):
            raise CptError(
                f"Task '{task}': {file} row {bad.index[0] + 2} has split {bad['split'].iloc[0]!r}; "
                "the split column may only hold train, val or test."
            )
    empty = frame[(frame["path"] == "") | (frame["label"] == "")]
    if len(empty):
        raise CptError(
            f"Task '{task}': {file} row {empty.index[0] + 2} has an empty path or label. Fill it in or delete the row."
        )
    labels = _class_order(set(frame["label"]))
    index = {c: i for i, c in enumerate(labels)}
    splits: dict[str, list[Sample]] = {s: [] for s in SPLITS}
    skipped: list[Skipped] = []
    by_class: dict[str, list[tuple[Path, str]]] = {c: [] for c in labels}
    rows = [Entry((file.parent / row.path).resolve(), row.label, row.split if has_split else "", f"row {i + 2}")
            for i, row in enumerate(frame.itertuples(index=False))]
    for entry in _unique(task, file, rows):
        if entry.path.suffix.lower() not in IMAGE_EXTENSIONS:
            skipped.append(Skipped(task, str(entry.path), "not an image file"))
        else:
            by_class[entry.label].append((entry.path, entry.split))
    for cls, found in by_class.items():
        if not found:
            raise CptError(
                f"class '{cls}' of task '{task}' has no images in {file}: none of its rows points to an "
                f"image file ({', '.join(sorted(IMAGE_EXTENSIONS))}). Fix its paths or remove its rows."
            )
        if has_split:
            for path, split in found:
                splits[split].append(Sample(path, index[cls]))
        else:
            for split, part in zip(SPLITS, _split_by_seed([p for p, _ in found], seed, task, cls)):
                splits[split] += [Sample(p, index[cls]) for p in part]
    return [_display(c) for c in labels], splits, skipped


@dataclass(frozen=True)
class Entry:
    """One listed image of a CSV or split JSON, before it becomes a Sample."""

    path: Path  # resolved
    label: Any  # the class key as the file writes it
    split: str  # "" when the split is drawn by seed
    where: str  # "row 7", '"test" entry 3': where the file lists it


def _unique(task: str, file: Path, entries: list[Entry], split_file: bool = False) -> list[Entry]:
    """`entries` with each image once: repeats with the same class and split are dropped with a
    warning; an image listed with two classes, or in two splits (a test image would leak into
    training), is refused — except, in a published split file (`split_file`), an image in two
    splits with the same class: the file defines a benchmark, so it is kept with a warning."""
    first: dict[Path, Entry] = {}
    kept, repeats, leaks = [], [], []
    for entry in entries:
        seen = first.setdefault(entry.path, entry)
        if seen is entry:
            kept.append(entry)
        elif (seen.label, seen.split) == (entry.label, entry.split):
            repeats.append(entry)
        elif split_file and seen.label == entry.label:
            kept.append(entry)
            leaks.append(entry)
        else:
            def place(e: Entry) -> str:
                return f"{e.where} (class {e.label!r}{f', split {e.split}' if e.split else ''})"

            raise CptError(
                f"Task '{task}': {file} lists the image {entry.path} twice, in {place(seen)} and in {place(entry)}. "
                "An image may have one class and be in one split only (an image in both train and test leaks the "
                "test into training): delete or fix one of the two."
            )
    if repeats:
        log.warning("task '%s': %s lists %d image(s) more than once with the same class and split (e.g. %s, %s); "
                    "each is used once", task, file, len(repeats), repeats[0].path, repeats[0].where)
    if leaks:
        log.warning("task '%s': %s puts %d image(s) in two splits (e.g. %s, %s and %s): they are kept as the file "
                    "says, but a test image that is also a training image is not a held-out measurement", task, file,
                    len(leaks), leaks[0].path, first[leaks[0].path].where, leaks[0].where)
    return kept


def _short(value: Any) -> str:
    """A bounded repr (a malformed entry may be a huge or deeply nested value)."""
    short = reprlib.Repr()
    short.maxlevel, short.maxlist, short.maxstring, short.maxother = 3, 4, 60, 60
    return short.repr(value)


def _from_coop_json(task: str, file: Path, root: Path) -> tuple[list[str], dict[str, list[Sample]], list[Skipped]]:
    """A CoOp split JSON: {"train"|"val"|"test": [[relpath, label, classname], ...]}; paths under `root`."""
    hint = (
        f"A CoOp split file is {{\"train\": [[path, label, classname], ...], \"val\": [...], \"test\": [...]}}; "
        f"fix or re-download {file.name} (images are looked up under {root}; set that with FILE.json@IMAGE_ROOT)."
    )
    data = read_json_file(file, f"Task '{task}': the split file", hint)
    if not isinstance(data, dict) or not {"train", "test"} <= set(data):
        raise CptError(f"Task '{task}': {file} lacks the \"train\" and \"test\" lists. {hint}")
    entries: list[Entry] = []
    names: dict[int, str] = {}
    for split in SPLITS:
        items = data.get(split, [])
        if not isinstance(items, list):
            raise CptError(f"Task '{task}': {file} has \"{split}\": {_short(items)}, which is not a list. {hint}")
        for j, item in enumerate(items):
            ok = (isinstance(item, list) and len(item) >= 3 and isinstance(item[0], str) and item[0].strip() != ""
                  and "\x00" not in item[0] and type(item[1]) is int and type(item[2]) in (str, int, float))
            if not ok or names.setdefault(item[1], str(item[2])) != str(item[2]):
                raise CptError(f"Task '{task}': {file} has a malformed or inconsistent \"{split}\" entry {j + 1}: "
                               f"{_short(item)}. {hint}")
            entries.append(Entry((root / item[0]).resolve(), item[1], split, f"\"{split}\" entry {j + 1}"))
    order = sorted(names)
    index = {label: i for i, label in enumerate(order)}
    splits: dict[str, list[Sample]] = {s: [] for s in SPLITS}
    skipped: list[Skipped] = []
    for entry in _unique(task, file, entries, split_file=True):
        if entry.path.suffix.lower() in IMAGE_EXTENSIONS:
            splits[entry.split].append(Sample(entry.path, index[entry.label]))
        else:
            skipped.append(Skipped(task, str(entry.path), "not an image file"))
    present = {s.label for samples in splits.values() for s in samples}
    for i, label in enumerate(order):
        if i not in present:
            raise CptError(
                f"class '{names[label]}' of task '{task}' has no images in {file}: none of its entries points "
                f"to an image file ({', '.join(sorted(IMAGE_EXTENSIONS))}). {hint}"
            )
    return [_display(names[label]) for label in order], splits, skipped


CLASS_HALVES = ("all", "base", "new")


def class_half(task: Task, half: str) -> Task:
    """The task on its base classes (the first half of its class order, rounded up, as CoOp's
    base-to-new protocol splits them), its new ones (the rest), or all; labels renumbered."""
    if half == "all":
        return task
    if len(task.classnames) < 4:
        raise CptError(f"Task {task.name!r} has {len(task.classnames)} classes; base-to-new splits a task's classes "
                       "in two halves and each half needs at least two to classify, so it needs at least four. Leave "
                       "it out of a --classes base run.")
    cut = math.ceil(len(task.classnames) / 2)
    kept = range(cut) if half == "base" else range(cut, len(task.classnames))
    renumber = {old: new for new, old in enumerate(kept)}
    splits = {split: [Sample(s.path, renumber[s.label]) for s in samples if s.label in renumber]
              for split, samples in task.splits.items()}
    return Task(task.name, [task.classnames[c] for c in kept], splits, task.source, task.title)


def few_shot(task: Task, shots: int, seed: int, check: Check = check_image) -> tuple[Task, list[Skipped]]:
    """K readable training images per class (and min(K, 4) validation images), seeded; shots <= 0 keeps all."""
    if shots <= 0:
        return task, []
    skipped: list[Skipped] = []
    splits = {"test": task.splits["test"]}
    for split, k in (("train", shots), ("val", min(shots, VAL_SHOTS))):
        pools: list[list[Sample]] = [[] for _ in task.classnames]
        for s in task.splits[split]:
            pools[s.label].append(s)
        chosen: list[Sample] = []
        for label, (cls, pool) in enumerate(zip(task.classnames, pools)):
            random.Random(f"shots/{seed}/{task.name}/{label}/{split}").shuffle(pool)
            picked, skip = _take_readable(task.name, pool, k, check)
            skipped += skip
            if split == "train" and not picked:
                raise CptError(
                    f"class '{cls}' of task '{task.name}' has no readable training images "
                    f"({len(pool)} tried, see the skipped list). Add readable images to it, "
                    "replace the corrupt files, or remove the class."
                )
            if split == "train" and len(picked) < k:
                log.warning("class '%s' of task '%s' has only %d readable training image(s) of the %d shots asked",
                            cls, task.name, len(picked), k)
            chosen += picked
        splits[split] = sorted(chosen, key=lambda s: (s.label, str(s.path)))
    return Task(task.name, task.classnames, {s: splits[s] for s in SPLITS}, task.source, task.title), skipped


def _take_readable(task: str, pool: list[Sample], k: int, check: Check) -> tuple[list[Sample], list[Skipped]]:
    """The first k samples of `pool` that pass `check`, and the ones that failed on the way."""
    picked, skipped = [], []
    for sample in pool:
        if len(picked) == k:
            break
        reason = check(sample.path)
        if reason is None:
            picked.append(sample)
        else:
            skipped.append(Skipped(task, str(sample.path), reason))
    return picked, skipped


def splits_frame(tasks: list[Task]) -> pd.DataFrame:
    """One row per sample: task, split, path, label, classname (the run's reproducible file list)."""
    rows = [
        (t.name, split, str(s.path), s.label, t.classnames[s.label])
        for t in tasks for split in SPLITS for s in t.splits[split]
    ]
    return pd.DataFrame(rows, columns=["task", "split", "path", "label", "classname"])


def tasks_from_frame(frame: pd.DataFrame, meta: list[dict]) -> list[Task]:
    """Rebuild tasks from `splits_frame` rows and per-task metadata ({name, classnames, source, title})."""
    samples = {m["name"]: {s: [] for s in SPLITS} for m in meta}
    sizes = {m["name"]: len(m["classnames"]) for m in meta}
    for name, split, path, label in zip(frame["task"].astype(str), frame["split"], frame["path"], frame["label"]):
        if name not in samples or split not in SPLITS or not 0 <= int(label) < sizes[name]:
            raise CptError(
                f"The split file has a row ({name}, {split}, {path}, label {label}) that does not fit the run's "
                "tasks: it does not belong to this run's config. Restore the run's original splits.csv and config.json."
            )
        samples[name][split].append(Sample(Path(path), int(label)))
    return [Task(m["name"], list(m["classnames"]), samples[m["name"]], m["source"], m["title"]) for m in meta]


def read_splits(path: Path) -> pd.DataFrame:
    """Read a run's splits.csv, keeping task and class names as written (`007`, `NA`)."""
    return pd.read_csv(path, dtype={"task": str, "path": str, "classname": str}, keep_default_na=False)


def is_multilabel_source(path: str) -> bool:
    """A folder with train.csv and test.csv label files is a multi-label task."""
    return (Path(path) / "train.csv").is_file() and (Path(path) / "test.csv").is_file()


def resolve_tasks(spec: str, data_root: str | None = None) -> tuple[list[TaskSpec], str]:
    """What `--tasks` names — a registered recipe (the toy world, a benchmark suite), a task
    file, or NAME=PATH pairs — as task specs, and their task kind (single-label, multi-label
    or retrieval)."""
    named = recipe(spec)
    if named is not None:
        return named.tasks(Path(data_root) if data_root else None), named.kind
    if is_task_file(spec):
        specs = read_task_file(spec)
    else:
        specs = [TaskSpec(name, path) for name, path in parse_task_spec(spec)]
    kinds = {source_kind(s.path) for s in specs}
    if len(kinds) > 1:
        raise CptError(f"--tasks {spec} mixes {' and '.join(sorted(kinds))} tasks; run them separately.")
    return specs, kinds.pop()


def source_kind(path: str) -> str:
    """The task kind a data source holds, from its layout."""
    from cpt.data.retrieval import is_retrieval_source  # retrieval sources reuse this module's Skipped

    if is_retrieval_source(path):
        return "retrieval"
    return "multi-label" if is_multilabel_source(path) else "single-label"


def load_spec(spec: TaskSpec, seed: int) -> tuple[Task, list[Skipped]]:
    """`load_task` with the spec's task name and class-name overrides applied."""
    task, skipped = load_task(spec.name, spec.path, seed)
    if spec.classnames is not None:
        if len(spec.classnames) != len(task.classnames):
            raise CptError(
                f"Task {spec.name!r} lists {len(spec.classnames)} class names but its data has "
                f"{len(task.classnames)} classes ({', '.join(task.classnames[:5])}...). Give one name per class, "
                "in the data's class order."
            )
        task.classnames = list(spec.classnames)
    if spec.title:
        task.title = spec.title
    return task, skipped
