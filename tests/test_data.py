"""Task loading (folders, CSV, CoOp JSON), seeded splits, few-shot sampling and the splits file."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cpt.data import tasks as D
from cpt.errors import CptError
from cpt.io import write_csv
from tests.conftest import write_image
from tests.test_bad_data import broken_png


def images(folder: Path, count: int, start: int = 0) -> list[Path]:
    """`count` tiny PNGs img00.png, img01.png, ... in `folder`."""
    rng = np.random.default_rng(start)
    return [write_image(folder / f"img{i:02d}.png", (200, 60, 60), rng, size=8) for i in range(start, start + count)]


def corrupt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(1).bytes(64))
    return path


@pytest.fixture
def cpt_warnings(caplog, monkeypatch):
    """Warnings of the `cpt` logger (which may have been set not to propagate by a CLI test)."""
    monkeypatch.setattr(logging.getLogger("cpt"), "propagate", True)
    caplog.set_level(logging.WARNING, logger="cpt")
    return caplog


def sizes(task: D.Task, label: int) -> tuple[int, int, int]:
    return tuple(sum(s.label == label for s in task.splits[k]) for k in ("train", "val", "test"))


def all_paths(task: D.Task) -> list[Path]:
    return [s.path for k in ("train", "val", "test") for s in task.splits[k]]


# --tasks


def test_parse_task_spec(tmp_path):
    (tmp_path / "my_pets").mkdir()
    assert D.parse_task_spec("flowers=/data/f, pets=/data/p") == [("flowers", "/data/f"), ("pets", "/data/p")]
    assert D.parse_task_spec(f"{tmp_path}/my_pets/") == [("my_pets", f"{tmp_path}/my_pets/")]
    assert D.parse_task_spec("/d/labels.csv,/d/split_zhou_Food101.json@/d/images") == [
        ("labels", "/d/labels.csv"), ("split_zhou_Food101", "/d/split_zhou_Food101.json@/d/images"),
    ]
    assert D.parse_task_spec("/data/a=b") == [("a=b", "/data/a=b")]


@pytest.mark.parametrize("spec", ["=/data/f", "flowers=", "flowers=/a,pets=/b,flowers=/c", ""])
def test_parse_task_spec_rejects(spec):
    with pytest.raises(CptError, match="--tasks"):
        D.parse_task_spec(spec)


# folders


def test_split_folders(tmp_path):
    root = tmp_path / "pets"
    for split, n in (("train", 4), ("val", 2), ("test", 3)):
        images(root / split / "golden_retriever", n)
        images(root / split / "cat", n)
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    (root / "train" / "cat" / ".DS_Store").write_bytes(b"x")
    task, skipped = D.load_task("pet_breeds", str(root), seed=0)
    assert task.classnames == ["cat", "golden retriever"]
    assert task.title == "pet breeds" and task.source == str(root)
    assert [sizes(task, c) for c in (0, 1)] == [(4, 2, 3), (4, 2, 3)]
    assert all(p.is_absolute() and p.exists() for p in all_paths(task))
    assert all(s.path.parent.name == "golden_retriever" for s in task.splits["test"] if s.label == 1)
    assert skipped == [D.Skipped("pet_breeds", str((root / "train/cat/notes.txt").resolve()), "not an image file")]


def test_split_folders_without_val(tmp_path):
    images(tmp_path / "train" / "a", 2)
    images(tmp_path / "test" / "a", 1)
    task, _ = D.load_task("t", str(tmp_path), 0)
    assert task.splits["val"] == [] and len(task.splits["train"]) == 2


def test_classnames_file(tmp_path):
    for cls in ("n01440764", "n01443537", "great_white"):
        images(tmp_path / cls, 3)
    (tmp_path / "classnames.txt").write_text("n01440764 tench\n\nn01443537 goldfish, Carassius auratus\nunused_folder thing\n")
    task, _ = D.load_task("imagenet", str(tmp_path), 0)
    assert task.classnames == ["great white", "tench", "goldfish, Carassius auratus"]


@pytest.mark.parametrize(
    "layout, message",
    [
        ({"train/a": 2, "val/a": 1}, "no test/"),
        ({"train/a": 2, "test/a": 1, "test/b": 1}, "'b'"),
        ({"train/a": 2, "train/b": 0, "test/a": 1}, "class 'b' of task 't' has no images"),
        ({"a": 3, "b": 0}, "class 'b' of task 't' has no images"),
        ({"a": 2, "b": 1}, "no test images"),
    ],
)
def test_folder_errors(tmp_path, layout, message):
    for folder, n in layout.items():
        (tmp_path / folder).mkdir(parents=True)
        images(tmp_path / folder, n)
    with pytest.raises(CptError, match=message):
        D.load_task("t", str(tmp_path), 0)


def test_missing_path(tmp_path):
    with pytest.raises(CptError, match=r"nowhere.*'flowers'.*--tasks flowers=PATH"):
        D.load_task("flowers", str(tmp_path / "nowhere"), 0)


def test_split_by_seed(tmp_path, cpt_warnings):
    for cls, n in (("ten", 10), ("three", 3), ("four", 4), ("two", 2)):
        images(tmp_path / cls, n)
    task, _ = D.load_task("t", str(tmp_path), seed=1)
    assert task.classnames == ["four", "ten", "three", "two"]
    assert [sizes(task, c) for c in range(4)] == [(2, 1, 1), (5, 2, 3), (1, 1, 1), (2, 0, 0)]
    assert "'two'" in cpt_warnings.text
    assert len(set(all_paths(task))) == 19
    again, _ = D.load_task("t", str(tmp_path), seed=1)
    other, _ = D.load_task("t", str(tmp_path), seed=2)
    assert again.splits == task.splits
    assert other.splits != task.splits


# CSV


def test_csv_with_split(tmp_path):
    imgs = images(tmp_path / "img", 6)
    pd.DataFrame({
        "path": ["img/img00.png", "img/img01.png", str(imgs[2]), "img/img03.png", "img/img04.png", "img/img05.png", "img/readme.txt"],
        "label": ["sea_lion", "dog", "dog", "sea_lion", "dog", "sea_lion", "dog"],
        "split": ["train", "train", "val", "test", "test", "test", "train"],
    }).to_csv(tmp_path / "labels.csv", index=False)
    task, skipped = D.load_task("t", str(tmp_path / "labels.csv"), 0)
    assert task.classnames == ["dog", "sea lion"]
    assert task.splits["train"] == [D.Sample(imgs[1].resolve(), 0), D.Sample(imgs[0].resolve(), 1)]
    assert task.splits["val"] == [D.Sample(imgs[2].resolve(), 0)]
    assert [sizes(task, c) for c in (0, 1)] == [(1, 1, 1), (1, 0, 2)]
    assert [s.reason for s in skipped] == ["not an image file"]


def test_csv_without_split_and_numeric_labels(tmp_path):
    images(tmp_path, 20)
    labels = [str(i % 2 * 10 + 2) for i in range(20)]  # "2" and "12"
    pd.DataFrame({"path": [f"img{i:02d}.png" for i in range(20)], "label": labels}).to_csv(tmp_path / "l.csv", index=False)
    task, _ = D.load_task("t", str(tmp_path / "l.csv"), 0)
    assert task.classnames == ["2", "12"]
    assert [sizes(task, c) for c in (0, 1)] == [(5, 2, 3), (5, 2, 3)]


@pytest.mark.parametrize("text, message", [
    ("file,class\na.png,a\n", r"file, class.*'path' and 'label'"),
    ("", "is empty"),
    (b"\x00\x01\x02a", "not a text file"),
    ("path,label\n".encode("utf-16"), "is UTF-16 text. Save it as UTF-8"),
    ("path,label\nd\xe9j\xe0.png,a\n".encode("latin-1"), "not UTF-8 text.*Save it as UTF-8"),
])
def test_csv_unusable(tmp_path, text, message):
    (tmp_path / "l.csv").write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(CptError, match=message):
        D.load_task("t", str(tmp_path / "l.csv"), 0)


# CoOp split JSON


def test_coop_json_with_image_root(tmp_path):
    imgs = images(tmp_path / "jpg", 4)
    split = {
        "train": [["img00.png", 1, "sunflower"], ["img01.png", 0, "pink_primrose"]],
        "val": [["img02.png", 0, "pink_primrose"]],
        "test": [["img03.png", 1, "sunflower"], ["img04.txt", 1, "sunflower"]],
    }
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "split.json").write_text(json.dumps(split))
    spec = f"{tmp_path}/meta/split.json@{tmp_path}/jpg"
    task, skipped = D.load_task("flowers", spec, 0)
    assert task.classnames == ["pink primrose", "sunflower"] and task.source == spec
    assert task.splits["train"] == [D.Sample(imgs[1].resolve(), 0), D.Sample(imgs[0].resolve(), 1)]
    assert task.splits["test"] == [D.Sample(imgs[3].resolve(), 1)]
    assert [Path(s.path).name for s in skipped] == ["img04.txt"]


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"),
    ('{"train": []}', 'lacks the "train" and "test"'),
    ('{"train": [["a.png", "x", "a"]], "test": []}', 'malformed or inconsistent "train" entry 1'),
    ('{"train": 5, "test": []}', '"train": 5, which is not a list'),
    ('{"train": [], "test": null}', '"test": None, which is not a list'),
    ('{"train": [[["a.png"], 0, "a"]], "test": []}', "malformed"),
    ('{"train": [["a.png", 0, ["a"]]], "test": []}', "malformed"),
    ('{"train": [["a\\u0000.png", 0, "a"]], "test": []}', "malformed"),
    ('{"train": [["a.png", 0, "a"], ["b.png", 0, "b"]], "test": []}', "inconsistent"),
    ('{"train": ' + "[" * 50_000 + "]" * 50_000 + ', "test": []}', "nests lists or objects too deeply"),
    ("", "is empty"),
])
def test_coop_json_malformed(tmp_path, text, message):
    (tmp_path / "split.json").write_text(text)
    with pytest.raises(CptError, match="CoOp split file") as err:
        D.load_task("t", str(tmp_path / "split.json"), 0)
    assert message in str(err.value) and "split.json" in str(err.value)


def test_coop_json_malformed_entry_is_shown_short(tmp_path):
    deep = "[" * 400 + "]" * 400
    (tmp_path / "split.json").write_text('{"train": [' + deep + '], "test": []}')
    with pytest.raises(CptError, match="malformed") as err:
        D.load_task("t", str(tmp_path / "split.json"), 0)
    assert len(str(err.value)) < 600


# an image listed twice


def split_csv(tmp_path: Path, rows: list[str], header: str = "path,label,split") -> Path:
    images(tmp_path, 6)
    (tmp_path / "l.csv").write_text(header + "\n" + "".join(r + "\n" for r in rows))
    return tmp_path / "l.csv"


GOOD = [f"img{i:02d}.png,{'ab'[i % 2]},{'train' if i < 4 else 'test'}" for i in range(6)]


def test_csv_repeated_rows_are_used_once_with_a_warning(tmp_path, cpt_warnings):
    task, _ = D.load_task("t", str(split_csv(tmp_path, GOOD + GOOD[:3])), 0)
    assert sorted(s.path.name for k in D.SPLITS for s in task.splits[k]) == [f"img{i:02d}.png" for i in range(6)]
    assert "lists 3 image(s) more than once" in cpt_warnings.text and "row 8" in cpt_warnings.text
    # without a split column, a repeat must not land in train and test by the seeded split
    for seed in range(10):
        rows = [f"img{i:02d}.png,a" for i in range(6)] * 3
        task, _ = D.load_task("t", str(split_csv(tmp_path, rows, "path,label")), seed)
        assert len({s.path for k in D.SPLITS for s in task.splits[k]}) == len(all_paths(task)) == 6


@pytest.mark.parametrize("extra, message", [
    ("img00.png,a,test", 'row 2 (class \'a\', split train) and in row 8 (class \'a\', split test)'),
    ("img00.png,b,train", "row 8 (class 'b', split train)"),
    ("./sub/../img00.png,a,val", "twice"),
])
def test_csv_image_in_two_splits_or_classes_is_refused(tmp_path, extra, message):
    (tmp_path / "sub").mkdir()
    with pytest.raises(CptError, match="img00.png twice") as err:
        D.load_task("t", str(split_csv(tmp_path, GOOD + [extra])), 0)
    assert message in str(err.value) and "l.csv" in str(err.value) and "leaks" in str(err.value)


def test_csv_without_split_image_with_two_classes_is_refused(tmp_path):
    rows = [f"img{i:02d}.png,{'ab'[i % 2]}" for i in range(6)] + ["img00.png,b"]
    with pytest.raises(CptError, match="twice"):
        D.load_task("t", str(split_csv(tmp_path, rows, "path,label")), 0)


def test_split_json_repeats(tmp_path, cpt_warnings):
    """A published split file defines a benchmark: an image in two splits with one class is kept (with a
    warning); exact repeats are used once; two classes for one image are refused."""
    imgs = images(tmp_path / "jpg", 4)
    entry = [[p.name, i % 2, "ab"[i % 2]] for i, p in enumerate(imgs)]
    (tmp_path / "s.json").write_text(json.dumps({"train": entry + entry[:1], "test": entry[:2]}))
    task, _ = D.load_task("t", f"{tmp_path / 's.json'}@{tmp_path / 'jpg'}", 0)
    assert len(task.splits["train"]) == 4 and len(task.splits["test"]) == 2
    assert "more than once" in cpt_warnings.text and "puts 2 image(s) in two splits" in cpt_warnings.text
    (tmp_path / "s.json").write_text(json.dumps({"train": entry, "test": [[imgs[0].name, 1, "b"]]}))
    with pytest.raises(CptError, match="twice"):
        D.load_task("t", f"{tmp_path / 's.json'}@{tmp_path / 'jpg'}", 0)


def test_folder_image_linked_into_two_splits_is_refused(tmp_path):
    for split in ("train", "test"):
        for cls in "ab":
            images(tmp_path / split / cls, 2)
    (tmp_path / "test" / "a" / "img00.png").unlink()
    (tmp_path / "test" / "a" / "img00.png").symlink_to(tmp_path / "train" / "a" / "img00.png")
    with pytest.raises(CptError, match="both in train .class 'a'. and in test"):
        D.load_task("t", str(tmp_path), 0)


# files that are no image


def test_folder_lists_image_names_that_are_no_regular_file(tmp_path):
    folder = tmp_path / "red"
    images(folder, 3)
    images(tmp_path / "blue", 3)
    os.mkfifo(folder / "pipe.png")
    (folder / "loop.png").symlink_to("loop.png")
    (folder / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (folder / "nested.png").mkdir()  # a folder is not a class's image, nor listed (as before)
    task, skipped = D.load_task("t", str(tmp_path), 0)
    reasons = {Path(s.path).name: s.reason for s in skipped}
    assert reasons == {"pipe.png": "not a regular file (a FIFO)", "dangling.jpg": "file not found (a broken symbolic link)",
                       "loop.png": "cannot read file: Too many levels of symbolic links"}
    assert len(all_paths(task)) == 6


def test_classnames_file_must_be_utf8(tmp_path):
    images(tmp_path / "train" / "cafe", 1)
    images(tmp_path / "test" / "cafe", 1)
    (tmp_path / "classnames.txt").write_bytes("cafe caf\xe9\n".encode("latin-1"))
    with pytest.raises(CptError, match="classnames.txt is not UTF-8 text"):
        D.load_task("t", str(tmp_path), 0)


# images and few-shot


def test_check_image(tmp_path):
    assert D.check_image(images(tmp_path, 1)[0]) is None
    assert D.check_image(tmp_path / "missing.png") == "file not found"
    assert D.check_image(corrupt(tmp_path / "bad.png")).startswith("cannot decode image")
    assert D.check_image(broken_png(tmp_path / "syntax.png")).startswith("cannot decode image: broken PNG file")
    (tmp_path / "empty.png").write_bytes(b"")
    assert D.check_image(tmp_path / "empty.png") == "cannot decode image: the file is empty"
    os.mkfifo(tmp_path / "pipe.png")
    assert D.check_image(tmp_path / "pipe.png") == "not a regular file (a FIFO)"  # and returns at once
    (tmp_path / "loop.png").symlink_to("loop.png")
    assert D.check_image(tmp_path / "loop.png").startswith("cannot read file:")
    assert D.check_image(tmp_path) == "not a regular file (a folder)"
    assert D.check_image(Path("/dev/zero")) == "not a regular file (a character device)"


def test_every_decoding_error_is_the_files():
    """Whatever Pillow raises for a bad file (here: a few exception types it is known to raise),
    reading reports it as the file's problem."""
    import struct as struct_module
    from unittest import mock

    from PIL import Image

    from cpt.data.images import Unreadable, decode_rgb

    for error in (SyntaxError("broken PNG file"), struct_module.error("unpack"), EOFError(), ValueError("x"),
                  IndexError("y"), Image.DecompressionBombError("too big"), MemoryError(), ZeroDivisionError()):
        with mock.patch("PIL.Image.open", side_effect=error), pytest.raises(Unreadable, match="cannot decode image"):
            decode_rgb(b"data", "x.png")


# task names


@pytest.mark.parametrize("name, message", [
    ("..", "names a folder"), (".", "names a folder"), ("a/b", "path separator"), ("a\\b", "path separator"),
    ("a\nb", "control character"), ("a\x00b", "control character"), (" ", "empty"),
])
def test_task_names_that_cannot_be_file_names_are_refused(name, message):
    from cpt.data.names import check_task_names

    with pytest.raises(CptError, match=message):
        check_task_names([name], "--tasks")


def test_task_names_whose_files_collide_are_refused(tmp_path):
    from cpt.data.names import check_task_names

    check_task_names(["pets", "pets2", "my pets", "$x$", "naïve"], "--tasks")
    with pytest.raises(CptError, match="'a b' and 'a_b'.*same name"):
        check_task_names(["a b", "a_b"], "--tasks")
    with pytest.raises(CptError, match="cannot be a task name"):
        D.parse_task_spec(f"..={tmp_path}")
    with pytest.raises(CptError, match="cannot be a task name"):
        D.parse_task_spec(str(tmp_path / "...csv"))  # a bare path's name is its stem: '..'


def test_safe_name_is_one_harmless_path_component():
    from cpt.data.names import MAX_STEM, safe_name

    assert safe_name("pets/cats") == "pets_cats" and safe_name("my pets & co") == "my_pets_co"
    assert safe_name("flowers-102.v2") == "flowers-102.v2"  # safe names are kept as they are
    for name in ("..", ".", "", "../../x", "a\\..\\b", "/etc/passwd", "x" * 300, "é" * 300, "\x00"):
        stem = safe_name(name)
        assert stem not in ("", ".", "..") and "/" not in stem and "\\" not in stem and len(stem) <= MAX_STEM
        assert Path(stem).name == stem
    assert safe_name("x" * 300) != safe_name("x" * 301)  # long names keep a hash of the whole


@pytest.fixture
def ten_per_class(tmp_path) -> D.Task:
    """3 classes x 10 images; one corrupt file among class a's training images."""
    for cls in "abc":
        images(tmp_path / "train" / cls, 10)
        images(tmp_path / "val" / cls, 6)
        images(tmp_path / "test" / cls, 2)
    corrupt(tmp_path / "train" / "a" / "img03.png")
    return D.load_task("t", str(tmp_path), 0)[0]


def test_few_shot(ten_per_class):
    task, skipped = D.few_shot(ten_per_class, shots=9, seed=1)
    assert [sizes(task, c) for c in range(3)] == [(9, 4, 2)] * 3
    assert task.splits["test"] == ten_per_class.splits["test"]
    assert all(D.check_image(s.path) is None for s in task.splits["train"])
    bad = [s for s in skipped if s.path.endswith("a/img03.png")]
    assert len(bad) == len(skipped) <= 1 and all(s.reason.startswith("cannot decode") for s in bad)
    again, _ = D.few_shot(ten_per_class, 9, 1)
    other, _ = D.few_shot(ten_per_class, 9, 2)
    assert again.splits == task.splits
    assert other.splits["train"] != task.splits["train"]
    assert set(task.splits["train"]) <= set(ten_per_class.splits["train"])


def test_few_shot_replaces_unreadable(ten_per_class):
    """With K = all readable images, the corrupt one is always met, skipped and replaced."""
    task, skipped = D.few_shot(ten_per_class, shots=9, seed=1, check=lambda p: "broken" if p.name == "img00.png" else None)
    assert [sizes(task, c)[0] for c in range(3)] == [9, 9, 9]
    assert sorted(Path(s.path).parent.name for s in skipped if Path(s.path).parent.parent.name == "train") == ["a", "b", "c"]
    assert all(s.reason == "broken" for s in skipped)
    assert not any(s.path.name == "img00.png" for s in task.splits["train"])


def test_few_shot_small_and_all(ten_per_class, cpt_warnings):
    task, _ = D.few_shot(ten_per_class, shots=2, seed=0)
    assert [sizes(task, c) for c in range(3)] == [(2, 2, 2)] * 3
    task, _ = D.few_shot(ten_per_class, shots=16, seed=0)
    assert [sizes(task, c)[0] for c in range(3)] == [9, 10, 10]
    assert "class 'a'" in cpt_warnings.text
    calls = []
    assert D.few_shot(ten_per_class, 0, 0, check=calls.append) == (ten_per_class, [])
    assert calls == []


def test_few_shot_class_without_readable_images(ten_per_class):
    with pytest.raises(CptError, match="class 'b' of task 't' has no readable training images"):
        D.few_shot(ten_per_class, 4, 0, check=lambda p: "cannot decode image" if p.parent.name == "b" else None)


# splits file


def test_splits_frame_round_trip(ten_per_class, tmp_path):
    sampled, _ = D.few_shot(ten_per_class, 3, 0)
    other = D.Task("no_val", ["x y"], {"train": sampled.splits["train"][:1], "val": [], "test": sampled.splits["test"][:1]}, "/src", "no val")
    tasks = [sampled, other]
    frame = D.splits_frame(tasks)
    assert list(frame.columns) == ["task", "split", "path", "label", "classname"]
    assert len(frame) == 9 + 9 + 6 + 2
    assert set(frame[frame.task == "no_val"].classname) == {"x y"}
    meta = [{"name": t.name, "classnames": t.classnames, "source": t.source, "title": t.title} for t in tasks]
    assert D.tasks_from_frame(frame, meta) == tasks
    write_csv(tmp_path / "splits.csv", frame)
    assert D.tasks_from_frame(pd.read_csv(tmp_path / "splits.csv"), meta) == tasks
