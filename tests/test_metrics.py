"""Single-label metrics against hand-counted examples."""

import numpy as np
import pandas as pd
import pytest

from cpt.metrics import (
    TaskPredictions,
    confusion,
    metrics_frame,
    per_class_frame,
    predictions_frame,
    single_label_metrics,
)


def preds(y_true, y_pred, n_classes=3, task="t"):
    logits = np.full((len(y_pred), n_classes), -1.0)
    logits[np.arange(len(y_pred)), y_pred] = 1.0
    return TaskPredictions(task, [f"c{i}" for i in range(n_classes)], np.array(y_true), logits, [f"{i}.png" for i in range(len(y_true))])


def test_hand_counted_case_with_an_unsupported_class():
    # class 0: 3 images, 2 right; class 1: 1 image, right; class 2: no image, predicted once
    p = preds([0, 0, 0, 1], [0, 0, 2, 1])
    m = single_label_metrics(p)
    assert m["accuracy"] == pytest.approx(75.0)
    assert m["mean_per_class_accuracy"] == pytest.approx(100 * (2 / 3 + 1) / 2)  # class 2 has no support
    # F1: c0 = 2*1*(2/3)/(1+2/3) = 0.8, c1 = 1, c2 = 0 (predicted, never true) -> mean over the 3 labels seen
    assert m["macro_f1"] == pytest.approx(100 * (0.8 + 1 + 0) / 3)
    assert m["n_images"] == 4 and "top5_accuracy" not in m
    assert confusion(p).tolist() == [[2, 0, 1], [0, 1, 0], [0, 0, 0]]
    table = per_class_frame(p)
    assert table["support"].tolist() == [3, 1, 0]
    assert table["accuracy"].iloc[:2].tolist() == pytest.approx([200 / 3, 100]) and np.isnan(table["accuracy"].iloc[2])


def test_ties_go_to_the_first_class_and_top5():
    logits = np.zeros((2, 7))
    logits[0, 0] = 1.0
    logits[1, [3, 5]] = 2.0  # tie between 3 and 5
    p = TaskPredictions("t", [str(i) for i in range(7)], np.array([0, 5]), logits, ["a", "b"])
    assert p.y_pred.tolist() == [0, 3]
    m = single_label_metrics(p)
    assert m["accuracy"] == 50.0 and m["top5_accuracy"] == 100.0


def test_metrics_frame_adds_an_unweighted_mean_over_tasks():
    a = preds([0, 1], [0, 1], task="a")  # 100 %
    b = preds([0, 1, 2, 2], [1, 1, 2, 0], task="b")  # 50 %
    frame = metrics_frame([a, b], "test")
    assert list(frame.columns) == ["task", "split", "metric", "value"]
    value = frame.set_index(["task", "metric"])["value"]
    assert value[("mean", "accuracy")] == pytest.approx(75.0)  # not the pooled 66.7
    assert value[("mean", "n_images")] == 6
    assert set(frame.split) == {"test"}


def test_predictions_frame_scores_are_softmax_probabilities():
    p = TaskPredictions("t", ["x", "y"], np.array([0, 1]), np.array([[2.0, 0.0], [0.0, 0.0]]), ["p", "q"])
    frame = predictions_frame(p)
    assert frame["prediction"].tolist() == ["x", "x"] and frame["correct"].tolist() == [True, False]
    assert frame["score"].tolist() == pytest.approx([np.exp(2) / (np.exp(2) + 1), 0.5])
    assert isinstance(frame, pd.DataFrame)
