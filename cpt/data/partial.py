"""The partial-label protocol: which training label entries a run may see.

`mask_known` hides entries independently (the known-ratio protocol); `single_positive`
keeps one positive per image; a saved mask (1 = known, 0 = hidden) can be re-applied.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cpt.data.files import read_csv_file
from cpt.errors import CptError
from cpt.data.multilabel import UNKNOWN


def mask_known(targets: np.ndarray, ratio: float, seed: int) -> np.ndarray:
    """Keep each (image, label) entry independently with probability `ratio`, the rest unknown (-1)."""
    if not 0 < ratio <= 1:
        raise CptError(f"--known-ratio {ratio} must be in (0, 1].")
    keep = np.random.default_rng([seed, 7]).random(targets.shape) < ratio
    return np.where(keep, targets, UNKNOWN).astype(np.int8)


def single_positive(targets: np.ndarray, seed: int) -> np.ndarray:
    """Keep one positive per image (drawn under `seed`), every other entry unknown (-1).

    Images without a positive keep nothing (all unknown), as in the single-positive protocol.
    """
    rng = np.random.default_rng([seed, 13])
    out = np.full_like(targets, UNKNOWN, dtype=np.int8)
    for i, row in enumerate(targets):
        positives = np.flatnonzero(row == 1)
        if len(positives):
            out[i, rng.choice(positives)] = 1
    return out


def mask_frame(paths: list[str], classnames: list[str], known: np.ndarray) -> pd.DataFrame:
    """A mask as a table: path, then one column per class, 1 = known, 0 = hidden."""
    frame = pd.DataFrame(known.astype(np.int8), columns=classnames)
    frame.insert(0, "path", paths)
    return frame


def read_mask(path: Path, paths: list[str], classnames: list[str]) -> np.ndarray:
    """The (n, C) known-entry mask a saved mask file gives these images (matched by path,
    else by file name) and classes; a mismatch is a user error naming what is missing."""
    if not Path(path).is_file():
        raise CptError(f"--mask {path} does not exist; give a mask_<task>.csv written by an earlier run.")
    frame = read_csv_file(path, "--mask", "A mask file is a CSV path,<class1>,... with 1 (known) or 0 (hidden) "
                          "cells, as written by an earlier run (mask_<task>.csv).", dtype={"path": str})
    missing = [c for c in ["path", *classnames] if c not in frame.columns]
    if missing:
        raise CptError(f"--mask {path} has no column for {', '.join(missing[:10])}; it was written for other classes.")
    by_path = {p: i for i, p in enumerate(frame["path"])}
    by_name = {Path(p).name: i for i, p in enumerate(frame["path"])}
    rows = [by_path.get(p, by_name.get(Path(p).name)) for p in paths]
    absent = [p for p, r in zip(paths, rows) if r is None]
    if absent:
        raise CptError(f"--mask {path} has no row for {len(absent)} training images, e.g. {absent[0]}; "
                       "it was written for another label file.")
    known = frame[classnames].to_numpy()[rows]
    if not np.isin(known, (0, 1)).all():
        raise CptError(f"--mask {path} has cells other than 1 (known) and 0 (hidden).")
    return known.astype(bool)


def partial_targets(targets: np.ndarray, ratio: float, seed: int, single: bool = False,
                    known: np.ndarray | None = None) -> np.ndarray:
    """The training targets a run sees: a given mask, or one positive per image, or the known ratio."""
    if known is not None:
        return np.where(known, targets, UNKNOWN).astype(np.int8)
    if single:
        return single_positive(targets, seed)
    return mask_known(targets, ratio, seed)
