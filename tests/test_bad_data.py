"""Bad data through the real CLI (issue #12): unreadable files, names as path components, names
matplotlib would read as math, label and split files without validation, damaged cache entries.

One table: input -> expected exit code, message fragment, files listed as skipped (fit) or warned
about (eval, predict), and the files left behind: a command that fails (exit 2) leaves nothing,
one that succeeds writes only into its run folder. Then damaged cache entries, and a seeded fuzz
test of a few hundred damaged PNG and JPEG files.
"""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cpt.data.store import RECORD
from tests.conftest import StoredEntry, cli, colour_folder, stored_entries, write_image

TWO = {"red": (220, 40, 40), "blue": (40, 70, 220)}


# ---------------------------------------------------------------- data builders


def _chunk(cid: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + cid + data + struct.pack(">I", zlib.crc32(cid + data))


def broken_png(path: Path) -> Path:
    """A PNG whose second IDAT chunk has no valid chunk type: Pillow opens it, then raises
    SyntaxError("broken PNG file") while decoding (not an OSError)."""
    data = zlib.compress(b"".join(b"\x00" + bytes((200, 50, 50)) * 8 for _ in range(8)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))
                     + _chunk(b"IDAT", data[:10]) + _chunk(b"\x00\x00\x00\x00", data[10:]) + _chunk(b"IEND", b""))
    return path


def decodes(path: Path) -> bool:
    """The test's own oracle: does Pillow decode these bytes to RGB?"""
    try:
        with Image.open(io.BytesIO(path.read_bytes())) as im:
            im.convert("RGB")
        return True
    except Exception:  # noqa: BLE001
        return False


def folder_task(tmp: Path, per_class: int = 4, classes: dict | None = None) -> Path:
    """train/ val/ test/ class folders of colour images."""
    return colour_folder(tmp / "data", per_class=per_class, classes=classes or TWO, split=True)


def csv_task(tmp: Path, rows: list[tuple[str, str, str]], n: int = 3) -> Path:
    """Images red_i.png / blue_i.png (i < n) and a CSV path,label,split with `rows`."""
    rng = np.random.default_rng(0)
    for name, colour in TWO.items():
        for i in range(n):
            write_image(tmp / "data" / f"{name}_{i}.png", colour, rng)
    lines = "".join(",".join(row) + "\n" for row in rows)
    (tmp / "data" / "task.csv").write_text("path,label,split\n" + lines)
    return tmp / "data" / "task.csv"


def good_rows(n: int = 3) -> list[tuple[str, str, str]]:
    return [(f"{c}_{i}.png", c, "train" if i < n - 1 else "test") for c in TWO for i in range(n)]


def ml_task(tmp: Path, classes: tuple[str, ...] = ("red", "blue"), extra_train: str = "", extra_test: str = "") -> Path:
    """A multi-label folder: images, train.csv and test.csv (wide), plus extra rows."""
    rng = np.random.default_rng(1)
    root = tmp / "ml"
    rows = {"train": [], "test": []}
    for split, n in (("train", 6), ("test", 4)):
        for i in range(n):
            present = ([1, 0], [0, 1], [1, 1])[i % 3]
            colour = tuple(np.mean([c for c, p in zip(TWO.values(), present) if p], axis=0).astype(int))
            path = write_image(root / "img" / f"{split}{i}.png", colour, rng)
            rows[split].append(f"{path.relative_to(root)},{present[0]},{present[1]}\n")
    header = "path," + ",".join(classes) + "\n"
    (root / "train.csv").write_text(header + "".join(rows["train"]) + extra_train)
    (root / "test.csv").write_text(header + "".join(rows["test"]) + extra_test)
    return root


def coop_json(tmp: Path, text: str) -> str:
    """A CoOp split JSON with `text` beside a folder of images; returns FILE.json@ROOT."""
    folder_task(tmp)
    (tmp / "split.json").write_text(text)
    return f"{tmp / 'split.json'}@{tmp / 'data' / 'train'}"


def trained(tmp: Path, clip: Path, data: str, *extra: str) -> Path:
    """A finished zero-shot run on `data` (quiet), for eval and predict cases."""
    code, _, err = cli("fit", "--method", "zeroshot", "--tasks", data, "--backbone", clip, "--out", tmp / "trained",
                       "--quiet", *extra)
    assert code == 0, err
    return tmp / "trained"


def fit(clip: Path, tasks: str, *extra) -> list:
    return ["fit", "--method", "zeroshot", "--tasks", tasks, "--backbone", clip, "--out", "{run}", "--quiet", *extra]


def coop(clip: Path, tasks: str, *extra) -> list:
    return ["fit", "--method", "coop", "--epochs", "1", "--n-ctx", "2", "--tasks", tasks, "--backbone", clip,
            "--out", "{run}", "--quiet", *extra]


# ---------------------------------------------------------------- the table


@dataclass(frozen=True)
class Case:
    build: Callable[[Path, Path], list]  # (tmp_path, tiny_clip) -> the argv; "{run}" becomes tmp_path / "run"
    code: int  # expected exit code
    message: str = ""  # a fragment of stderr
    listed: tuple[str, ...] = ()  # file names in skipped.csv (fit) or in stderr's warnings (eval, predict)
    files: tuple[str, ...] = ()  # files the command must write into tmp_path / "run"
    names_file: bool = False  # an exit-2 message must name the file it refuses (its name is in `message`)


def _unreadable_in_folder(tmp: Path, clip: Path) -> list:
    data = folder_task(tmp)
    test = data / "test" / "red"
    os.mkfifo(test / "pipe.png")
    os.symlink("loop.png", test / "loop.png")
    os.symlink(tmp / "gone.png", test / "dangling.png")
    (test / "empty.png").write_bytes(b"")
    broken_png(test / "syntax.png")
    return fit(clip, f"c={data}")


def _fifo_in_csv(tmp: Path, clip: Path) -> list:
    file = csv_task(tmp, good_rows() + [("pipe.png", "red", "test"), ("folder.png", "blue", "test")])
    os.mkfifo(tmp / "data" / "pipe.png")
    (tmp / "data" / "folder.png").mkdir()
    return fit(clip, f"c={file}")


def _broken_train_and_test(tmp: Path, clip: Path, shots: str) -> list:
    data = folder_task(tmp)
    broken_png(data / "train" / "red" / "syntax.png")
    broken_png(data / "test" / "blue" / "syntax_test.png")
    return coop(clip, f"c={data}", "--shots", shots)


def _broken_ml(tmp: Path, clip: Path) -> list:
    root = ml_task(tmp, extra_train="img/bad_train.png,1,0\n", extra_test="img/bad_test.png,0,1\n")
    broken_png(root / "img" / "bad_train.png")
    (root / "img" / "bad_test.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    return coop(clip, f"ml={root}")


def _eval_data(tmp: Path, clip: Path) -> list:
    run = trained(tmp, clip, f"c={folder_task(tmp)}")
    other = colour_folder(tmp / "other", per_class=2, classes=TWO)
    broken_png(other / "red" / "syntax.png")
    os.mkfifo(other / "blue" / "pipe.png")
    return ["eval", run, "--data", other, "--out", "{run}", "--quiet"]


def _eval_run_damaged_after_fit(tmp: Path, clip: Path) -> list:
    data = folder_task(tmp)
    run = trained(tmp, clip, f"c={data}")
    victim = sorted((data / "test" / "red").iterdir())[0]
    victim.unlink()
    broken_png(victim)
    return ["eval", run, "--out", "{run}", "--quiet"]


def _eval_ml_damaged_after_fit(tmp: Path, clip: Path) -> list:
    root = ml_task(tmp)
    run = trained(tmp, clip, f"ml={root}")
    broken_png(root / "img" / "test0.png")
    return ["eval", run, "--out", "{run}", "--quiet"]


def _predict(tmp: Path, clip: Path) -> list:
    data = folder_task(tmp)
    run = trained(tmp, clip, f"c={data}")
    photos = tmp / "photos"
    broken_png(photos / "syntax.png")
    (photos / "empty.jpg").write_bytes(b"")
    write_image(photos / "fine.png", (220, 40, 40), np.random.default_rng(3))
    os.mkfifo(tmp / "pipe.png")
    return ["predict", run, photos, tmp / "pipe.png", "--quiet"]


def _predict_ml(tmp: Path, clip: Path) -> list:
    run = trained(tmp, clip, f"ml={ml_task(tmp)}")
    broken_png(tmp / "photos" / "syntax.png")
    write_image(tmp / "photos" / "fine.png", (220, 40, 40), np.random.default_rng(3))
    return ["predict", run, tmp / "photos", "--quiet"]


def _task_file(tmp: Path, clip: Path, name: str) -> list:
    data = folder_task(tmp)
    (tmp / "tasks.yaml").write_text(json.dumps({"tasks": [{"name": name, "path": str(data)}]}))
    return fit(clip, str(tmp / "tasks.yaml"))


def _labels_named(tmp: Path, clip: Path, file: str, *tasks: str) -> list:
    root = ml_task(tmp)
    (root / file).write_bytes((root / "train.csv").read_bytes())
    return ["fit", "--method", "zeroshot", "--labels", root / file, "--test-labels", root / "test.csv",
            "--backbone", clip, "--out", "{run}", "--quiet", *tasks]


def _math_classes(tmp: Path, clip: Path) -> list:
    data = folder_task(tmp, classes={"$\\foo$": (220, 40, 40), "a$b_{x}": (40, 70, 220), "50%": (40, 200, 60)})
    return fit(clip, f"$t^2$={data}")


def _ml_file(tmp: Path, clip: Path, content: bytes, which: str = "train.csv") -> list:
    root = ml_task(tmp)
    (root / which).write_bytes(content)
    return fit(clip, f"ml={root}")


def _csv(tmp: Path, clip: Path, rows: list[tuple[str, str, str]], split: bool = True) -> list:
    file = csv_task(tmp, rows)
    if not split:
        frame = pd.read_csv(file).drop(columns="split")
        frame.to_csv(file, index=False)
    return fit(clip, f"c={file}", "--shots", "0")


def _empty_csv(tmp: Path, clip: Path) -> list:
    csv_task(tmp, good_rows())
    (tmp / "data" / "empty.csv").write_bytes(b"")
    return fit(clip, f"c={tmp / 'data' / 'empty.csv'}")


MATH = ("$\\foo$", "50%_{x}$")
def _linked_into_test(tmp: Path, clip: Path) -> list:
    data = folder_task(tmp)
    (data / "test" / "red" / "linked.png").symlink_to(data / "train" / "red" / "red_000.png")
    return fit(clip, f"c={data}")


def _json_in_two_splits(tmp: Path, clip: Path) -> list:
    folder_task(tmp)
    train = [[f"{c}/{c}_{i:03d}.png", k, c] for k, c in enumerate(TWO) for i in range(4)]
    (tmp / "split.json").write_text(json.dumps({"train": train, "test": train[:1] + train[4:5]}))
    return fit(clip, f"j={tmp / 'split.json'}@{tmp / 'data' / 'train'}")


TRAIN_5 = '{"train": 5, "test": []}'
LATIN1 = "path,caf\xe9,cr\xe8me\nimg/train0.png,1,0\n".encode("latin-1")
DEEP = '{"train": ' + "[" * 100_000 + "]" * 100_000 + ', "test": []}'
NESTED = json.dumps({"train": [[[[[["a.png"]]]]], 0, "red"], "test": []})

CASES: dict[str, Case] = {
    # 1. unreadable files: the file's problem, never the run's
    "syntaxerror-png-shots-0": Case(lambda t, c: _broken_train_and_test(t, c, "0"), 0,
                                    listed=("syntax.png", "syntax_test.png"), files=("report.md", "skipped.csv")),
    "syntaxerror-png-few-shot": Case(lambda t, c: _broken_train_and_test(t, c, "5"), 0,
                                     listed=("syntax.png", "syntax_test.png")),
    "fifo-link-loop-empty-in-folder": Case(_unreadable_in_folder, 0, "FIFO",
                                           listed=("pipe.png", "loop.png", "dangling.png", "empty.png", "syntax.png")),
    "fifo-and-folder-in-csv": Case(_fifo_in_csv, 0, "not a regular file", listed=("pipe.png", "folder.png")),
    "multi-label-broken": Case(_broken_ml, 0, listed=("bad_train.png", "bad_test.png"),
                               files=("mask_ml.csv", "train_labels_ml.csv")),
    "eval-data-broken": Case(_eval_data, 0, "skipped", listed=("syntax.png", "pipe.png"), files=("report.md",)),
    "eval-run-damaged-after-fit": Case(_eval_run_damaged_after_fit, 0, "cannot decode image", listed=("red_000.png",)),
    "eval-multi-label-damaged": Case(_eval_ml_damaged_after_fit, 0, "broken PNG file", listed=("test0.png",)),
    "predict-broken": Case(_predict, 0, "skipped", listed=("syntax.png", "empty.jpg", "pipe.png")),
    "predict-multi-label-broken": Case(_predict_ml, 0, "broken PNG file", listed=("syntax.png",)),
    # 2. names as path components
    "task-dotdot": Case(lambda t, c: fit(c, f"..={folder_task(t)}"), 2, "cannot be a task name"),
    "task-file-traversal": Case(lambda t, c: _task_file(t, c, "../../escape"), 2, "path separator", names_file=True),
    "task-file-backslash": Case(lambda t, c: _task_file(t, c, "a\\b"), 2, "path separator"),
    "task-file-dot": Case(lambda t, c: _task_file(t, c, "."), 2, "names a folder"),
    "labels-tasks-traversal": Case(lambda t, c: _labels_named(t, c, "x.csv", "--tasks", "../../escape"), 2,
                                   "cannot be a task name"),
    "labels-stem-dotdot": Case(lambda t, c: _labels_named(t, c, "...csv"), 2, "cannot be a task name"),
    "names-collide": Case(lambda t, c: fit(c, f"a b={folder_task(t)},a_b={t / 'data'}"), 2, "same name"),
    "odd-task-name": Case(lambda t, c: fit(c, f"my pets & co={folder_task(t)}"), 0,
                          files=("confusion_my_pets_co.png", "per_class_my_pets_co.png")),
    # 3. names matplotlib would read as math
    "math-class-names": Case(_math_classes, 0, files=("confusion__t_2_.png", "per_class__t_2_.png", "report.md")),
    "math-multi-label-classes": Case(lambda t, c: fit(c, f"$m$={ml_task(t, MATH)}"), 0,
                                     files=("ap__m_.png", "pr__m_.png", "report.md")),
    # 4. label and split files
    "labels-empty": Case(lambda t, c: _ml_file(t, c, b""), 2, "train.csv is empty", names_file=True),
    "labels-binary": Case(lambda t, c: _ml_file(t, c, bytes(range(256)) * 4), 2, "not a text file"),
    "labels-latin-1": Case(lambda t, c: _ml_file(t, c, LATIN1), 2, "is not UTF-8 text"),
    "labels-no-class-column": Case(lambda t, c: _ml_file(t, c, b"path\nimg/train0.png\n"), 2, "names no class"),
    "test-labels-binary": Case(lambda t, c: _ml_file(t, c, b"\x89PNG\r\n\x1a\n\x00\x00", "test.csv"), 2,
                               "test.csv is not a text file"),
    "coop-json-train-5": Case(lambda t, c: fit(c, f"j={coop_json(t, TRAIN_5)}"), 2,
                              "split.json has \"train\": 5, which is not a list"),
    "coop-json-deep": Case(lambda t, c: fit(c, f"j={coop_json(t, DEEP)}"), 2, "split.json nests"),
    "coop-json-nested-entry": Case(lambda t, c: fit(c, f"j={coop_json(t, NESTED)}"), 2, "malformed"),
    "csv-empty": Case(_empty_csv, 2, "empty.csv is empty", names_file=True),
    "csv-repeated-rows": Case(lambda t, c: _csv(t, c, good_rows() + good_rows()[:2], split=False), 0,
                              "more than once"),
    "csv-train-and-test": Case(lambda t, c: _csv(t, c, good_rows() + [("red_0.png", "red", "test")]), 2,
                               "red_0.png twice"),
    "csv-two-labels": Case(lambda t, c: _csv(t, c, good_rows() + [("red_0.png", "blue", "")], split=False), 2,
                           "twice"),
    "folder-link-into-test": Case(_linked_into_test, 2, "both in train (class 'red') and in test"),
    "split-json-in-two-splits": Case(_json_in_two_splits, 0, "puts 2 image(s) in two splits"),
    "mask-binary": Case(lambda t, c: [*fit(c, f"ml={ml_task(t)}"), "--mask", t / "ml" / "img" / "train0.png"], 2,
                        "--mask"),
}


@pytest.fixture
def deadline():
    """Fail instead of hanging (a FIFO read would block forever)."""
    def expired(*_):
        raise TimeoutError("the command hung")
    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def tree(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if not p.is_dir() or p.is_symlink()}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_bad_data(case: Case, tiny_clip, tmp_path, deadline):
    work = tmp_path / "w" / "x"  # two levels down, so a file escaping the run folder stays inside tmp_path
    work.mkdir(parents=True)
    argv = [str(a).replace("{run}", str(work / "run")) for a in case.build(work, tiny_clip)]
    before = tree(tmp_path)
    code, _, err = cli(*argv)
    assert code == case.code, err
    assert "internal error" not in err and "Traceback" not in err
    assert case.message in err, err
    new = tree(tmp_path) - before
    if code == 2:
        assert not new, f"a refused command left files behind: {sorted(new)}"
        assert len(err.strip().splitlines()) == 1, err  # one paragraph
        if case.names_file:
            assert str(work) in err  # names the file by its path
        return
    assert all(work / "run" in p.parents for p in new), sorted(new)  # nothing outside the run folder
    for name in case.files:
        assert (work / "run" / name).is_file(), (name, sorted(p.name for p in new))
    for png in (p for p in new if p.suffix == ".png"):
        with Image.open(png) as im:
            im.verify()
    if argv[0] == "fit":
        skipped = pd.read_csv(work / "run" / "skipped.csv")
        assert set(case.listed) <= {Path(p).name for p in skipped.path}, skipped
    else:
        for name in case.listed:
            assert f"{name}:" in err or f"{name} " in err, (name, err)


# ---------------------------------------------------------------- damaged cache entries


DAMAGE = ("zeros", "nan", "inf", "zero-row", "bit-flip", "row-number", "checksum")


def _damage(entry: StoredEntry, how: str) -> None:
    """Change a stored feature or its index record by hand, as a user or a failing disk might."""
    feat = entry.read().copy()
    if how in ("zeros", "nan", "inf"):
        entry.write(np.full_like(feat, {"zeros": 0.0, "nan": np.nan, "inf": np.inf}[how]))
    elif how == "zero-row":  # one augmented view zeroed (an eval-view entry is a single row: all of it)
        feat[0 if feat.ndim == 2 else slice(None)] = 0
        entry.write(feat)
    elif how == "bit-flip":  # still finite and non-zero: only the checksum tells
        feat.reshape(-1).view(np.uint32)[3] ^= 1 << 5
        entry.write(feat)
    else:  # the index record: another row number, or another checksum
        with open(entry.index, "r+b") as fh:
            fh.seek(entry.record * RECORD.itemsize + (32 if how == "row-number" else 40))
            value = int.from_bytes(fh.read(4), "little")
            fh.seek(-4, 1)
            fh.write(((value + 1) % 2**32).to_bytes(4, "little"))


def test_damaged_cache_entries_are_encoded_again(tiny_clip, colours, tmp_path):
    """Every kind of damage, on eval-view entries (dim,) and augmented-view entries (views, dim):
    the image is encoded again and stored anew, and the numbers are those of an undamaged cache."""
    cache = tmp_path / "cache"
    args = ["--method", "coop", "--epochs", "1", "--n-ctx", "2", "--tasks", f"colours={colours}", "--shots", "3",
            "--aug-views", "2", "--backbone", tiny_clip, "--cache-dir", cache, "--json", "--quiet"]
    code, out, err = cli("fit", *args, "--out", tmp_path / "a")
    assert code == 0, err
    first = json.loads(out)
    entries = stored_entries(cache)
    by_kind = {1: [e for e in entries if len(e.shape) == 1], 2: [e for e in entries if len(e.shape) == 2]}
    assert len(by_kind[1]) >= len(DAMAGE) and len(by_kind[2]) >= len(DAMAGE)
    damaged = []
    for group in by_kind.values():
        for entry, how in zip(group, DAMAGE):
            _damage(entry, how)
            damaged.append(entry)
    code, out, err = cli("fit", *args, "--out", tmp_path / "b")
    assert code == 0, err
    again = json.loads(out)
    assert err.count("damaged feature cache entry") == len(damaged)
    assert again["images_encoded"] == len(damaged) and again["images_from_cache"] == len(entries) - len(damaged)
    assert again["metrics"] == first["metrics"]
    predictions = [pd.read_csv(tmp_path / run / "predictions.csv").drop(columns="path") for run in "ab"]
    assert predictions[0].drop(columns="score").equals(predictions[1].drop(columns="score"))
    np.testing.assert_allclose(predictions[0].score, predictions[1].score, atol=1e-5)  # other encoder batches
    old = {(e.rows, e.record) for e in entries}
    stored = [e for e in stored_entries(cache) if (e.rows, e.record) not in old]  # the new copies, with good features
    assert sorted(e.digest for e in stored) == sorted(e.digest for e in damaged)
    for entry in stored:
        feat = entry.read()
        assert np.isfinite(feat).all() and np.abs(feat).max(axis=-1).all()
    assert not [p for p in cache.rglob("*") if p.name.endswith(".tmp")]
    code, out, err = cli("fit", *args, "--out", tmp_path / "c")
    assert json.loads(out)["images_encoded"] == 0 and "damaged" not in err


# ---------------------------------------------------------------- fuzz


def damaged_copies(source: bytes, n: int, rng: np.random.Generator) -> list[bytes]:
    """`n` damaged copies of an image file: cut short, bit-flipped, or with a wrong header."""
    copies = []
    for i in range(n):
        data = bytearray(source)
        kind = i % 4
        if kind == 0:
            data = data[: int(rng.integers(0, len(data)))]
        elif kind == 1:
            for _ in range(int(rng.integers(1, 12))):
                j = int(rng.integers(0, len(data)))
                data[j] ^= 1 << int(rng.integers(0, 8))
        elif kind == 2:
            data[: int(rng.integers(1, 16))] = rng.bytes(16)[: int(rng.integers(1, 16))]
        else:  # a chunk of bytes overwritten in the middle
            j = int(rng.integers(0, len(data) - 8))
            data[j : j + 8] = rng.bytes(8)
        copies.append(bytes(data))
    return copies


@pytest.mark.slow
def test_fuzz_damaged_pngs_and_jpegs(tiny_clip, tmp_path, deadline):
    rng = np.random.default_rng(12)
    data = colour_folder(tmp_path / "data", per_class=4, classes=TWO, split=True)
    sources = []
    for fmt, suffix in (("PNG", ".png"), ("JPEG", ".jpg")):
        buf = io.BytesIO()
        pixels = np.clip(np.array((220, 40, 40)) + rng.normal(0, 30, (24, 24, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(buf, fmt)
        sources.append((buf.getvalue(), suffix))
    places = [data / "train" / "red", data / "test" / "blue", tmp_path / "photos"]
    damaged: dict[str, list[Path]] = {str(p): [] for p in places}
    for k, (source, suffix) in enumerate(sources):
        for i, blob in enumerate(damaged_copies(source, 150, rng)):
            folder = places[i % 3]
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"fuzz{k}_{i:03d}{suffix}"
            path.write_bytes(blob)
            damaged[str(folder)].append(path)
    bad = {str(p.resolve()) for paths in damaged.values() for p in paths if not decodes(p)}
    assert 100 < len(bad) < 300  # most copies are broken, some still decode

    common = ["--tasks", f"c={data}", "--backbone", tiny_clip, "--shots", "0", "--quiet"]
    code, _, err = cli("fit", "--method", "zeroshot", *common, "--out", tmp_path / "zs")
    assert code == 0, err
    listed = set(pd.read_csv(tmp_path / "zs" / "skipped.csv").path)
    test_bad = {p for p in bad if "/test/" in p}
    assert listed == test_bad  # zero-shot reads the test images only; every one that does not decode is listed

    code, _, err = cli("fit", "--method", "coop", "--epochs", "1", "--n-ctx", "2", "--aug-views", "1", *common,
                       "--out", tmp_path / "coop")
    assert code == 0, err
    listed = set(pd.read_csv(tmp_path / "coop" / "skipped.csv").path)
    assert listed == {p for p in bad if "/photos/" not in p}
    splits = set(pd.read_csv(tmp_path / "coop" / "splits.csv").path)
    assert not splits & bad  # the run's recorded images are the readable ones

    code, out, err = cli("predict", tmp_path / "coop", tmp_path / "photos", "--quiet")
    assert code == 0, err
    predicted = set(pd.read_csv(io.StringIO(out)).path)
    photos = {str(p) for p in damaged[str(tmp_path / "photos")]}
    for path in photos:
        if str(Path(path).resolve()) in bad:
            assert f"skipped {path}:" in err and path not in predicted
        else:
            assert path in predicted
