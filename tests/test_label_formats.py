"""Label formats: one tiny dataset written as CSV, COCO and VOC files reads the same labels."""

import json
from pathlib import Path

import numpy as np
import pytest

from cpt.errors import CptError
from cpt.data.label_formats import read_label_csv, read_labels
from cpt.data.multilabel import LabelSource, load_source, split_labels
from tests.conftest import write_image

CLASSES = ["cat", "dog", "sea_lion"]
ROWS = {"a": ("cat",), "b": ("cat", "dog"), "c": (), "d": ("sea_lion",), "e": ("dog",)}
TARGETS = [[int(c in row) for c in CLASSES] for row in ROWS.values()]


def write_images(folder: Path, names=ROWS) -> None:
    rng = np.random.default_rng(0)
    for i, name in enumerate(names):
        write_image(folder / f"{name}.jpg", (40 * i, 90, 160), rng)


def write_voc(root: Path, objects: dict[str, list[tuple[str, int]]]) -> Path:
    """A VOC folder: one XML per image (objects as (class, difficult)) and JPEGImages/."""
    (root / "Annotations").mkdir(parents=True)
    for image_id, objs in objects.items():
        body = "".join(f"<object><name>{c}</name><difficult>{d}</difficult></object>" for c, d in objs)
        (root / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><filename>{image_id}.jpg</filename>{body}</annotation>")
    write_images(root / "JPEGImages", objects)
    return root


def write_coco(path: Path, rows=ROWS, categories=CLASSES) -> Path:
    """An instances JSON; categories are listed out of id order (the reader sorts them by id)."""
    ids = {c: i + 1 for i, c in enumerate(categories)}
    data = {
        "images": [{"id": i, "file_name": f"{name}.jpg"} for i, name in enumerate(rows)],
        "annotations": [{"id": 10 * i + ids[c], "image_id": i, "category_id": ids[c]}
                        for i, row in enumerate(rows.values()) for c in row],
        "categories": [{"id": ids[c], "name": c} for c in reversed(categories)],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def wide_csv(path: Path, negative: int = 0) -> Path:
    cells = [",".join(str(1 if t else negative) for t in row) for row in TARGETS]
    path.write_text("path,cat,dog,sea_lion\n" + "".join(f"img/{n}.jpg,{c}\n" for n, c in zip(ROWS, cells)))
    return path


def names(labels) -> list[str]:
    return [p.stem for p in labels.paths]


def test_every_format_reads_the_same_classes_and_targets(tmp_path):
    write_images(tmp_path / "img")
    long = tmp_path / "long.csv"
    long.write_text("path,labels\n" + "".join(f"img/{n}.jpg,{';'.join(r)}\n" for n, r in ROWS.items()))
    coco = write_coco(tmp_path / "coco" / "annotations" / "instances_val2014.json")
    write_images(tmp_path / "coco" / "val2014")
    voc = write_voc(tmp_path / "VOC2007", {n: [(c, 0) for c in r] for n, r in ROWS.items()})
    read = {
        "wide": read_labels(wide_csv(tmp_path / "wide.csv")),
        "wide -1 negative": read_labels(wide_csv(tmp_path / "wide_pm.csv", -1), unknown_value=0),
        "long": read_labels(long),
        "voc": read_labels(voc),
    }
    for fmt, (classes, labels, skipped) in read.items():
        assert classes == CLASSES, fmt
        assert names(labels) == list(ROWS), fmt
        assert labels.targets.tolist() == TARGETS, fmt
        assert labels.targets.dtype == np.int8 and skipped == [], fmt
    classes, labels, skipped = read_labels(coco)
    assert classes == CLASSES and names(labels) == ["a", "b", "d", "e"]
    assert labels.targets.tolist() == [TARGETS[i] for i in (0, 1, 3, 4)]
    assert [(Path(s.path).name, s.reason) for s in skipped] == [("c.jpg", "no annotation")]


def test_csv_unknown_conventions_root_and_absolute_paths(tmp_path):
    write_images(tmp_path / "img", "ab")
    a = (tmp_path / "img" / "a.jpg").resolve()
    (tmp_path / "sub").mkdir()
    std, other = tmp_path / "sub" / "std.csv", tmp_path / "sub" / "other.csv"
    std.write_text(f"path,x,y,z\nimg/b.jpg,1,0,-1\n{a},,1,0\n")
    other.write_text(f"path,x,y,z\nimg/b.jpg,1,-1,0\n{a},,1,-1\n")
    _, labels, _ = read_label_csv(std, root=tmp_path)
    assert labels.targets.tolist() == [[1, 0, -1], [-1, 1, 0]]
    assert labels.paths == [(tmp_path / "img" / "b.jpg").resolve(), a]
    _, same, _ = read_label_csv(other, root=tmp_path, unknown_value=0)
    assert np.array_equal(same.targets, labels.targets)
    _, _, skipped = read_label_csv(std)  # relative to the CSV's folder: img/b.jpg is not there
    assert [(Path(s.path).name, s.reason) for s in skipped] == [("b.jpg", "file not found")]
    with pytest.raises(CptError, match="unknown_value"):
        read_label_csv(std, unknown_value=1)
    std.write_text("path,x\nimg/b.jpg,yes\n")
    with pytest.raises(CptError, match="label cells"):
        read_label_csv(std, root=tmp_path)


def test_voc_difficult_only_class_is_unknown_and_image_sets_select_ids(tmp_path):
    voc = write_voc(tmp_path / "VOC", {
        "a": [("cat", 0), ("dog", 1)],
        "b": [("dog", 1), ("dog", 0)],
        "c": [("sea_lion", 1)],
    })
    classes, labels, _ = read_labels(voc)
    assert classes == CLASSES
    assert labels.targets.tolist() == [[1, -1, 0], [0, 1, 0], [0, 0, -1]]
    split = voc / "ImageSets" / "Main" / "val.txt"
    split.parent.mkdir(parents=True)
    split.write_text("c\na\n")
    classes, labels, _ = read_labels(split)
    assert classes == CLASSES and names(labels) == ["c", "a"]
    assert labels.targets.tolist() == [[0, 0, -1], [1, -1, 0]]
    _, labels, skipped = read_labels(split, images=tmp_path / "elsewhere")
    assert labels.paths == [] and {s.reason for s in skipped} == {"file not found"}


@pytest.mark.parametrize("fmt", ["wide", "long", "coco", "voc"])
def test_a_file_with_other_classes_is_refused_naming_them(tmp_path, fmt):
    write_images(tmp_path / "img", "ab")
    if fmt == "wide":
        path = tmp_path / "test.csv"
        path.write_text("path,cat,zebra\nimg/a.jpg,1,0\n")
    elif fmt == "long":
        path = tmp_path / "test.csv"
        path.write_text("path,labels\nimg/a.jpg,cat;zebra\n")
    elif fmt == "coco":
        path = write_coco(tmp_path / "instances_x.json", {"a": ("zebra",)}, ["cat", "zebra"])
    else:
        path = write_voc(tmp_path / "VOC", {"a": [("zebra", 0)]})
    with pytest.raises(CptError, match=r"unexpected \['zebra'\]"):
        read_labels(path, CLASSES)


def test_classes_absent_from_a_test_file_are_negative_unless_declared(tmp_path):
    voc = write_voc(tmp_path / "VOC", {"a": [("dog", 0)]})
    classes, labels, _ = read_labels(voc, CLASSES)
    assert classes == CLASSES and labels.targets.tolist() == [[0, 1, 0]]
    coco = write_coco(tmp_path / "instances_x.json", {"a": ("dog",)}, ["dog"])
    with pytest.raises(CptError, match=r"missing \['cat', 'sea_lion'\]"):
        read_labels(coco, CLASSES)


def test_coco_default_image_root_and_override(tmp_path):
    coco = write_coco(tmp_path / "instances_train.json", {"a": ("cat",)})
    _, labels, skipped = read_labels(coco)  # no ../train folder: images next to the JSON
    assert labels.paths == [] and [Path(s.path).parent for s in skipped] == [tmp_path.resolve()]
    write_images(tmp_path / "pics", "a")
    _, labels, skipped = read_labels(coco, images=tmp_path / "pics")
    assert names(labels) == ["a"] and skipped == []


def test_unsupported_and_missing_label_files(tmp_path):
    with pytest.raises(CptError, match="not found"):
        read_labels(tmp_path / "nope.csv")
    (tmp_path / "labels.xlsx").write_text("")
    with pytest.raises(CptError, match="not a supported label file"):
        read_labels(tmp_path / "labels.xlsx")
    (tmp_path / "bad.json").write_text('{"images": []}')
    with pytest.raises(CptError, match="not a COCO instances file"):
        read_labels(tmp_path / "bad.json")
    with pytest.raises(CptError, match="not a Pascal VOC dataset"):
        read_labels(tmp_path)


def test_seeded_split_repeats_under_the_seed_and_partitions_the_images(tmp_path):
    names_ = [f"i{k:02d}" for k in range(20)]
    write_images(tmp_path / "img", names_)
    wide = tmp_path / "all.csv"
    wide.write_text("path,x\n" + "".join(f"img/{n}.jpg,{k % 2}\n" for k, n in enumerate(names_)))
    task, _ = load_source("t", LabelSource(str(wide), seed=3))
    train, test = task.splits["train"], task.splits["test"]
    assert len(test.paths) == 6 and len(train.paths) == 14 and task.source == str(wide)
    assert sorted(train.paths + test.paths) == sorted((tmp_path / "img").resolve().glob("*.jpg"))
    assert [int(p.stem[1:]) % 2 for p in test.paths] == test.targets[:, 0].tolist()
    again, _ = load_source("t", LabelSource(str(wide), seed=3))
    other, _ = load_source("t", LabelSource(str(wide), seed=4))
    assert again.splits["test"].paths == test.paths and other.splits["test"].paths != test.paths
    _, labels, _ = read_labels(wide)
    assert len(split_labels(labels, 0.01, 0)[1].paths) == 1
    with pytest.raises(CptError, match="no readable train image"):
        load_source("t", LabelSource(str(wide), test_fraction=1.0))


def test_load_source_reads_a_test_file_with_the_training_classes(tmp_path):
    write_images(tmp_path / "coco" / "train", "abcde")
    train = write_coco(tmp_path / "coco" / "annotations" / "instances_train.json")
    test = write_coco(tmp_path / "coco" / "annotations" / "instances_val.json", {"b": ("dog",), "q": ("cat",)})
    write_images(tmp_path / "coco" / "val", "b")
    task, skipped = load_source("my_coco", LabelSource(str(train), str(test)))
    assert task.classnames == ["cat", "dog", "sea lion"] and task.title == "my coco"
    assert names(task.splits["test"]) == ["b"] and task.splits["test"].targets.tolist() == [[0, 1, 0]]
    assert {(Path(s.path).name, s.reason) for s in skipped} == {("c.jpg", "no annotation"), ("q.jpg", "file not found")}


# label files that cannot be read as labels: a CptError naming the file and what to fix


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"\n\n", "is empty"),
    (bytes(range(256)) * 3, "is not a text file"),
    ("path,caf\xe9\nimg/a.jpg,1\n".encode("latin-1"), "is not UTF-8 text (byte 0xe9"),
    (b"path\nimg/a.jpg\n", "names no class"),
    (b"path,labels\nimg/a.jpg,\n", "names no class"),
    (b"file,cat\nimg/a.jpg,1\n", "no 'path' column"),
    (b"path,cat\n,1\n", "empty path in row 2"),
    (b'path,cat\n"img/a.jpg,1\n', "not a valid CSV"),
])
def test_unreadable_label_csv(tmp_path, content, message):
    (tmp_path / "labels.csv").write_bytes(content)
    with pytest.raises(CptError, match="labels.csv") as err:
        read_labels(tmp_path / "labels.csv")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_utf8_byte_order_mark_is_fine(tmp_path):
    write_images(tmp_path / "img")
    wide = wide_csv(tmp_path / "labels.csv")
    wide.write_bytes(b"\xef\xbb\xbf" + wide.read_bytes())
    classes, labels, _ = read_labels(wide)
    assert classes == CLASSES and labels.targets.tolist() == TARGETS


@pytest.mark.parametrize("data, message", [
    ('{"images": [{"id": 1, "file_name": 5}], "annotations": [], "categories": []}', "file_name is 5"),
    ('{"images": 5, "annotations": [], "categories": []}', "not a COCO instances file"),
    ("[" * 50_000 + "]" * 50_000, "nests lists or objects too deeply"),
    ("", "is empty"),
])
def test_unreadable_coco_file(tmp_path, data, message):
    (tmp_path / "instances_x.json").write_text(data)
    with pytest.raises(CptError, match="instances_x.json") as err:
        read_labels(tmp_path / "instances_x.json")
    assert message in str(err.value)


def test_unreadable_voc_image_set(tmp_path):
    root = write_voc(tmp_path / "voc", {"a": [("cat", 0)]})
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "train.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(CptError, match="train.txt is not UTF-8"):
        read_labels(root / "ImageSets" / "Main" / "train.txt")


def test_an_image_listed_twice(tmp_path, caplog, monkeypatch):
    """Repeats with the same labels are used once (a warning says so); other labels are refused;
    test images that are training images are reported."""
    import logging

    monkeypatch.setattr(logging.getLogger("cpt"), "propagate", True)
    caplog.set_level(logging.WARNING, logger="cpt")
    write_images(tmp_path / "img")
    wide = wide_csv(tmp_path / "train.csv")
    lines = wide.read_text().splitlines()
    wide.write_text("\n".join(lines + lines[1:3]) + "\n")
    task, _ = load_source("t", LabelSource(str(wide), test_fraction=0.4))
    assert sorted(names(task.splits["train"]) + names(task.splits["test"])) == list(ROWS)
    assert "lists 2 image(s) more than once" in caplog.text
    test = tmp_path / "test.csv"
    test.write_text("\n".join(lines[:3]) + "\n")
    load_source("t", LabelSource(str(wide), str(test)))
    assert "2 of its 2 test images are also training images" in caplog.text
    wide.write_text("\n".join(lines + [lines[1].replace(",1,", ",0,")]) + "\n")
    with pytest.raises(CptError, match="twice, with different labels"):
        load_source("t", LabelSource(str(wide), test_fraction=0.4))
