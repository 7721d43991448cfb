"""Reading the user's text files (label CSVs, split JSONs, class-name lists, masks) with one
kind of failure: a `CptError` naming the file, what is wrong with it and how to fix it.

Every reader first reads the file as UTF-8 text (a byte-order mark is allowed), so an empty,
binary or otherwise-encoded file is refused the same way whatever its format.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pandas as pd

from cpt.data.images import Unreadable, read_bytes
from cpt.errors import CptError


def read_text_file(path: Path | str, what: str, fix: str) -> str:
    """The UTF-8 text of `path` (`what`: e.g. "The label file"; `fix`: the sentence that says what it should be)."""
    path = Path(path)
    try:
        data = read_bytes(path)  # regular files only: a FIFO would block
    except Unreadable as exc:
        raise CptError(f"{what} {path} could not be read ({exc.reason}). Check the path. {fix}") from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise CptError(f"{what} {path} is UTF-16 text. Save it as UTF-8. {fix}")
    if b"\x00" in data:
        raise CptError(f"{what} {path} is not a text file (it holds NUL bytes: a binary file?). {fix}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        byte = data[exc.start : exc.start + 1].hex()
        raise CptError(
            f"{what} {path} is not UTF-8 text (byte 0x{byte} at position {exc.start}; Latin-1 or Windows-1252?). "
            f"Save it as UTF-8. {fix}"
        ) from None
    if not text.strip():
        raise CptError(f"{what} {path} is empty. {fix}")
    return text


def read_csv_file(path: Path | str, what: str, fix: str, **options: Any) -> pd.DataFrame:
    """`path` as a table (`options` go to pandas.read_csv), from its UTF-8 text."""
    text = read_text_file(path, what, fix)
    try:
        return pd.read_csv(io.StringIO(text), **options)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CptError(f"{what} {path} is not a valid CSV table ({detail}). {fix}") from None


def read_json_file(path: Path | str, what: str, fix: str) -> Any:
    """`path` parsed as JSON, from its UTF-8 text."""
    text = read_text_file(path, what, fix)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CptError(f"{what} {path} is not valid JSON ({exc}). {fix}") from None
    except RecursionError:
        raise CptError(f"{what} {path} nests lists or objects too deeply to be read. {fix}") from None
