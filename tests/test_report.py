"""The Markdown report and its plots."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cpt.metrics import TaskPredictions, metrics_frame, per_class_frame
from cpt.report import write_single_label_report


def task(name, classnames, y_true, y_pred):
    logits = np.zeros((len(y_pred), len(classnames)))
    logits[np.arange(len(y_pred)), y_pred] = 1.0
    return TaskPredictions(name, classnames, np.array(y_true), logits, [f"img{i}.jpg" for i in range(len(y_true))])


@pytest.fixture
def tasks():
    # cats: tabby 4/4, siamese 1/2, sphynx 1/3 -> accuracy 6/9
    cats = task("pets/cats", ["tabby", "siamese", "sphynx"], [0] * 4 + [1] * 2 + [2] * 3, [0] * 4 + [1, 0] + [2, 0, 0])
    # cars: 45 classes (no counts, no names on the confusion axes), 2 images each; car07 0/2, car00-car05 1/2
    y = np.repeat(np.arange(45), 2)
    pred = y.copy()
    pred[[0, 2, 4, 6, 8, 10]] += 1
    pred[[14, 15]] = 0
    cars = task("cars", [f"car{i:02d}" for i in range(45)], y, pred)
    return [cats, cars]


def test_report_has_headline_numbers_details_and_worst_classes(tmp_path, tasks):
    metrics = metrics_frame(tasks, "test")
    per_class = pd.concat([per_class_frame(t) for t in tasks], ignore_index=True)
    report = write_single_label_report(tmp_path, "My run", tasks, metrics, per_class, {"method": "coop", "shots": "16"})
    assert report == tmp_path / "report.md"
    text = report.read_text()
    assert text.startswith("# My run\n")
    assert "| method | coop |" in text and "| shots | 16 |" in text
    assert "| task | accuracy | mean per-class acc. | macro-F1 |" in text
    value = metrics.set_index(["task", "metric"])["value"]
    for name in ("pets/cats", "cars", "mean"):
        row = " | ".join(f"{value[(name, m)]:.2f}" for m in ("accuracy", "mean_per_class_accuracy", "macro_f1"))
        assert f"| {name} | {row} |" in text
    assert "| pets/cats | 66.67 | 61.11 |" in text  # hand-counted: 6/9, (100 + 50 + 33.33) / 3

    sections = dict(part.split("\n", 1) for part in text.split("\n## ")[1:])
    assert {"pets/cats", "cars"} <= set(sections)
    assert "| sphynx | 33.33 | 3 |" in sections["pets/cats"]
    cars = sections["cars"]
    worst = [line.split(" | ")[0].strip("| ") for line in cars.splitlines() if line.startswith("| car")]
    assert worst == ["car07", "car00", "car01", "car02", "car03"]


def test_report_plots_are_valid_pngs_with_safe_names(tmp_path, tasks):
    metrics = metrics_frame(tasks, "test")
    per_class = pd.concat([per_class_frame(t) for t in tasks], ignore_index=True)
    text = write_single_label_report(tmp_path, "r", tasks, metrics, per_class, {}).read_text()
    pngs = [f"{kind}_{stem}.png" for stem in ("pets_cats", "cars") for kind in ("confusion", "per_class")]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(pngs + ["report.md"])  # no temp files left
    for name in pngs:
        assert f"]({name})" in text
        with Image.open(tmp_path / name) as im:
            im.verify()
            assert im.format == "PNG" and min(im.size) > 100
