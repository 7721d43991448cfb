"""The SoftCPT paper's benchmark suites as data: General-10, Plant-6 and Fashion-20.

Each task lives in its own folder under a data root ($CPT_DATA_ROOT, ~/data by default), named
as the CoOp and softcpt dataset code names it. General-10 reads CoOp's released split files
(split_zhou_*.json; softcpt instead re-splits into split_dk_*.json files it does not ship).
FGVCAircraft ships its official split as text lists, which cpt converts once into a CoOp-style
split_cpt_FGVCAircraft.json. Plant-6 and Fashion-20 tasks are folders of class folders that
load_task splits 50/20/30 per class by seed; where a dataset comes with train/ and test/
folders (fruit_vegetable, kaggle_vegetable) those are used as given and validation/ is not read,
whereas softcpt pools all three and re-splits. Titles are cpt's choice except for Fashion-20:
softcpt reads them from task_name.txt files it does not ship.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cpt.errors import CptError
from cpt.io import write_json
from cpt.data.taskfile import TaskSpec

COOP_DATASETS = "https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md"
SOFTCPT_PAPER = "https://arxiv.org/abs/2208.13474"  # Plant-6's download links are in the paper
SOFTCPT_README = "https://github.com/kding1225/softcpt#datasets"
ACC, MPCA = "accuracy", "mean_per_class_accuracy"  # softcpt's overall_acc and mean_acc
FGVC_LISTS = ("variants.txt", "images_variant_train.txt", "images_variant_val.txt", "images_variant_test.txt")


@dataclass(frozen=True)
class BenchmarkTask:
    name: str  # task key in CSVs
    folder: str  # under the data root
    split: str | None  # CoOp split JSON in folder; None: images is a folder of class folders
    images: str  # image root (or class-folder root), relative to folder
    title: str  # task name in SoftCPT's task prompt
    metric: str  # headline metric, one of cpt.data.taskfile.METRICS
    url: str  # where to get it
    needs: tuple[str, ...] = ()  # further files or folders in folder that must exist
    make_split: Callable[[Path], dict] | None = None  # writes `split` from folder's files when absent
    expand: Callable[[Path, BenchmarkTask], list[TaskSpec]] | None = None  # one entry -> the tasks a file lists


def _fgvc_split(folder: Path) -> dict:
    """FGVCAircraft's official variant split (CoOp reads the same lists) as a CoOp split JSON."""
    lines = (folder / FGVC_LISTS[0]).read_text(encoding="utf-8").splitlines()
    classes = [line.strip() for line in lines if line.strip()]
    label = {c: i for i, c in enumerate(classes)}
    split = {}
    for name, listing in zip(("train", "val", "test"), FGVC_LISTS[1:]):
        split[name] = []
        for line in (folder / listing).read_text(encoding="utf-8").splitlines():
            image, _, variant = line.strip().partition(" ")
            if image:
                if variant not in label:
                    raise CptError(
                        f"{folder / listing} lists {image} as variant {variant!r}, which {FGVC_LISTS[0]} lacks. "
                        f"Re-extract fgvc-aircraft-2013b/data into {folder}."
                    )
                split[name].append([f"{image}.jpg", label[variant], variant])
    return split


def _fashion20_tasks(folder: Path, entry: BenchmarkTask) -> list[TaskSpec]:
    """Fashion-20's tasks from task_info.csv (tab-separated, one header line; columns 2 and 4 are the task
    name and its comma-separated class names); task i's images are in images/<i>/<class index>/."""
    info = folder / entry.needs[0]
    specs = []
    rows = [line for line in info.read_text(encoding="utf-8").splitlines()[1:] if line.strip()]
    for i, line in enumerate(rows):
        cells = line.split("\t")
        if len(cells) != 4:
            raise CptError(
                f"{info} line {i + 2} has {len(cells)} tab-separated columns, not 4 (id, task name, description, "
                "class names). Restore the file as released with Fashion-20."
            )
        title, labels = cells[1].strip(), [c.strip() for c in cells[3].split(",")]
        images = folder / entry.images / str(i)
        if not images.is_dir():
            raise CptError(f"Fashion-20 task {i} ({title}) has no image folder {images}. Restore it from the release.")
        folders = sorted(p.name for p in images.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not all(f.isdigit() and int(f) < len(labels) for f in folders):
            raise CptError(
                f"{images} should hold class folders 0..{len(labels) - 1} (the class names in {info}), "
                f"but holds {', '.join(folders)}. Restore it from the release."
            )
        classnames = tuple(labels[int(f)] for f in folders)  # load_task's class order: folder names as text
        specs.append(TaskSpec(title.replace(" ", "_"), str(images), title, classnames, entry.metric))
    return specs


def _coop(name: str, folder: str, split: str, images: str, title: str, metric: str, anchor: str, **kw) -> BenchmarkTask:
    """A CoOp dataset: its split_zhou_<split>.json and its DATASETS.md section."""
    url = f"{COOP_DATASETS}#{anchor}"
    return BenchmarkTask(name, folder, f"split_zhou_{split}.json", images, title, metric, url, **kw)


def _plant(name: str, folder: str, images: str, title: str, **kw) -> BenchmarkTask:
    return BenchmarkTask(name, folder, None, images, title, ACC, SOFTCPT_PAPER, **kw)


BENCHMARKS: dict[str, list[BenchmarkTask]] = {
    # softcpt's General10.data_sources order; CoOp's folders, split files and image roots
    "general10": [
        _coop("caltech101", "caltech-101", "Caltech101", "101_ObjectCategories", "object recognition", MPCA,
              "caltech101"),
        _coop("dtd", "dtd", "DescribableTextures", "images", "texture recognition", ACC, "dtd"),
        _coop("eurosat", "eurosat", "EuroSAT", "2750", "satellite land use recognition", ACC, "eurosat"),
        BenchmarkTask("fgvc_aircraft", "fgvc_aircraft", "split_cpt_FGVCAircraft.json", "images",
                      "aircraft model recognition", MPCA, f"{COOP_DATASETS}#fgvcaircraft",
                      needs=FGVC_LISTS, make_split=_fgvc_split),
        _coop("food101", "food-101", "Food101", "images", "food recognition", ACC, "food101"),
        _coop("oxford_flowers", "oxford_flowers", "OxfordFlowers", "jpg", "flower recognition", MPCA, "flowers102"),
        _coop("oxford_pets", "oxford_pets", "OxfordPets", "images", "pet breed recognition", MPCA, "oxfordpets"),
        # the split's paths start with cars_train/ or cars_test/, so the image root is the folder itself
        _coop("stanford_cars", "stanford_cars", "StanfordCars", ".", "car model recognition", ACC, "stanfordcars",
              needs=("cars_train", "cars_test")),
        _coop("sun397", "sun397", "SUN397", "SUN397", "scene recognition", ACC, "sun397"),
        _coop("ucf101", "ucf101", "UCF101", "UCF-101-midframes", "human action recognition", ACC, "ucf101"),
    ],
    # softcpt's Plant6.data_sources order and dataset_dir/image_dir names; all overall accuracy
    "plant6": [
        _plant("fruit_vegetable", "fruit_vegetable", "images", "fruit and vegetable recognition",
               needs=("images/train", "images/test")),
        _plant("kaggle_flower", "kaggle_flower_recognition", "flowers", "flower recognition"),
        _plant("kaggle_mushroom", "kaggle_mushroom", "Mushrooms", "mushroom recognition"),
        _plant("kaggle_vegetable", "kaggle_vegetable", "images", "vegetable recognition",
               needs=("images/train", "images/test")),
        _plant("plant_seedling", "PlantSeedlingV1", "Nonsegmented", "plant seedling recognition"),
        _plant("plant_village", "PlantVillage", "Plant_leave_diseases_dataset_without_augmentation",
               "plant leaf disease recognition"),
    ],
    # 20 tasks whose names and classes are listed in task_info.csv; all mean per-class accuracy
    "fashion20": [
        # one entry for the suite: names, titles and class names come from task_info.csv
        BenchmarkTask("fashion20", "fashion20", None, "images", "", MPCA, SOFTCPT_README,
                      needs=("task_info.csv",), expand=_fashion20_tasks),
    ],
}

DESCRIPTIONS = {
    "general10": "SoftCPT's General-10: CoOp's datasets minus ImageNet (1,191 classes), from --data-root",
    "plant6": "SoftCPT's Plant-6: six plant recognition datasets, from --data-root",
    "fashion20": "SoftCPT's Fashion-20 (not public): 20 fashion tasks listed in task_info.csv, from --data-root",
}

NOTES = {
    "general10": f"Download each dataset as {COOP_DATASETS} describes (folder names, split_zhou_*.json files, "
                 "image folders). FGVCAircraft has no split JSON: keep its extracted data/ folder, renamed "
                 "fgvc_aircraft, and cpt writes split_cpt_FGVCAircraft.json from its txt lists on first use.",
    "plant6": "The six Plant-6 datasets are public; softcpt's README points to the download links in the "
              f"SoftCPT paper ({SOFTCPT_PAPER}). Unpack each into the folder named above.",
    "fashion20": "Fashion-20 is not public: softcpt's README says it \"will be released soon\", so this suite can "
                 "only run on a copy obtained from its authors.",
}


def data_root() -> Path:
    """Where the benchmark datasets live: $CPT_DATA_ROOT, else ~/data."""
    return Path(os.environ.get("CPT_DATA_ROOT") or Path.home() / "data").expanduser()


def _missing(root: Path, task: BenchmarkTask) -> list[str]:
    """The expected paths of `task` that do not exist (just its folder when that is absent)."""
    folder = root / task.folder
    if not folder.is_dir():
        return [f"{folder}/"]
    expected = [*([task.split] if task.split and not task.make_split else []), task.images, *task.needs]
    return [str(folder / p) for p in expected if not (folder / p).exists()]


def benchmark_specs(name: str, root: Path | None = None) -> list[TaskSpec]:
    """The task specs of benchmark `name` under `root` (default: data_root()); one error lists everything missing."""
    if name not in BENCHMARKS:
        raise CptError(f"There is no benchmark {name!r}. The benchmarks are {', '.join(BENCHMARKS)}.")
    root = Path(root or data_root()).expanduser()
    missing = [f"  {path}  ({task.name}: {task.url})" for task in BENCHMARKS[name] for path in _missing(root, task)]
    if missing:
        raise CptError(
            f"The {name} benchmark is incomplete under {root}; missing:\n" + "\n".join(missing) + f"\n{NOTES[name]} "
            "If the data is elsewhere, point cpt at the folder that holds these datasets with $CPT_DATA_ROOT "
            "or --data-root."
        )
    specs = []
    for task in BENCHMARKS[name]:
        folder = root / task.folder
        if task.expand:
            specs += task.expand(folder, task)
            continue
        path = str(folder / task.images)
        if task.split:
            split = folder / task.split
            if not split.exists() and task.make_split:
                _write_split(split, task.make_split(folder))
            path = f"{split}@{path}"
        specs.append(TaskSpec(task.name, path, task.title, None, task.metric))
    return specs


def _write_split(path: Path, split: dict) -> None:
    try:
        write_json(path, split)
    except OSError as exc:
        raise CptError(
            f"cpt could not write {path} ({exc}), the split file it builds from the dataset's own lists. "
            "Make the folder writable once, or copy the dataset to a writable data root."
        ) from exc
