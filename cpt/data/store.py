"""The feature store: cached image features in a few large files, shared safely by processes.

A cache key (backbone checksum, precision, preprocessing, view recipe: see
cpt.data.features) owns a folder holding

  meta.json       what the key is (backbone, precision, view, row shape), for `cpt cache`
  NAME.rows       float32 rows (one image's features each), appended by one writer at a time
  NAME.index      48-byte records appended after their rows: the image's sha256, its row
                  number, a CRC-32 of digest + row number + row bytes, a magic number

A writer is a process holding an exclusive `flock` on a `.rows` file. It appends until the file
passes the shard limit, then takes a shard with room that no one holds, or creates one named
`<pid>-<random>` (created exclusively, so two writers never share a file): a folder holds about
2 x its bytes / limit files, plus 2 per process writing at that moment.

Nothing is fsynced, and nothing has to be: a record counts only when it is whole and its CRC
matches the row it points at. A writer killed mid-append leaves a tail that readers ignore and
the next writer of that shard cuts off; a row damaged later (a failing disk, a power cut before
the page cache reached the disk, a hand edit) fails its CRC or value checks and the image is
encoded again. Writers racing on one image may both store it: either copy is the same bytes.

Readers memory-map the `.rows` files and read the indices incrementally into sorted arrays (64
bytes per entry, no per-entry Python objects), so a lookup over millions of entries is a
`searchsorted`. Entries of the per-file layout before the store (`ab/abcd....npy`) are read,
moved into the store and deleted as they are met; `compact` moves them all at once.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import shutil
import time
import zlib
from dataclasses import asdict, dataclass
from math import prod
from pathlib import Path
from typing import Iterator

import numpy as np

from cpt.errors import CptError
from cpt.io import write_json, write_refused

try:
    import fcntl
except ImportError:  # no flock (Windows): every writer starts its own shard
    fcntl = None

log = logging.getLogger("cpt")

SHARD_BYTES = 256 * 2**20  # a shard's rows file rolls over past this size
MAGIC = 0x31545043  # "CPT1"
RECORD = np.dtype([("digest", "V32"), ("row", "<u8"), ("crc", "<u4"), ("magic", "<u4")])
ROWS, INDEX, META = ".rows", ".index", "meta.json"


def _crc(digest: bytes, row: int, data: np.ndarray) -> int:
    return zlib.crc32(data, zlib.crc32(digest + int(row).to_bytes(8, "little")))


def _refused(path: Path, exc: OSError) -> BaseException:
    """The user's error for a refused write of `path` (see cpt.io.write_refused), else `exc` itself."""
    refused = write_refused(path, exc)
    if refused is None:
        return exc
    refused.__cause__ = exc
    return refused


def _write_all(fh, data: np.ndarray) -> None:
    view = memoryview(np.ascontiguousarray(data)).cast("B")
    while view:
        view = view[fh.write(view):]


def value_problem(rows: np.ndarray) -> np.ndarray:
    """Per entry of `rows` (n, ..., dim): 0 fine, 1 non-finite values, 2 an all-zero feature (some view)."""
    flat = rows.reshape(len(rows), -1, rows.shape[-1])
    finite = np.isfinite(flat).all(axis=(1, 2))
    nonzero = np.abs(flat).max(axis=2, initial=0).all(axis=1)
    return np.where(~finite, 1, np.where(~nonzero, 2, 0))


PROBLEMS = {1: "non-finite values", 2: "an all-zero feature"}


def legacy_entry(path: Path, shape: tuple[int, ...]) -> tuple[np.ndarray | None, str | None]:
    """A per-file `.npy` entry of the layout before the store: (features, None), (None, what is wrong
    with it), or (None, None) when there is none."""
    if not path.is_file():
        return None, None
    try:
        feat = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - truncated, garbage, not an .npy: any failure means re-encode
        return None, f"unreadable ({type(exc).__name__})"
    if not isinstance(feat, np.ndarray) or feat.dtype != np.float32 or feat.shape != shape:
        found = f"{feat.dtype} {feat.shape}" if isinstance(feat, np.ndarray) else type(feat).__name__
        return None, f"{found}, not float32 {shape}"
    problem = int(value_problem(feat[None])[0])
    return (None, PROBLEMS[problem]) if problem else (feat, None)


@dataclass
class Lookup:
    """What the store holds for some digests: `rows[i]` is valid where `found[i]`; `damaged` maps
    positions whose only entries failed their checks to (where, what is wrong)."""

    rows: np.ndarray
    found: np.ndarray
    damaged: dict[int, tuple[str, str]]


class _Writer:
    """One shard held for appending: its files open, an exclusive flock on the rows file."""

    def __init__(self, folder: Path, name: str, rows_fh, row_bytes: int) -> None:
        self.name, self.rows_fh, self.pid = name, rows_fh, os.getpid()
        size = os.fstat(rows_fh.fileno()).st_size
        self.nrows = size // row_bytes
        if size != self.nrows * row_bytes:  # a killed writer's partial row: cut it off
            os.ftruncate(rows_fh.fileno(), self.nrows * row_bytes)
        self.index_fh = open(folder / f"{name}{INDEX}", "ab", buffering=0)
        size = os.fstat(self.index_fh.fileno()).st_size
        if size % RECORD.itemsize:  # a killed writer's partial record
            os.ftruncate(self.index_fh.fileno(), size - size % RECORD.itemsize)
        self.nbytes = self.nrows * row_bytes

    @staticmethod
    def hold(path: Path, how: str):
        """`path` opened with an exclusive flock (`how`: "new" creates it, "take" appends to it, "read"
        reads it), or None when another process holds it, it is gone, or it was replaced meanwhile.
        Writes always go through O_APPEND: whoever held the file before, rows land at its end."""
        try:
            if how == "new":
                open(path, "xb").close()  # two writers never create the same shard
            if how == "read":
                fh = open(path, "rb", buffering=0)
            else:  # never O_CREAT: a shard that compaction deleted stays deleted
                fh = os.fdopen(os.open(path, os.O_WRONLY | os.O_APPEND), "ab", buffering=0)
        except (FileExistsError, FileNotFoundError):
            return None
        try:
            if fcntl is not None:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fh.fileno()).st_ino != os.stat(path).st_ino:
                raise BlockingIOError
        except (BlockingIOError, FileNotFoundError):
            fh.close()
            return None
        except OSError as exc:
            fh.close()
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            # no locks on this file system: write only shards this writer created, never take one
            return os.fdopen(os.open(path, os.O_WRONLY | os.O_APPEND), "ab", buffering=0) if how == "new" else None
        return fh

    def close(self) -> None:
        self.index_fh.close()
        self.rows_fh.close()  # releases the flock


class FeatureStore:
    """The entries of one cache key: look up rows by image digest, append new ones."""

    def __init__(self, folder: Path, shape: tuple[int, ...], meta: dict | None = None,
                 shard_bytes: int = SHARD_BYTES) -> None:
        self.folder = Path(folder)
        self.shape = tuple(shape)
        self.row_bytes = 4 * prod(self.shape)
        self.meta = meta
        self.shard_bytes = shard_bytes
        self._writer: _Writer | None = None
        self._legacy: bool | None = None  # whether per-file entries of the old layout remain
        self._touched = False
        self._reset()

    # ------------------------------------------------------------------ reading

    def _reset(self) -> None:
        self._shards: list[str] = []  # shard id -> name
        self._read: dict[str, int] = {}  # name -> bytes of its index read so far
        self._digest = np.empty((0, 4), np.uint64)  # every record, in the order read
        self._where = np.empty((0, 3), np.int64)  # shard id, row, crc
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None  # (prefixes sorted, record order)
        self._maps: dict[str, np.memmap] = {}

    def refresh(self) -> None:
        """Read the index records written since the last call, by any process."""
        try:
            entries = {e.name[: -len(INDEX)]: e for e in os.scandir(self.folder) if e.name.endswith(INDEX)}
        except (FileNotFoundError, NotADirectoryError):
            entries = {}
        sizes = {}
        for name, entry in entries.items():
            try:
                sizes[name] = entry.stat().st_size
            except FileNotFoundError:
                pass
        if any(sizes.get(name, -1) < done for name, done in self._read.items()):  # compacted away
            self._reset()
        chunks, where = [], []
        for name in sorted(sizes):
            start = self._read.get(name, 0)
            end = start + (sizes[name] - start) // RECORD.itemsize * RECORD.itemsize
            if end <= start:
                continue
            try:
                with open(self.folder / f"{name}{INDEX}", "rb") as fh:
                    fh.seek(start)
                    records = np.frombuffer(fh.read(end - start), RECORD)
            except FileNotFoundError:
                continue
            self._read[name] = start + len(records) * RECORD.itemsize
            if name not in self._shards:
                self._shards.append(name)
            records = records[records["magic"] == MAGIC]
            chunks.append(np.ascontiguousarray(records["digest"]).view(np.uint64).reshape(-1, 4))
            where.append(np.stack([np.full(len(records), self._shards.index(name)),
                                   records["row"].astype(np.int64), records["crc"].astype(np.int64)], axis=1))
        if chunks:
            self._digest = np.concatenate([self._digest, *chunks])
            self._where = np.concatenate([self._where, *where])
            self._sorted = None

    def _candidates(self, keys: np.ndarray) -> tuple[np.ndarray, dict[int, list[int]]]:
        """For each key (n, 4): the index of its latest record (-1 for none), and for keys stored
        more than once, all their records, latest first."""
        if not len(self._digest):
            return np.full(len(keys), -1), {}
        if self._sorted is None:
            mixed = np.bitwise_xor.reduce(self._digest, axis=1)  # 64 bits of the digest, all of them counting
            order = np.argsort(mixed, kind="stable")
            self._sorted = (mixed[order], order)
        prefixes, order = self._sorted
        wanted = np.bitwise_xor.reduce(keys, axis=1)
        lo = np.searchsorted(prefixes, wanted, "left")
        hi = np.searchsorted(prefixes, wanted, "right")
        one = np.where(hi - lo == 1, order[np.minimum(lo, len(order) - 1)], -1)
        one[(one >= 0) & ~(self._digest[np.maximum(one, 0)] == keys).all(axis=1)] = -1
        more = {}
        for i in np.flatnonzero(hi - lo > 1).tolist():
            same = [int(r) for r in sorted(order[lo[i]:hi[i]].tolist(), reverse=True)
                    if (self._digest[r] == keys[i]).all()]
            if same:
                more[i] = same
                one[i] = same[0]
        return one, more

    def _rows(self, shard: str, need: int) -> np.ndarray | None:
        """The rows file of `shard` mapped (at least `need` rows when it has them), or None if it is gone."""
        mapped = self._maps.get(shard)
        if mapped is None or len(mapped) < need:
            path = self.folder / f"{shard}{ROWS}"
            try:
                n = path.stat().st_size // self.row_bytes
                mapped = np.memmap(path, np.float32, "r", shape=(n, *self.shape)) if n else np.empty((0, *self.shape))
            except FileNotFoundError:
                return None
            self._maps[shard] = mapped
        return mapped

    def _check(self, records: np.ndarray, keys: np.ndarray, out: np.ndarray, found: np.ndarray,
               problems: dict[int, tuple[str, str]], positions: np.ndarray) -> list[int]:
        """Read and check the rows of `records` (indices into the record arrays) for `positions`;
        returns the positions whose shard is gone."""
        gone = []
        shard_ids = self._where[records, 0]
        for shard_id in np.unique(shard_ids).tolist():
            mine = np.flatnonzero(shard_ids == shard_id)
            rows_at = self._where[records[mine], 1]
            data = self._rows(self._shards[shard_id], int(rows_at.max()) + 1)
            if data is None:
                gone += positions[mine].tolist()
                continue
            inside = rows_at < len(data)
            block = np.asarray(data[rows_at[inside]])
            bad = value_problem(block) if len(block) else np.empty(0, int)
            where = f"{self.folder / self._shards[shard_id]}{ROWS}"
            at_block = np.cumsum(inside) - 1
            for j, (k, row) in enumerate(zip(mine.tolist(), rows_at.tolist())):
                pos = int(positions[k])
                if not inside[j]:
                    problems[pos] = (f"{where} row {row}", "the row is past the end of its shard")
                    continue
                at = int(at_block[j])
                if bad[at]:
                    problems[pos] = (f"{where} row {row}", PROBLEMS[int(bad[at])])
                elif _crc(keys[pos].tobytes(), row, block[at]) != self._where[records[k], 2]:
                    problems[pos] = (f"{where} row {row}", "checksum mismatch")
                else:
                    out[pos], found[pos] = block[at], True
        return gone

    def get(self, digests: list[str]) -> Lookup:
        """The stored features of `digests` (sha256 hex of the image bytes), checked."""
        out = np.full((len(digests), *self.shape), np.nan, np.float32)
        found, damaged = np.zeros(len(digests), bool), {}
        if not digests:
            return Lookup(out, found, damaged)
        self._touch()
        keys = np.frombuffer(b"".join(bytes.fromhex(d) for d in digests), np.uint64).reshape(-1, 4)
        pending = np.arange(len(digests))
        for attempt in range(2):  # a second time when compaction replaced a shard under us
            self.refresh()
            first, more = self._candidates(keys[pending])
            has = first >= 0
            problems: dict[int, tuple[str, str]] = {}
            gone = self._check(first[has], keys, out, found, problems, pending[has])
            for k, records in more.items():  # stored more than once: the latest copy that passes
                pos = int(pending[k])
                for record in records[1:]:
                    if pos not in problems:
                        break
                    self._check(np.array([record]), keys, out, found, {}, np.array([pos]))
                    if found[pos]:
                        del problems[pos]
            damaged.update(problems)
            if not gone:
                break
            self._reset()
            pending = np.array(gone)
        self._read_legacy(digests, out, found, damaged)
        return Lookup(out, found, damaged)

    def _read_legacy(self, digests: list[str], out: np.ndarray, found: np.ndarray,
                     damaged: dict[int, tuple[str, str]]) -> None:
        """Entries of the per-file layout: used, moved into the store and deleted (damaged ones deleted)."""
        if self._legacy is None:
            try:
                self._legacy = any(len(e.name) == 2 and e.is_dir() for e in os.scandir(self.folder))
            except OSError:
                self._legacy = False
        if not self._legacy:
            return
        moved, done = [], []
        for i in np.flatnonzero(~found).tolist():
            if i in damaged:
                continue
            path = self.folder / digests[i][:2] / f"{digests[i]}.npy"
            feat, problem = legacy_entry(path, self.shape)
            if feat is not None:
                out[i], found[i] = feat, True
                moved.append(i)
            elif problem:
                damaged[i] = (str(path), problem)
            else:
                continue
            done.append(path)
        try:
            self.put([digests[i] for i in moved], out[moved])
        except (OSError, CptError):  # a read-only cache: read it as it is
            return
        for path in done:
            path.unlink(missing_ok=True)

    def _touch(self) -> None:
        """Record when the key was last used (meta.json's mtime), once per store; never fails a read."""
        if not self._touched:
            self._touched = True
            try:
                os.utime(self.folder / META)
            except OSError:
                pass

    # ------------------------------------------------------------------ writing

    def _prepare(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except FileExistsError as exc:  # a parent is a file
            raise _refused(self.folder, OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(exc.filename)))
        except OSError as exc:
            raise _refused(self.folder, exc)
        if self.meta is not None and not (self.folder / META).exists():
            write_json(self.folder / META, self.meta)

    def _writable(self) -> _Writer:
        writer = self._writer
        if writer is not None and writer.pid != os.getpid():  # a forked child: the shard is its parent's
            writer.close()  # only this process's copies: the parent's descriptors keep the lock
            self._writer = None
        elif (writer is not None and writer.nbytes < self.shard_bytes
                and os.fstat(writer.rows_fh.fileno()).st_size == writer.nbytes):  # no one else wrote to it
            return writer
        self.close()
        self._prepare()
        with_room = []
        if fcntl is not None:  # without locks, a shard of another writer is never safe to take
            for entry in os.scandir(self.folder):
                try:
                    if entry.name.endswith(ROWS) and entry.stat().st_size < self.shard_bytes:
                        with_room.append(entry.name[: -len(ROWS)])
                except FileNotFoundError:
                    pass
        for name in sorted(with_room):
            fh = _Writer.hold(self.folder / f"{name}{ROWS}", "take")
            if fh is not None:
                self._writer = _Writer(self.folder, name, fh, self.row_bytes)
                return self._writer
        while True:
            name = f"{os.getpid()}-{secrets.token_hex(4)}"
            fh = _Writer.hold(self.folder / f"{name}{ROWS}", "new")
            if fh is not None:
                self._writer = _Writer(self.folder, name, fh, self.row_bytes)
                return self._writer

    def put(self, digests: list[str], rows: np.ndarray) -> None:
        """Append the features `rows` (n, *shape) of `digests`: rows first, their index records after."""
        if not digests:
            return
        rows = np.ascontiguousarray(rows, np.float32).reshape(len(digests), *self.shape)
        path = self.folder
        try:
            writer = self._writable()
            path = self.folder / f"{writer.name}{ROWS}"
            records = np.zeros(len(digests), RECORD)
            keys = [bytes.fromhex(d) for d in digests]
            records["digest"] = np.frombuffer(b"".join(keys), "V32")
            records["row"] = np.arange(writer.nrows, writer.nrows + len(rows))
            records["crc"] = [_crc(k, r, row) for k, r, row in zip(keys, records["row"].tolist(), rows)]
            records["magic"] = MAGIC
            _write_all(writer.rows_fh, rows)
            writer.nrows += len(rows)
            writer.nbytes += rows.nbytes
            path = self.folder / f"{writer.name}{INDEX}"
            _write_all(writer.index_fh, records)
        except OSError as exc:
            self.close()
            raise _refused(path, exc)
        except BaseException:
            self.close()  # the next put takes a shard again and cuts off what this one left half-written
            raise

    def close(self) -> None:
        """Let go of the shard this store writes (other writers may take it)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


# ---------------------------------------------------------------------- `cpt cache`


@dataclass
class KeyInfo:
    """One cache key, as `cpt cache` lists it."""

    key: str
    backbone: str  # as the user named it (a path's file name), "?" for a key from before the store
    sha256: str
    precision: str
    view: str  # eval, or the augmented views' recipe
    entries: int
    bytes: int
    files: int
    last_used: float  # seconds since the epoch
    per_file: int  # entries still in the old one-file-per-image layout

    def as_dict(self) -> dict:
        return asdict(self)


def describe_view(kind: dict) -> str:
    """A view recipe in a few words: `eval`, `8 views (crop 0.08-1, flip)`, `8 strong colour-safe views ...`."""
    if kind.get("view") != "augment":
        return str(kind.get("view", "?"))
    scale = kind.get("scale") or [0, 1]
    strong = f" strong {kind['strong']}" if kind.get("strong") else ""
    return (f"{kind.get('views')}{strong} views (crop {scale[0]:g}-{scale[1]:g}{', flip' if kind.get('flip') else ''}"
            f"{', seed ' + str(kind['seed']) if kind.get('seed') else ''})")


def _files(folder: Path) -> Iterator[Path]:
    for dirpath, _, names in os.walk(folder):
        for name in names:
            yield Path(dirpath) / name


def _entries(folder: Path) -> tuple[int, int]:
    """Distinct images with a whole index record, and per-file entries of the old layout."""
    digests = []
    per_file = 0
    for e in os.scandir(folder):
        if e.name.endswith(INDEX):
            digests.append(index_records(Path(e.path))["digest"])
        elif len(e.name) == 2 and e.is_dir():
            per_file += sum(1 for f in os.scandir(e.path) if f.name.endswith(".npy"))
    return (len(np.unique(np.concatenate(digests))) if digests else 0) + per_file, per_file


def read_meta(folder: Path) -> dict:
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
        return meta if isinstance(meta, dict) else {}
    except (OSError, ValueError):
        return {}


def key_folders(root: Path) -> list[Path]:
    base = Path(root) / "features"
    if not base.is_dir():
        return []
    return sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))


def backbone_name(spec: str) -> str:
    """A backbone as `cpt cache` names it: an OpenAI or shipped name as it is (`ViT-B/16`), a
    checkpoint by its file name."""
    path = Path(spec)
    return path.name if path.is_absolute() or path.suffix else spec


def key_info(folder: Path) -> KeyInfo:
    meta = read_meta(folder)
    stats = []
    for path in _files(folder):
        try:
            stats.append(path.stat())
        except FileNotFoundError:  # a writer or compaction got there first
            pass
    entries, per_file = _entries(folder)
    return KeyInfo(
        key=folder.name, backbone=backbone_name(str(meta.get("backbone", "?"))),
        sha256=str(meta.get("sha256", "?")), precision=str(meta.get("precision", "?")),
        view=describe_view(meta.get("view", {})) if meta else "?", entries=entries,
        bytes=sum(s.st_size for s in stats), files=len(stats),
        last_used=max([s.st_mtime for s in stats] + [folder.stat().st_mtime]), per_file=per_file,
    )


def scan(root: Path) -> list[KeyInfo]:
    """Every key of the feature cache under `root`."""
    return [key_info(folder) for folder in key_folders(root)]


def _matches(info: KeyInfo, meta: dict, backbone: str) -> bool:
    """Whether `backbone` (a --backbone value, a checkpoint's file name or stem, 6+ hex digits of
    its sha256) names the key's backbone."""
    spec = str(meta.get("backbone", ""))
    names = {spec, backbone_name(spec)} | ({Path(spec).stem} if backbone_name(spec) != spec else set())
    return backbone in names or (len(backbone) >= 6 and info.sha256.startswith(backbone.lower()))


def select(root: Path, older_than_days: float | None = None, backbone: str | None = None,
           everything: bool = False) -> list[KeyInfo]:
    """The keys that every given criterion picks (all of them with `everything`)."""
    now = time.time()
    chosen = []
    for folder in key_folders(root):
        info = key_info(folder)
        if not everything:
            if older_than_days is not None and now - info.last_used < older_than_days * 86400:
                continue
            if backbone is not None and not _matches(info, read_meta(folder), backbone):
                continue
        chosen.append(info)
    return chosen


def remove(root: Path, key: str) -> None:
    """Delete a key's folder: renamed aside first, so it disappears at once even if deleting is cut short."""
    base = Path(root) / "features"
    aside = base / f".{key}.pruning-{secrets.token_hex(4)}"
    try:
        os.replace(base / key, aside)
        shutil.rmtree(aside)
        for left in base.glob(".*.pruning-*"):  # what an interrupted prune left
            shutil.rmtree(left, ignore_errors=True)
    except OSError as exc:
        raise _refused(base / key, exc)


def _legacy_files(folder: Path) -> list[Path]:
    return sorted(p for d in folder.iterdir() if len(d.name) == 2 and d.is_dir() for p in d.glob("*.npy"))


def compact(folder: Path, shard_bytes: int = SHARD_BYTES, chunk: int = 8192) -> tuple[int, int]:
    """Rewrite a key's live entries into as few shards as the limit allows; returns its file count
    before and after. Shards another process is writing are left as they are; damaged entries
    and duplicates are dropped; entries of the per-file layout move into the store. The old
    shards are deleted only once their entries are whole in the new ones, index after rows, so
    every entry stays readable throughout (a reader meanwhile may see two copies)."""
    folder = Path(folder)
    before = sum(1 for _ in _files(folder))
    meta = read_meta(folder)
    legacy = _legacy_files(folder)
    shape = tuple(meta["shape"]) if "shape" in meta else None
    for path in legacy if shape is None else []:  # a key from before the store: its entries' shape
        try:
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
            break
        except Exception:  # noqa: BLE001 - a damaged entry: try the next
            continue
    if shape is None:
        return before, before
    held = {}
    try:
        for e in sorted(os.scandir(folder), key=lambda e: e.name):
            if e.name.endswith(ROWS):
                fh = _Writer.hold(Path(e.path), "read")
                if fh is not None:
                    held[e.name[: -len(ROWS)]] = fh
        if len(held) <= 1 and not legacy and not _has_waste(folder, held, shape):
            return before, before
        reader = FeatureStore(folder, shape)
        reader._legacy, reader._touched = False, True  # reads only the shards; not a use of the key
        writer = FeatureStore(folder, shape, meta or None, shard_bytes)
        seen: set[str] = set()
        for name in held:
            records = index_records(folder / f"{name}{INDEX}")
            for start in range(0, len(records), chunk):
                digests = [d for d in dict.fromkeys(bytes(d).hex() for d in records["digest"][start:start + chunk])
                           if d not in seen]
                lookup = reader.get(digests)
                keep = [d for d, ok in zip(digests, lookup.found) if ok]
                writer.put(keep, lookup.rows[lookup.found])
                seen.update(keep)
        for path in legacy:
            digest = path.stem
            feat, _ = legacy_entry(path, shape)
            if feat is not None and digest not in seen:
                writer.put([digest], feat[None])
                seen.add(digest)
        writer.close()
        for name in held:  # the old shards: index first, so no reader is sent to a row being deleted
            (folder / f"{name}{INDEX}").unlink(missing_ok=True)
            (folder / f"{name}{ROWS}").unlink(missing_ok=True)
        for path in legacy:
            path.unlink(missing_ok=True)
        for d in {p.parent for p in legacy}:
            try:
                d.rmdir()
            except OSError:
                pass
    except OSError as exc:
        raise _refused(folder, exc)
    finally:
        for fh in held.values():
            fh.close()
    return before, sum(1 for _ in _files(folder))


def index_records(path: Path) -> np.ndarray:
    """The whole records of an index file (none if it is gone)."""
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        return np.empty(0, RECORD)
    records = np.frombuffer(blob[: len(blob) // RECORD.itemsize * RECORD.itemsize], RECORD)
    return records[records["magic"] == MAGIC]


def _has_waste(folder: Path, held: dict, shape: tuple[int, ...]) -> bool:
    """Whether the one shard held has rows no record points at, or records of the same image twice."""
    for name in held:
        records = index_records(folder / f"{name}{INDEX}")
        rows = (folder / f"{name}{ROWS}").stat().st_size // (4 * prod(shape))
        if len(np.unique(records["digest"])) != len(records) or len(records) != rows:
            return True
    return False


@dataclass
class Pruned:
    """What `cpt cache prune` did (or, with `dry_run`, would do)."""

    removed: list[KeyInfo]
    compacted: list[dict]  # key, files_before, files_after, bytes_before, bytes_after
    dry_run: bool

    @property
    def freed(self) -> int:
        return sum(k.bytes for k in self.removed) + sum(c["bytes_before"] - c["bytes_after"] for c in self.compacted)

    def as_dict(self) -> dict:
        return {"removed": [k.as_dict() for k in self.removed], "compacted": self.compacted,
                "freed_bytes": self.freed, "dry_run": self.dry_run}


def prune(root: Path, older_than_days: float | None = None, backbone: str | None = None, everything: bool = False,
          compact_keys: bool = False, dry_run: bool = False, shard_bytes: int = SHARD_BYTES) -> Pruned:
    """Delete the keys that every given criterion picks (`everything`: all), then, with
    `compact_keys`, compact the keys that stay."""
    if older_than_days is None and backbone is None and not everything and not compact_keys:
        raise CptError("Say what to prune: --older-than DAYS, --backbone NAME, --all, or --compact "
                       "(`cpt cache` lists the keys with their backbone and when each was last used).")
    if older_than_days is not None and not older_than_days >= 0:
        raise CptError(f"--older-than takes a number of days, 0 or more (got {older_than_days}).")
    picked = older_than_days is not None or backbone is not None or everything
    removed = select(root, older_than_days, backbone, everything) if picked else []
    if not dry_run:
        for info in removed:
            remove(root, info.key)
    compacted = []
    gone = {k.key for k in removed}
    for folder in key_folders(root) if compact_keys else []:
        if folder.name in gone:
            continue
        before = key_info(folder)
        after = before if dry_run else (compact(folder, shard_bytes), key_info(folder))[1]
        compacted.append({"key": folder.name, "files_before": before.files, "files_after": after.files,
                          "bytes_before": before.bytes, "bytes_after": after.bytes})
    return Pruned(removed, compacted, dry_run)
