"""The Markdown report and its plots."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import average_precision_score, precision_recall_curve

from cpt.eval.metrics import (
    TaskPredictions,
    average_precisions,
    metrics_frame,
    multilabel_frames,
    per_class_frame,
)
from cpt.eval.report import pr_curves, write_multilabel_report, write_single_label_report


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


def multilabel_case():
    """Three classes over five images; -1 marks unknown entries, class c has no known positive."""
    scores = np.array([[0.9, 0.1, 0.3], [0.8, 0.7, 0.2], [0.2, 0.6, 0.9], [0.4, 0.2, 0.1], [0.1, 0.9, 0.5]])
    targets = np.array([[1, 0, 0], [-1, 1, -1], [0, -1, 0], [1, 0, 0], [0, 1, -1]])
    return ["a", "b", "c"], scores, targets


def test_pr_curves_are_sklearns_over_the_known_entries():
    names, scores, targets = multilabel_case()
    curves = pr_curves(names, scores, targets)
    assert [c.name for c in curves] == ["a", "b"]  # c has no known positive
    for curve, c in zip(curves, (0, 1)):
        known = targets[:, c] != -1
        precision, recall, _ = precision_recall_curve(targets[known, c], scores[known, c])
        np.testing.assert_array_equal(curve.precision, precision)
        np.testing.assert_array_equal(curve.recall, recall)
        assert curve.ap == pytest.approx(100 * average_precision_score(targets[known, c], scores[known, c]))


def test_pr_curves_keep_the_three_best_and_three_worst_classes():
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 2, (60, 8))
    noise = np.linspace(0.1, 3.0, 8)  # class 0 the cleanest, class 7 the noisiest
    scores = targets + rng.normal(0, 1, targets.shape) * noise
    curves = pr_curves([f"k{i}" for i in range(8)], scores, targets)
    aps = [c.ap for c in curves]
    assert len(curves) == 6 and aps == sorted(aps, reverse=True)
    assert {c.name for c in curves} == {f"k{i}" for i in np.argsort(-average_precisions(scores, targets))[[0, 1, 2, 5, 6, 7]]}


def test_multilabel_report_shows_pr_curves(tmp_path):
    names, scores, targets = multilabel_case()
    metrics, per_class = multilabel_frames("pets/ml", names, scores, targets, "test")
    text = write_multilabel_report(tmp_path, "ml", metrics, per_class, {"pets/ml": (scores, targets)}, {}).read_text()
    for name in ("ap_pets_ml.png", "pr_pets_ml.png"):
        assert f"]({name})" in text
        with Image.open(tmp_path / name) as im:
            im.verify()
            assert im.format == "PNG"


def test_multilabel_report_names_both_map_conventions_and_what_separates_them(tmp_path):
    names, scores, targets = multilabel_case()
    metrics, per_class = multilabel_frames("pets/ml", names, scores, targets, "test")
    text = write_multilabel_report(tmp_path, "ml", metrics, per_class, {"pets/ml": (scores, targets)}, {}).read_text()
    # by hand: cpt's mAP over a, b (c has no known positive); a: AP 1; b: known rows 0,1,3,4 -> ranks 1 and 2 of
    # positives at scores .9, .7 above .2, .1 -> AP 1. Papers': unknowns negative; b's ranking .9(+) .7(+) ... -> 1;
    # a ranks .9(+) .8(-1 -> neg) .4(+) -> (1 + 2/3) / 2; c has no positive -> 0
    paper = 100 * (5 / 6 + 1 + 0) / 3
    assert "mAP 100.00 is cpt's" in text
    assert f"mAP_paper {paper:.2f} is the papers'" in text
    assert "unknown entries (4) as negatives and the classes without a positive (1) as AP 0" in text
