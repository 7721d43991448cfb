"""Human output: one stderr console, progress bars, and the `cpt` logger.

stdout is reserved for machine-readable results (`--json`), so everything here goes to
stderr; `--quiet` silences bars and info messages but never warnings or errors.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")
console = Console(stderr=True)
log = logging.getLogger("cpt")
_state = {"quiet": False}


def setup(quiet: bool = False) -> None:
    """Configure the `cpt` logger for a command run: warnings always, info unless quiet."""
    _state["quiet"] = quiet
    log.setLevel(logging.INFO)
    for handler in list(log.handlers):
        if getattr(handler, "cpt_console", False):
            log.removeHandler(handler)
    if console.is_terminal:
        handler: logging.Handler = RichHandler(console=console, show_time=False, show_path=False, markup=False)
    else:  # pipes and log files get whole lines, never wrapped paths
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.cpt_console = True
    handler.setLevel(logging.WARNING if quiet else logging.INFO)
    log.addHandler(handler)
    log.propagate = False


def log_to_file(path: Path) -> logging.Handler:
    """Also append the `cpt` log to `path` (the run's fit.log); returns the handler to remove."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    log.addHandler(handler)
    return handler


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a rich progress bar on stderr (hidden with --quiet); when stderr is not a
    terminal (a log file, a pipe, a scheduler), a plain line at each quarter instead."""
    if not console.is_terminal:
        yield from _plain(items, description, total)
        return
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=_state["quiet"],
        transient=True,
    )
    with progress:
        yield from progress.track(items, total=total, description=description)


def _plain(items: Iterable[T], description: str, total: int | None) -> Iterator[T]:
    total = total if total is not None else len(items) if hasattr(items, "__len__") else None  # type: ignore[arg-type]
    marks = {max(1, round(total * k / 4)) for k in (1, 2, 3, 4)} if total else set()
    for done, item in enumerate(items, start=1):
        yield item
        if done in marks and not _state["quiet"]:
            sys.stderr.write(f"{description}: {done}/{total}\n")
            sys.stderr.flush()
