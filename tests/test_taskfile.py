"""Task files (YAML/JSON) and the SoftCPT benchmark suites (General-10, Plant-6, Fashion-20)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cpt_datasets import benchmarks as B

from cpt.data.tasks import load_task
from cpt.errors import CptError
from cpt.data.taskfile import METRICS, TaskSpec, is_task_file, read_task_file
from tests.conftest import write_image

EMPTY_SPLIT = {"train": [], "val": [], "test": []}
GENERAL10_FOLDERS = {
    "caltech-101", "dtd", "eurosat", "fgvc_aircraft", "food-101",
    "oxford_flowers", "oxford_pets", "stanford_cars", "sun397", "ucf101",
}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def layout(tmp_path: Path) -> Path:
    """A folder task, a CoOp split JSON with its image root, and a class-name file, under tmp_path/data."""
    data = tmp_path / "data"
    (data / "pets" / "cat").mkdir(parents=True)
    write(data / "flowers" / "split.json", json.dumps(EMPTY_SPLIT))
    (data / "flowers" / "jpg").mkdir()
    write(data / "names.txt", "rose\n\n sun flower \n")
    return data


YAML = """\
tasks:
  - name: pets
    path: data/pets
  - name: oxford_flowers
    path: data/flowers/split.json
    root: data/flowers/jpg
    title: flower recognition
    classnames: data/names.txt
    metric: mean_per_class_accuracy
"""


def test_yaml_task_file_resolves_paths(tmp_path):
    data = layout(tmp_path)
    specs = read_task_file(write(tmp_path / "tasks.yaml", YAML))
    assert specs == [
        TaskSpec("pets", str(data / "pets")),
        TaskSpec("oxford_flowers", f"{data / 'flowers' / 'split.json'}@{data / 'flowers' / 'jpg'}",
                 "flower recognition", ("rose", "sun flower"), "mean_per_class_accuracy"),
    ]


def test_json_task_file_with_inline_root_and_classname_list(tmp_path):
    data = layout(tmp_path)
    (tmp_path / "sub").mkdir()
    tasks = {"tasks": [
        {"name": "flowers", "path": "../data/flowers/split.json@../data/flowers/jpg", "classnames": ["rose", 7]},
        {"name": "pets", "path": str(data / "pets"), "metric": "accuracy"},
    ]}
    specs = read_task_file(write(tmp_path / "sub" / "tasks.json", json.dumps(tasks)))
    assert specs[0] == TaskSpec("flowers", f"{data / 'flowers' / 'split.json'}@{data / 'flowers' / 'jpg'}",
                                classnames=("rose", "7"))
    assert specs[1] == TaskSpec("pets", str(data / "pets"))


def test_task_file_path_feeds_load_task(tmp_path):
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for cls, colour in (("red", (200, 40, 40)), ("blue", (40, 40, 200))):
        for i in range(3):
            write_image(data / "imgs" / cls / f"{i}.png", colour, rng, size=8)
    split = {s: [[f"{c}/{i}.png", k, c] for k, c in enumerate(("red", "blue")) for i in range(3)] for s in ("train", "test")}
    write(data / "split.json", json.dumps(split))
    spec, = read_task_file(write(tmp_path / "t.yml", "tasks: [{name: colours, path: data/split.json, root: data/imgs}]"))
    task, skipped = load_task(spec.name, spec.path, seed=0)
    assert task.classnames == ["red", "blue"] and len(task.splits["test"]) == 6 and not skipped


@pytest.mark.parametrize("text, message", [
    ("tasks: [name: x\n", "not valid YAML"),
    ("other: 1\n", "no \"tasks\" list"),
    ("tasks: []\n", "no \"tasks\" list"),
    ("tasks: [{name: pets, path: data/pets}]\nextra: 1\n", "unknown top-level keys (extra)"),
    ("tasks: [{path: data/pets}]\n", "task 1 lacks a name"),
    ("tasks: [{name: pets}]\n", "task 'pets' lacks a path"),
    ("tasks: [{name: pets, path: data/pets}, {name: pets, path: data/pets}]\n", "'pets' more than once"),
    ("tasks: [{name: pets, path: data/pets, metric: f1}]\n", "unknown metric 'f1'"),
    ("tasks: [{name: pets, path: data/pets, shots: 4}]\n", "unknown keys (shots). The allowed keys are name, path, root"),
    ("tasks: [{name: pets, path: data/nowhere}]\n", "does not exist"),
    ("tasks: [{name: pets, path: data/pets, root: data}]\n", "not a split .json"),
    ("tasks: [{name: 7, path: data/pets}]\n", "name must be a non-empty text"),
    ("tasks: [{name: pets, path: data/pets, classnames: []}]\n", "classnames is empty"),
    ("tasks: [{name: pets, path: data/pets, classnames: missing.txt}]\n", "could not be read"),
    ("tasks: [pets]\n", "task 1 is not a mapping"),
])
def test_task_file_errors_name_file_and_entry(tmp_path, text, message):
    layout(tmp_path)
    file = write(tmp_path / "tasks.yaml", text)
    with pytest.raises(CptError, match="tasks.yaml") as err:
        read_task_file(file)
    assert message in str(err.value)


def test_task_file_errors_on_files(tmp_path):
    with pytest.raises(CptError, match="could not be read"):
        read_task_file(tmp_path / "absent.yaml")
    with pytest.raises(CptError, match="not valid JSON"):
        read_task_file(write(tmp_path / "bad.json", "{tasks: "))
    with pytest.raises(CptError, match="neither .yaml, .yml nor .json"):
        read_task_file(write(tmp_path / "tasks.txt", "tasks: []"))
    with pytest.raises(CptError, match="is a CoOp split JSON"):
        read_task_file(write(tmp_path / "split.json", json.dumps(EMPTY_SPLIT)))


def test_is_task_file(tmp_path):
    assert is_task_file(str(write(tmp_path / "t.yaml", YAML)))
    assert is_task_file(str(write(tmp_path / "t.json", json.dumps({"tasks": []}))))
    split = write(tmp_path / "split_zhou_OxfordPets.json", json.dumps(EMPTY_SPLIT))
    assert not is_task_file(str(split))
    assert not is_task_file(f"{split}@{tmp_path}")
    assert not is_task_file(str(tmp_path))
    assert not is_task_file(str(write(tmp_path / "broken.json", "{")))


def test_general10_missing_lists_every_folder_once(tmp_path):
    with pytest.raises(CptError) as err:
        B.benchmark_specs("general10", tmp_path)
    message = str(err.value)
    for folder in GENERAL10_FOLDERS:
        assert f"{tmp_path / folder}/" in message
    assert message.count(B.COOP_DATASETS) >= 10
    assert "$CPT_DATA_ROOT" in message and "--data-root" in message


def fake(root: Path, name: str) -> None:
    """Every folder and file benchmark `name` expects, with empty split JSONs and empty lists."""
    for task in B.BENCHMARKS[name]:
        folder = root / task.folder
        (folder / task.images).mkdir(parents=True, exist_ok=True)
        if task.split and not task.make_split:
            write(folder / task.split, json.dumps(EMPTY_SPLIT))
        for need in task.needs:  # files have a suffix (variants.txt), folders do not (cars_train)
            if Path(need).suffix:
                write(folder / need, "")
            else:
                (folder / need).mkdir(parents=True, exist_ok=True)


def test_general10_complete_layout(tmp_path, monkeypatch):
    fake(tmp_path, "general10")
    write(tmp_path / "fgvc_aircraft" / "variants.txt", "707-320\nA300B4\n")
    write(tmp_path / "fgvc_aircraft" / "images_variant_test.txt", "0001 A300B4\n0002 707-320\n")
    monkeypatch.setenv("CPT_DATA_ROOT", str(tmp_path))
    specs = B.benchmark_specs("general10")
    assert {Path(s.path.partition("@")[0]).parent.name for s in specs} == GENERAL10_FOLDERS
    metrics = {s.name: s.metric for s in specs}
    mpca = {"caltech101", "fgvc_aircraft", "oxford_flowers", "oxford_pets"}
    assert metrics == {n: "mean_per_class_accuracy" if n in mpca else "accuracy" for n in metrics} and len(metrics) == 10
    paths = {s.name: s.path for s in specs}
    assert paths["oxford_flowers"] == f"{tmp_path}/oxford_flowers/split_zhou_OxfordFlowers.json@{tmp_path}/oxford_flowers/jpg"
    assert paths["stanford_cars"].endswith("split_zhou_StanfordCars.json@" + str(tmp_path / "stanford_cars"))
    fgvc = json.loads((tmp_path / "fgvc_aircraft" / "split_cpt_FGVCAircraft.json").read_text())
    assert fgvc == {"train": [], "val": [], "test": [["0001.jpg", 1, "A300B4"], ["0002.jpg", 0, "707-320"]]}
    assert all(s.title and s.classnames is None for s in specs)


def test_general10_partial_layout_names_missing_files(tmp_path):
    fake(tmp_path, "general10")
    (tmp_path / "dtd" / "split_zhou_DescribableTextures.json").unlink()
    (tmp_path / "fgvc_aircraft" / "variants.txt").unlink()
    with pytest.raises(CptError) as err:
        B.benchmark_specs("general10", tmp_path)
    missing = [line for line in str(err.value).splitlines() if line.startswith("  ")]
    assert [line.split()[0] for line in missing] == [
        str(tmp_path / "dtd" / "split_zhou_DescribableTextures.json"), str(tmp_path / "fgvc_aircraft" / "variants.txt"),
    ]


@pytest.mark.parametrize("name, folders", [
    ("plant6", ["fruit_vegetable", "kaggle_flower_recognition", "kaggle_mushroom", "kaggle_vegetable",
                "PlantSeedlingV1", "PlantVillage"]),
    ("fashion20", ["fashion20"]),
])
def test_plant6_fashion20_missing(tmp_path, name, folders):
    with pytest.raises(CptError) as err:
        B.benchmark_specs(name, tmp_path)
    message = str(err.value)
    assert all(f"{tmp_path / f}/" in message for f in folders)
    if name == "fashion20":
        assert "not public" in message and "will be released soon" in message


def test_plant6_complete_layout(tmp_path):
    fake(tmp_path, "plant6")
    specs = B.benchmark_specs("plant6", tmp_path)
    assert [s.name for s in specs] == [t.name for t in B.BENCHMARKS["plant6"]] and len(specs) == 6
    assert all(s.metric == "accuracy" and "@" not in s.path for s in specs)
    assert specs[-1].path == str(tmp_path / "PlantVillage" / "Plant_leave_diseases_dataset_without_augmentation")


def test_fashion20_tasks_from_task_info(tmp_path):
    fake(tmp_path, "fashion20")
    folder = tmp_path / "fashion20"
    write(folder / "task_info.csv", "id\ttask\tdesc\tlabels\n0\tsleeve length\tx\tshort, long\n"
                                    "1\tcollar\ty\t" + ", ".join(f"c{i}" for i in range(11)) + "\n")
    (folder / "images" / "0" / "0").mkdir(parents=True)
    (folder / "images" / "0" / "1").mkdir()
    for i in (0, 1, 10):
        (folder / "images" / "1" / str(i)).mkdir(parents=True)
    first, second = B.benchmark_specs("fashion20", tmp_path)
    assert first == TaskSpec("sleeve_length", str(folder / "images" / "0"), "sleeve length", ("short", "long"),
                             "mean_per_class_accuracy")
    assert second.classnames == ("c0", "c1", "c10")  # the folders' text order, as load_task lists them


def test_benchmark_tables_are_consistent():
    for tasks in B.BENCHMARKS.values():
        assert all(t.metric in METRICS and t.url.startswith("https://") for t in tasks)
        assert len({t.name for t in tasks}) == len({t.folder for t in tasks}) == len(tasks)


def test_unknown_benchmark_and_default_root(monkeypatch, tmp_path):
    with pytest.raises(CptError, match="general10, plant6, fashion20"):
        B.benchmark_specs("general11", tmp_path)
    monkeypatch.delenv("CPT_DATA_ROOT", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert B.data_root() == tmp_path / "data"
