"""Atomic file output: every file cpt writes appears whole or not at all.

Each writer goes through a temporary file in the target's folder and `os.replace`, so an
interrupted run (Ctrl-C, SIGTERM, a crash, a full disk) never leaves a half-written CSV or
checkpoint, and the temporary file is removed on every way out but SIGKILL. A write that the
system refuses (permissions, a read-only or full disk, a folder where the file should go) is
a `CptError` naming the path, not a traceback.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from cpt.errors import CptError

if TYPE_CHECKING:  # imported where used: the feature store and `cpt cache` need neither
    import pandas as pd

# errno -> what it means for the user; anything else an OSError says stays a bug report
REFUSED = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOTDIR: "a parent of it is a file, not a folder",
    errno.EISDIR: "it is a folder",
    errno.EEXIST: "a file is in the way",
}
IN_THE_WAY = {errno.ENOTDIR, errno.EISDIR, errno.EEXIST}  # the fix is another path, not permissions
FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _umask()  # mkstemp creates 0600 files; what cpt writes gets the user's usual permissions


def cache_root() -> Path:
    """cpt's cache (features, unpacked shipped checkpoints, materialised recipes): $CPT_CACHE or ~/.cache/cpt."""
    return Path(os.environ.get("CPT_CACHE", Path.home() / ".cache" / "cpt"))


def short_reason(exc: BaseException, limit: int = 120) -> str:
    """`Type: first sentence` of an exception from a library (torch's can run to a page)."""
    text = (str(exc).strip().splitlines() or [""])[0].split(". ")[0]
    return f"{type(exc).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}".rstrip(": ")


def write_refused(path: str | Path, exc: OSError) -> CptError | None:
    """The user-facing error for an OSError of writing `path` that the user must fix (a full disk,
    permissions, a read-only file system, a folder in the way), or None for any other OSError."""
    if exc.errno in FULL:
        return CptError(
            f"The disk is full: could not write {path}. Free some space (or point --out / "
            "--cache-dir elsewhere) and run again; files written before this one are intact."
        )
    if exc.errno in REFUSED:
        where = exc.filename if exc.filename and Path(str(exc.filename)) != Path(path) else None
        fix = "Choose" if exc.errno in IN_THE_WAY else "Make it writable, or choose"
        return CptError(
            f"cpt cannot write {path}: {REFUSED[exc.errno]}{f' ({where})' if where else ''}. {fix} another "
            "place (--out for results, --cache-dir or $CPT_CACHE for the cache)."
        )
    return None


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`."""
    path = Path(path)
    if path.is_dir():
        raise CptError(f"{path} is a folder; cpt writes a file there. Give a file name (e.g. {path / 'out'}).")
    tmp_path: Path | None = None
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError as exc:  # the parent is a file
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path.parent)) from exc
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp_path = Path(tmp)
        os.close(fd)
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~UMASK)
        os.replace(tmp_path, path)
    except OSError as exc:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)
        refused = write_refused(path, exc)
        if refused is not None:
            raise refused from exc
        raise
    except BaseException:  # Ctrl-C, SIGTERM (as an interrupt), a CptError, a bug: no temp file stays
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any) -> None:
    """Write pretty JSON atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_csv(path: str | Path, frame: pd.DataFrame) -> None:
    """Write a DataFrame as CSV (no index) atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def save_torch(path: str | Path, obj: Any) -> None:
    """`torch.save` atomically."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
