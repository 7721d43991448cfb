"""Task and class names as file names: the one place a name becomes a path component.

Names come from users (--tasks NAME=PATH, task files, label-file stems, folder names) and
end up in file names inside a run (mask_<task>.csv, confusion_<task>.png, ...). `safe_name`
turns any name into one harmless path component; `check_task_names` refuses, when tasks are
parsed, names that could only be a mistake and names whose files would collide.
"""

from __future__ import annotations

import hashlib
import re

from cpt.errors import CptError

MAX_STEM = 100  # characters of a name kept in a file name (file systems allow 255 bytes)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def safe_name(name: str) -> str:
    """A file-name-safe version of a task or class name: one path component of letters, digits,
    '.', '_' and '-' (other runs of characters become '_'), never '.', '..' or empty, at most
    MAX_STEM characters (a longer name keeps its start and a hash of the whole)."""
    stem = _UNSAFE.sub("_", str(name))
    if not stem.strip("."):
        stem = "task" if not stem else "_" * len(stem)
    if len(stem) > MAX_STEM:
        stem = f"{stem[: MAX_STEM - 9]}-{hashlib.sha256(str(name).encode()).hexdigest()[:8]}"
    return stem


def task_name_problem(name: str) -> str | None:
    """None if `name` may name a task, else why not."""
    if not name.strip():
        return "it is empty"
    if "/" in name or "\\" in name:
        return "it contains a path separator ('/' or '\\')"
    if name.strip() in (".", ".."):
        return f"'{name.strip()}' names a folder"
    if _CONTROL.search(name):
        return "it contains a control character (a line break, a tab, a NUL byte, ...)"
    return None


def check_task_names(names: list[str], origin: str) -> None:
    """Refuse task names that cannot name a task, or whose file names in a run coincide
    (`origin` says where they come from, e.g. "--tasks a=x,b=y" or "The task file t.yaml")."""
    for name in names:
        problem = task_name_problem(name)
        if problem:
            raise CptError(
                f"{origin} names a task {name!r}, which cannot be a task name: {problem}. A task name becomes part "
                "of file names in the run folder (mask_<task>.csv, confusion_<task>.png); use letters, digits, "
                "'-', '_' and '.' (e.g. my_pets), without '/' or '\\', and not '.' or '..'."
            )
    stems: dict[str, str] = {}
    for name in names:
        other = stems.setdefault(safe_name(name), name)
        if other != name:
            raise CptError(
                f"{origin} names the tasks {other!r} and {name!r}, whose files in the run folder would have the "
                f"same name ({safe_name(name)!r}: characters other than letters, digits, '.', '_' and '-' become "
                "'_'). Rename one of them."
            )
