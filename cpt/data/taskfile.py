"""Task files: a YAML or JSON list of tasks, each with its data, task name, class names and metric.

    tasks:
      - name: flowers                       # the key used in CSVs
        path: oxford_flowers/split_zhou_OxfordFlowers.json
        root: oxford_flowers/jpg            # image root of a split JSON (becomes path@root)
        title: flower recognition           # SoftCPT's task name (default: name with _ as space)
        classnames: flowers.txt             # or a list, in the task's class order
        metric: mean_per_class_accuracy     # or accuracy (the default)

Relative paths resolve against the task file's folder. Reading only checks the file; the
number of class names is checked against the data by whoever loads the task.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cpt.data.names import check_task_names
from cpt.errors import CptError

METRICS = ("accuracy", "mean_per_class_accuracy")
KEYS = ("name", "path", "root", "title", "classnames", "metric")
YAML_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class TaskSpec:
    name: str  # key used in CSVs
    path: str  # what load_task takes: folder, .csv, or SPLIT.json[@IMAGE_ROOT]
    title: str | None = None  # natural-language task name for SoftCPT's task prompt (default: name with _ -> space)
    classnames: tuple[str, ...] | None = None  # display-name override, in the task's class order
    metric: str = "accuracy"  # the task's headline metric, one of METRICS


def repeated(names: list[str]) -> list[str]:
    """The names that occur more than once, sorted."""
    return sorted({n for n in names if names.count(n) > 1})


def is_task_file(path: str) -> bool:
    """A .yaml/.yml file, or a .json file whose top level has "tasks" (a CoOp split JSON has "train"/"test")."""
    file = Path(path)
    if not file.is_file():
        return False
    if file.suffix.lower() in YAML_SUFFIXES:
        return True
    if file.suffix.lower() != ".json":
        return False
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return False
    return isinstance(data, dict) and "tasks" in data


def read_task_file(path: str | Path) -> list[TaskSpec]:
    """The tasks of a YAML or JSON task file, with paths resolved against the file's folder."""
    file = Path(path).expanduser()
    example = "Write it as {\"tasks\": [{\"name\": ..., \"path\": ...}, ...]} (see datasets/README.md)."
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CptError(
            f"The task file {file} could not be read ({exc}). Check the path and that it is UTF-8 text."
        ) from exc
    suffix = file.suffix.lower()
    if suffix not in (*YAML_SUFFIXES, ".json"):
        raise CptError(f"The task file {file} is neither .yaml, .yml nor .json. Save it as YAML or JSON. {example}")
    try:
        data = yaml.safe_load(text) if suffix in YAML_SUFFIXES else json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        kind = "YAML" if suffix in YAML_SUFFIXES else "JSON"
        raise CptError(f"The task file {file} is not valid {kind} ({exc}). {example}") from exc
    except RecursionError:
        raise CptError(f"The task file {file} nests lists or mappings too deeply to be read. {example}") from None
    if isinstance(data, dict) and {"train", "test"} <= set(data):
        raise CptError(
            f"{file} is a CoOp split JSON, not a task file. Pass it as one task (--tasks NAME={file}@IMAGE_ROOT) "
            "or list it under \"tasks\" in a task file."
        )
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), list) or not data["tasks"]:
        raise CptError(f"The task file {file} has no \"tasks\" list. {example}")
    if set(data) != {"tasks"}:
        extra = ", ".join(sorted(map(str, set(data) - {"tasks"})))
        raise CptError(
            f"The task file {file} has unknown top-level keys ({extra}); only \"tasks\" is allowed. {example}"
        )
    folder = file.resolve().parent
    specs = [_spec(file, folder, i, entry) for i, entry in enumerate(data["tasks"])]
    duplicates = repeated([s.name for s in specs])
    if duplicates:
        raise CptError(
            f"The task file {file} names the task {', '.join(map(repr, duplicates))} more than once. "
            "Give each task its own name."
        )
    check_task_names([s.name for s in specs], f"The task file {file}")
    return specs


def _spec(file: Path, folder: Path, index: int, entry: Any) -> TaskSpec:
    """One entry of the "tasks" list as a TaskSpec; errors name the file and the entry."""
    where = f"The task file {file}, task {index + 1}"
    if not isinstance(entry, dict):
        raise CptError(f"{where} is not a mapping of keys ({', '.join(KEYS)}). Write it as {{name: ..., path: ...}}.")
    if isinstance(entry.get("name"), str) and entry["name"].strip():
        where = f"The task file {file}, task '{entry['name'].strip()}'"
    unknown = sorted(map(str, set(entry) - set(KEYS)))
    if unknown:
        raise CptError(f"{where} has unknown keys ({', '.join(unknown)}). The allowed keys are {', '.join(KEYS)}.")
    name, path, root, title = (_text(where, entry, key) for key in ("name", "path", "root", "title"))
    if name is None or path is None:
        raise CptError(f"{where} lacks a {'name' if name is None else 'path'}. Every task needs a name and a path.")
    at = path.lower().find(".json@")  # SPLIT.json@IMAGE_ROOT, as on the command line
    if at >= 0:
        if root is not None:
            raise CptError(f"{where} gives its image root twice: in path ({path}) and as root. Keep one of them.")
        path, root = path[: at + 5], path[at + 6 :]
    if root is not None and not path.lower().endswith(".json"):
        raise CptError(
            f"{where} has a root, but its path {path} is not a split .json. Drop root, or point path at a split JSON."
        )
    resolved = [_resolve(folder, p) for p in (path, root) if p is not None]
    for p in resolved:
        if not p.exists():
            raise CptError(f"{where}: the path {p} does not exist. Fix it (relative paths start at {folder}).")
    metric = entry.get("metric", "accuracy")
    if metric not in METRICS:
        raise CptError(f"{where} has the unknown metric {metric!r}. Use one of {', '.join(METRICS)}.")
    classnames = _classnames(where, folder, entry.get("classnames"))
    return TaskSpec(name, "@".join(map(str, resolved)), title, classnames, metric)


def _text(where: str, entry: dict, key: str) -> str | None:
    """The stripped string at `key`, None when absent; anything else is an error."""
    value = entry.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise CptError(f"{where}: {key} must be a non-empty text, not {value!r}. Quote it if it looks like a number.")
    return value.strip()


def _resolve(folder: Path, path: str) -> Path:
    return (folder / Path(path).expanduser()).resolve()


def _classnames(where: str, folder: Path, value: Any) -> tuple[str, ...] | None:
    """Class names from a list, or from a text file (one name per line, blank lines skipped)."""
    if value is None:
        return None
    if isinstance(value, str):
        source = _resolve(folder, value)
        try:
            names = [line.strip() for line in source.read_text(encoding="utf-8").splitlines()]
        except (OSError, UnicodeDecodeError) as exc:
            raise CptError(f"{where}: its classnames file {source} could not be read ({exc}). Fix the path.") from exc
        names = [n for n in names if n]
    elif isinstance(value, list) and all(isinstance(n, (str, int, float)) and not isinstance(n, bool) for n in value):
        names = [str(n).strip() for n in value]
    else:
        raise CptError(
            f"{where}: classnames must be a list of names or the path of a text file with one name per line."
        )
    if not names or not all(names):
        raise CptError(f"{where}: classnames is empty or holds an empty name. Give one non-empty name per class.")
    return tuple(names)
