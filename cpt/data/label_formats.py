"""Multi-label label files: wide or long CSV, COCO instances JSON, Pascal VOC folder or image-set list.

A target matrix holds 1 (positive), 0 (negative) or -1 (unknown) per (image, class); unknown
entries never count in training losses or in evaluation. Every reader returns the raw class keys,
the label set of the images found on disk and the images it skipped.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cpt.data.files import read_csv_file, read_json_file, read_text_file
from cpt.data.tasks import IMAGE_EXTENSIONS, Skipped
from cpt.errors import CptError

UNKNOWN = -1


@dataclass
class LabelSet:
    """Images and their (n, n_classes) targets in {1, 0, -1}."""

    paths: list[Path]
    targets: np.ndarray


Labels = tuple[list[str], LabelSet, list[Skipped]]
Marks = dict[str, int]  # an image's labelled classes: 1 or UNKNOWN; every other class is negative


def match_classes(path: Path, found: list[str], classes: list[str] | None, exact: bool) -> list[str]:
    """The class list of a file: `found`, or `classes` (the training file's) when given.

    `exact`: the file declares its classes (wide CSV columns, COCO categories), so they must be the
    same set; otherwise classes are only seen in labels, and a class absent from the file is negative.
    """
    if classes is None:
        return found
    missing = sorted(set(classes) - set(found)) if exact else []
    extra = sorted(set(found) - set(classes))
    if missing or extra:
        raise CptError(
            f"The classes of {path} do not match the training labels' classes: missing {missing or 'none'}, "
            f"unexpected {extra or 'none'}. Every label file of a task must use the same class names."
        )
    return classes


def targets_from_marks(marks: list[Marks], classes: list[str]) -> np.ndarray:
    """(n, n_classes) int8 targets: each image's marked classes, 0 elsewhere."""
    index = {c: i for i, c in enumerate(classes)}
    targets = np.zeros((len(marks), len(classes)), dtype=np.int8)
    for row, mark in enumerate(marks):
        for name, value in mark.items():
            targets[row, index[name]] = value
    return targets


def on_disk(source: Path, images: list[Path], targets: np.ndarray) -> tuple[LabelSet, list[Skipped]]:
    """The images that are image files present on disk (with their targets), and the others as skipped."""
    paths, keep, skipped = [], [], []
    for i, image in enumerate(p.resolve() for p in images):
        if image.suffix.lower() not in IMAGE_EXTENSIONS:
            skipped.append(Skipped(source.stem, str(image), "not an image file"))
        elif not image.exists():
            skipped.append(Skipped(source.stem, str(image), "file not found"))
        else:
            paths.append(image)
            keep.append(i)
    return LabelSet(paths, targets[keep].astype(np.int8)), skipped


def _wide_values(frame: pd.DataFrame, path: Path, columns: list[str], unknown_value: int) -> np.ndarray:
    """Cells as 1 / 0 / -1 targets; `unknown_value` 0 reads the 1 / -1 / 0 convention."""
    numeric = frame[columns].apply(pd.to_numeric, errors="coerce")
    values = numeric.fillna(unknown_value).to_numpy()
    if (numeric.isna() & frame[columns].notna()).to_numpy().any() or not np.isin(values, (1, 0, -1)).all():
        meaning = "1 positive, 0 negative, -1 or blank unknown" if unknown_value == UNKNOWN else \
            "1 positive, -1 negative, 0 or blank unknown"
        raise CptError(f"{path} has label cells other than 1, 0, -1 or blank (read as {meaning}).")
    if unknown_value == 0:
        return np.select([values == 1, values == -1], [1, 0], UNKNOWN)
    return values


def _long_marks(frame: pd.DataFrame) -> list[Marks]:
    """`labels` cells: `;`-joined positives."""
    return [{c.strip(): 1 for c in str(cell).split(";") if c.strip()} for cell in frame["labels"].fillna("")]


def read_label_csv(path: Path, classes: list[str] | None = None, root: Path | None = None,
                   unknown_value: int = -1) -> Labels:
    """A wide (`path,<class>...`) or long (`path,labels`, `;`-joined positives) label CSV.

    Image paths are relative to `root` (default: the CSV's folder) unless absolute. Wide cells read
    1 / 0 / -1-or-blank (`unknown_value` -1) or 1 / -1 / 0-or-blank (`unknown_value` 0) as
    positive / negative / unknown; `classes` fixes the class list (a test file must use the training file's).
    """
    if unknown_value not in (-1, 0):
        raise CptError(
            f"unknown_value must be -1 (cells 1 / 0 / -1: positive / negative / unknown) or 0 "
            f"(cells 1 / -1 / 0), not {unknown_value!r}."
        )
    fix = ("A multi-label label CSV is UTF-8 text with a header row and one row per image: path,<class1>,<class2>,... "
           "(cells 1, 0, -1 or blank) or path,labels (';'-joined positive classes).")
    frame = read_csv_file(path, "The label file", fix, dtype={"path": str, "labels": str}, keep_default_na=False,
                          na_values=[""])
    if "path" not in frame.columns:
        raise CptError(f"The label file {path} has no 'path' column (its columns: "
                       f"{', '.join(map(str, frame.columns[:8]))}). {fix}")
    blank = frame.index[frame["path"].isna()]
    if len(blank):
        raise CptError(f"The label file {path} has an empty path in row {blank[0] + 2}. Fill it in or delete the row.")
    if list(frame.columns) == ["path", "labels"]:
        marks = _long_marks(frame)
        classes = match_classes(path, sorted({c for m in marks for c in m}), classes, exact=False)
        targets = targets_from_marks(marks, classes)
    else:
        classes = match_classes(path, [str(c) for c in frame.columns if c != "path"], classes, exact=True)
        targets = _wide_values(frame, path, classes, unknown_value)
    if not classes:
        raise CptError(f"The label file {path} names no class: it has a path column but no class column, or no "
                       f"positive label in its labels column. {fix}")
    base = path.parent if root is None else root
    labels, skipped = on_disk(path, [base / rel for rel in frame["path"]], targets)
    return classes, labels, skipped


def _coco_root(path: Path) -> Path:
    """coco/annotations/instances_val2014.json -> coco/val2014 if it exists, else the JSON's folder."""
    guess = path.parent.parent / path.stem.removeprefix("instances_")
    return guess if guess.is_dir() else path.parent


def _coco_entries(data: dict) -> tuple[list[str], list[tuple[str, Marks]]]:
    """Category names in id order, and each image's file name with its annotated categories."""
    categories = sorted(data["categories"], key=lambda c: c["id"])
    name_of = {c["id"]: str(c["name"]) for c in categories}
    marks: dict[int, Marks] = {image["id"]: {} for image in data["images"]}
    for annotation in data["annotations"]:
        marks[annotation["image_id"]][name_of[annotation["category_id"]]] = 1
    names = [im["file_name"] for im in data["images"]]
    bad = next((n for n in names if not isinstance(n, str) or not n.strip() or "\x00" in n), None)
    if bad is not None:
        raise ValueError(f"an image's file_name is {bad!r}, not a file name")
    return [name_of[c["id"]] for c in categories], [(im["file_name"], marks[im["id"]]) for im in data["images"]]


def read_coco(path: Path, classes: list[str] | None = None, images: Path | None = None) -> Labels:
    """A COCO instances JSON: an image's annotated categories are positive, all others negative.

    Images are `images`/file_name (default: see `_coco_root`); images without annotation are skipped.
    """
    fix = ("A COCO instances file is a JSON object with 'images' (id, file_name), 'annotations' (image_id, "
           "category_id) and 'categories' (id, name).")
    data = read_json_file(path, "The COCO label file", fix)
    try:
        found, entries = _coco_entries(data)
    except (KeyError, TypeError, AttributeError, ValueError) as error:
        raise CptError(f"{path} is not a COCO instances file ({type(error).__name__}: {error}). {fix}") from None
    classes = match_classes(path, found, classes, exact=True)
    root = images or _coco_root(path)
    kept = [(root / name, marks) for name, marks in entries if marks]
    skipped = [Skipped(path.stem, str((root / name).resolve()), "no annotation") for name, marks in entries if not marks]
    labels, missing = on_disk(path, [p for p, _ in kept], targets_from_marks([m for _, m in kept], classes))
    return classes, labels, skipped + missing


def _voc_annotation(xml: Path, image_id: str) -> tuple[str, Marks]:
    """An annotation's image file name and classes: 1 if any object is not difficult, else unknown."""
    try:
        root = ET.parse(xml).getroot()
    except ET.ParseError as error:
        raise CptError(f"{xml} is not a valid VOC annotation: {error}.") from None
    marks: Marks = {}
    for obj in root.findall("object"):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise CptError(f"{xml} has an <object> without a <name>; every VOC object needs its class name.")
        difficult = (obj.findtext("difficult") or "0").strip() == "1"
        marks[name] = max(marks.get(name, UNKNOWN), UNKNOWN if difficult else 1)
    return (root.findtext("filename") or "").strip() or f"{image_id}.jpg", marks


def _voc_ids(path: Path, annotations: Path) -> list[str]:
    """The image ids of an image-set list (first token of each line), or of every annotation."""
    if path.is_dir():
        return sorted(xml.stem for xml in annotations.glob("*.xml"))
    text = read_text_file(path, "The VOC image-set list", "It lists one image id per line (ImageSets/Main/<split>.txt).")
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def read_voc(path: Path, classes: list[str] | None = None, images: Path | None = None) -> Labels:
    """A Pascal VOC folder (every annotation) or an `ImageSets/Main/<split>.txt` list (its ids only).

    Classes are the object names, sorted; a class present only through difficult objects is unknown.
    Images are `images` (default: JPEGImages) / the annotation's file name (or id + .jpg).
    """
    root = path if path.is_dir() else path.resolve().parents[2]
    annotations = root / "Annotations"
    if not annotations.is_dir():
        raise CptError(
            f"{path} is not a Pascal VOC dataset: {annotations} is not a folder. Give the VOC folder "
            "(with Annotations/ and JPEGImages/) or one of its ImageSets/Main/<split>.txt lists."
        )
    entries, skipped = [], []
    for image_id in _voc_ids(path, annotations):
        xml = annotations / f"{image_id}.xml"
        if xml.is_file():
            entries.append(_voc_annotation(xml, image_id))
        else:
            skipped.append(Skipped(path.stem, str(xml), "annotation not found"))
    classes = match_classes(path, sorted({c for _, marks in entries for c in marks}), classes, exact=False)
    folder = images or root / "JPEGImages"
    targets = targets_from_marks([marks for _, marks in entries], classes)
    labels, missing = on_disk(path, [folder / name for name, _ in entries], targets)
    return classes, labels, skipped + missing


def read_labels(path: Path, classes: list[str] | None = None, images: Path | None = None,
                unknown_value: int = -1) -> Labels:
    """Any supported label file: .csv, COCO .json, VOC folder or VOC image-set .txt (see the readers).

    `images` overrides the format's image root; `classes` (the training file's raw class keys) makes a
    file with other classes an error; `unknown_value` is the wide-CSV cell that means unknown (-1 or 0).
    """
    if not path.exists():
        raise CptError(f"Label file {path} not found.")
    suffix = path.suffix.lower()
    if path.is_dir() or suffix == ".txt":
        return read_voc(path, classes, images)
    if suffix == ".csv":
        return read_label_csv(path, classes, images, unknown_value)
    if suffix == ".json":
        return read_coco(path, classes, images)
    raise CptError(
        f"{path} is not a supported label file: give a CSV (path,<class1>,... or path,labels), a COCO "
        "instances JSON, a Pascal VOC folder or a VOC ImageSets/Main/<split>.txt list."
    )
