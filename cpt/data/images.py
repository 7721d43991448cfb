"""Reading one image file: the only place cpt opens an image's bytes or decodes them.

Any failure to read or decode one file is that file's problem, never the run's: every
function here either returns or raises `Unreadable` with a short reason, which callers list
(skipped.csv in `cpt fit`, a warning in `cpt eval` / `cpt predict`). Only regular files are
read (a FIFO named like an image would block forever; a device never ends), and the file is
opened before it is checked, so it cannot be swapped for one between the check and the read.

A good image decodes exactly as `PIL.Image.open(path).convert("RGB")` would, from the very
bytes whose sha256 keys its cached features.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from pathlib import Path
from typing import Iterator

from PIL import Image

CHUNK = 1 << 20


class Unreadable(Exception):
    """One file could not be read or decoded; `reason` says why, in a few words."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a plain file"


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    return f"cannot read file: {exc.strerror or exc}"


def file_problem(path: Path | str) -> str | None:
    """None if `path` is (a symbolic link to) a regular file, else why it cannot be an image."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "file not found (a broken symbolic link)" if os.path.islink(path) else "file not found"
    except OSError as exc:  # a symbolic link loop, a permission denied on the way, a name too long
        return _os_reason(exc)
    except ValueError as exc:  # an embedded NUL byte
        return f"invalid file name: {exc}"
    return None if stat.S_ISREG(mode) else f"not a regular file ({_kind(mode)})"


def _open(path: Path | str) -> int:
    """A file descriptor of the regular file `path` (non-blocking open, so a FIFO cannot hang us)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise Unreadable(path, file_problem(path) or _os_reason(exc)) from None
    except ValueError as exc:
        raise Unreadable(path, f"invalid file name: {exc}") from None
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        os.close(fd)
        raise Unreadable(path, _os_reason(exc)) from None
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise Unreadable(path, f"not a regular file ({_kind(mode)})")
    return fd


def _chunks(path: Path | str) -> Iterator[bytes]:
    """The bytes of the regular file `path`, block by block; `Unreadable` otherwise."""
    with os.fdopen(_open(path), "rb") as fh:
        while True:
            try:
                block = fh.read(CHUNK)
            except OSError as exc:  # an I/O error, a file truncated under us on some filesystems
                raise Unreadable(path, _os_reason(exc)) from None
            if not block:
                return
            yield block


def read_bytes(path: Path | str) -> bytes:
    """The bytes of the regular file `path`; `Unreadable` otherwise."""
    return b"".join(_chunks(path))


def content_hash(path: Path | str) -> str:
    """sha256 of the file's bytes (the cache key of an image, wherever it lives); `Unreadable` if
    it is not a readable regular file. Reads in chunks: any file size hashes in constant memory."""
    digest = hashlib.sha256()
    for block in _chunks(path):
        digest.update(block)
    return digest.hexdigest()


def decode_rgb(data: bytes, path: Path | str = "<bytes>") -> Image.Image:
    """An image's bytes decoded to RGB, or `Unreadable`. Pillow signals a bad file with many
    exception types (OSError, ValueError, SyntaxError, struct.error, EOFError, IndexError,
    DecompressionBombError, MemoryError, ...), so any exception of decoding is the file's."""
    if not data:
        raise Unreadable(path, "cannot decode image: the file is empty")
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB")
    except Exception as exc:  # noqa: BLE001 - only Pillow runs here: whatever it raises, the file is bad
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise Unreadable(path, f"cannot decode image: {detail}") from None


def read_image(path: Path | str) -> tuple[Image.Image, str]:
    """The RGB image of `path` and the sha256 of the bytes it was decoded from; `Unreadable` if the
    file cannot be read or decoded."""
    data = read_bytes(path)
    return decode_rgb(data, path), hashlib.sha256(data).hexdigest()


def check_image(path: Path | str) -> str | None:
    """None if `path` reads and decodes to RGB, else the short reason why not."""
    try:
        read_image(path)
    except Unreadable as exc:
        return exc.reason
    return None
