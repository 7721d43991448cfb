"""`cpt bench --store`: the feature store against the one-file-per-image cache it replaced.

Writes `entries` random features of one view kind (the tiny CLIP's dim 32 by default: this
measures storage, not the encoder) into (a) the per-file layout (`ab/abcd....npy`, each written
through a temporary file and a rename, as cpt did) and (b) the store (batches of 64, as
`FeatureCache` writes them), then times a cache-hit read pass over every entry from a fresh
reader: for (a) each file opened, loaded and checked, for (b) the index read, the lookup and
the checked gather. Both passes read from the page cache (a warm cache, as in a run's second
epoch of use); on a cold network disk the gap only grows, since (a) costs a file open per image.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cpt.data.store import SHARD_BYTES, FeatureStore, legacy_entry
from cpt.errors import CptError
from cpt.io import atomic_path


@dataclass
class StoreRow:
    layout: str  # per-file | store
    entries: int
    files: int
    bytes: int  # the files' sizes
    disk_bytes: int  # the blocks they take on this file system (a small file takes a whole block)
    write_s: float
    read_s: float
    read_speedup: float  # the per-file read pass's seconds / this layout's


def _footprint(folder: Path) -> tuple[int, int, int]:
    stats = [p.stat() for p in folder.rglob("*") if p.is_file()]
    return len(stats), sum(s.st_size for s in stats), sum(s.st_blocks * 512 for s in stats)


def run_store_bench(entries: int = 100_000, dim: int = 32, views: int = 1, shard_bytes: int = SHARD_BYTES,
                    where: Path | None = None) -> list[StoreRow]:
    """Write and read back `entries` random entries in both layouts (in a temporary folder under `where`)."""
    if entries < 1:
        raise CptError(f"--entries takes a count of at least 1 (got {entries}).")
    rng = np.random.default_rng(0)
    digests = [rng.bytes(32).hex() for _ in range(entries)]
    shape = (dim,) if views == 1 else (views, dim)
    rows = rng.standard_normal((entries, *shape), dtype=np.float32)
    tmp = Path(tempfile.mkdtemp(prefix="cpt-bench-store-", dir=where))
    try:
        old = tmp / "per-file"
        t0 = time.perf_counter()
        for digest, row in zip(digests, rows):
            with atomic_path(old / digest[:2] / f"{digest}.npy") as path:
                with open(path, "wb") as fh:
                    np.save(fh, row)
        old_write = time.perf_counter() - t0
        t0 = time.perf_counter()
        back = np.stack([legacy_entry(old / d[:2] / f"{d}.npy", shape)[0] for d in digests])
        old_read = time.perf_counter() - t0
        assert np.array_equal(back, rows)

        new = tmp / "store"
        store = FeatureStore(new, shape, {"shape": list(shape)}, shard_bytes)
        t0 = time.perf_counter()
        for start in range(0, entries, 64):
            store.put(digests[start:start + 64], rows[start:start + 64])
        store.close()
        new_write = time.perf_counter() - t0
        t0 = time.perf_counter()
        lookup = FeatureStore(new, shape).get(digests)
        new_read = time.perf_counter() - t0
        assert lookup.found.all() and np.array_equal(lookup.rows, rows)
        return [StoreRow("per-file", entries, *_footprint(old), old_write, old_read, 1.0),
                StoreRow("store", entries, *_footprint(new), new_write, new_read, old_read / new_read)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
