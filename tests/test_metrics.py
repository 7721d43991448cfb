"""Single-label metrics against hand-counted examples."""

import numpy as np
import pytest

from cpt.eval.metrics import (
    TaskPredictions,
    confusion,
    metrics_frame,
    per_class_frame,
    predictions_frame,
    single_label_metrics,
)


def preds(y_true, y_pred, n_classes=3, task="t"):
    """Predictions whose argmax is `y_pred` (one-hot logits)."""
    logits = np.full((len(y_pred), n_classes), -1.0)
    logits[np.arange(len(y_pred)), y_pred] = 1.0
    paths = [f"{i}.png" for i in range(len(y_true))]
    return TaskPredictions(task, [f"c{i}" for i in range(n_classes)], np.array(y_true), logits, paths)


# Class 0: 3 images, 2 right, 1 taken for class 2; class 1: 2 images, 1 right, 1 taken for class 0;
# class 2: no image but predicted once; class 3: neither present nor predicted.
HAND = dict(y_true=[0, 0, 0, 1, 1], y_pred=[0, 0, 2, 1, 0], n_classes=4)


def test_hand_counted_confusion_matrix():
    assert confusion(preds(**HAND)).tolist() == [[2, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]


def test_hand_counted_headline_metrics():
    m = single_label_metrics(preds(**HAND))
    assert m["accuracy"] == pytest.approx(60.0)
    assert m["mean_per_class_accuracy"] == pytest.approx(100 * (2 / 3 + 1 / 2) / 2)  # classes 2, 3 have no support
    # F1 = 2PR / (P + R): c0 P=2/3 R=2/3 -> 2/3; c1 P=1 R=1/2 -> 2/3; c2 predicted, never true -> 0;
    # c3 neither true nor predicted -> left out, so the mean is over 3 classes, not 4.
    assert m["macro_f1"] == pytest.approx(100 * (2 / 3 + 2 / 3 + 0) / 3)
    assert m["n_images"] == 5
    assert "top5_accuracy" not in m


def test_hand_counted_per_class_table():
    table = per_class_frame(preds(**HAND, task="pets"))
    assert table.columns.tolist() == ["task", "class", "accuracy", "precision", "recall", "f1", "support"]
    assert table["class"].tolist() == ["c0", "c1", "c2", "c3"] and set(table.task) == {"pets"}
    assert table["support"].tolist() == [3, 2, 0, 0]
    np.testing.assert_allclose(table["accuracy"], [200 / 3, 50, np.nan, np.nan])
    np.testing.assert_allclose(table["recall"], table["accuracy"])
    np.testing.assert_allclose(table["precision"], [200 / 3, 100, 0, np.nan])
    np.testing.assert_allclose(table["f1"], [200 / 3, 200 / 3, 0, np.nan])
    # the NaNs are exactly the classes the headline means skip
    m = single_label_metrics(preds(**HAND))
    assert table["f1"].mean() == pytest.approx(m["macro_f1"])
    assert table["accuracy"].mean() == pytest.approx(m["mean_per_class_accuracy"])


def test_mean_per_class_accuracy_differs_from_accuracy_on_imbalanced_classes():
    # 9 of class 0 all right, 1 of class 1 wrong: accuracy 90 %, per-class mean (100 + 0) / 2
    m = single_label_metrics(preds([0] * 9 + [1], [0] * 10, n_classes=2))
    assert m["accuracy"] == pytest.approx(90.0)
    assert m["mean_per_class_accuracy"] == pytest.approx(50.0)


def test_ties_go_to_the_first_class():
    logits = np.array([[0.5, 2.0, 2.0], [1.0, 1.0, 1.0]])
    p = TaskPredictions("t", ["a", "b", "c"], np.array([2, 0]), logits, ["x", "y"])
    assert p.y_pred.tolist() == [1, 0]
    assert single_label_metrics(p)["accuracy"] == pytest.approx(50.0)
    assert confusion(p).tolist() == [[1, 0, 0], [0, 0, 0], [0, 1, 0]]


def test_top5_only_above_five_classes_and_hand_ranked():
    assert "top5_accuracy" not in single_label_metrics(preds([0, 4], [0, 4], n_classes=5))
    # image 0: true class 5 is ranked 2nd -> in the top 5; image 1: true class 0 is ranked last -> not.
    # Only 2 of the 7 classes occur in y_true, which top-k needs `labels` for.
    logits = np.array([[0.0, 1, 2, 3, 4, 5, 6], [0.0, 1, 2, 3, 4, 5, 6]])
    p = TaskPredictions("t", [str(i) for i in range(7)], np.array([5, 0]), logits, ["a", "b"])
    m = single_label_metrics(p)
    assert m["accuracy"] == pytest.approx(0.0)
    assert m["top5_accuracy"] == pytest.approx(50.0)


def test_metrics_frame_single_task_has_no_mean_rows():
    frame = metrics_frame([preds(**HAND)], "val")
    assert list(frame.columns) == ["task", "split", "metric", "value"]
    assert set(frame.task) == {"t"} and set(frame.split) == {"val"}
    assert set(frame.metric) == {"accuracy", "mean_per_class_accuracy", "macro_f1", "n_images"}
    assert frame.duplicated(["task", "metric"]).sum() == 0


def test_metrics_frame_adds_an_unweighted_mean_over_tasks():
    a = preds([0, 1], [0, 1], task="a")  # 2 images: every metric 100 %
    b = preds(**HAND, task="b")  # 5 images
    frame = metrics_frame([a, b], "test")
    value = frame.set_index(["task", "metric"])["value"]
    assert value[("mean", "accuracy")] == pytest.approx((100 + 60) / 2)  # not the pooled 5 / 7
    hand_f1 = 100 * (4 / 3) / 3
    assert value[("mean", "macro_f1")] == pytest.approx((100 + hand_f1) / 2)
    assert value[("mean", "mean_per_class_accuracy")] == pytest.approx((100 + 100 * (2 / 3 + 1 / 2) / 2) / 2)
    assert value[("mean", "n_images")] == 7  # summed, not averaged
    assert frame.task.tolist()[-4:] == ["mean"] * 4 and len(frame) == 12
    assert set(frame.split) == {"test"}


def test_predictions_frame_scores_are_softmax_probabilities():
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 3.0, 3.0]])
    p = TaskPredictions("t", ["x", "y", "z"], np.array([0, 2]), logits, ["p.jpg", "q.jpg"])
    frame = predictions_frame(p)
    assert frame.columns.tolist() == ["task", "path", "label", "prediction", "correct", "score"]
    assert frame["path"].tolist() == ["p.jpg", "q.jpg"]
    assert frame["label"].tolist() == ["x", "z"]
    assert frame["prediction"].tolist() == ["x", "y"] and frame["correct"].tolist() == [True, False]
    e2, e3 = np.exp(2), np.exp(3)
    assert frame["score"].tolist() == pytest.approx([e2 / (e2 + 2), e3 / (1 + 2 * e3)])


def test_multilabel_map_excludes_unknowns_and_classes_without_positives():
    from sklearn.metrics import average_precision_score

    from cpt.eval.metrics import average_precisions, multilabel_frames

    targets = np.array([[1, 0, -1], [0, 1, 0], [1, -1, 0], [0, 0, 0]])
    scores = np.array([[0.9, 0.1, 5.0], [0.2, 0.8, 0.3], [0.5, 0.9, 0.1], [0.5, 0.3, 0.2]])  # tie in class 0
    ap = average_precisions(scores, targets)
    assert ap[0] == pytest.approx(average_precision_score([1, 0, 1, 0], [0.9, 0.2, 0.5, 0.5]))
    # by hand: at 0.9 precision 1 for half the recall; at the tied 0.5 both enter at once, precision 2/3
    assert ap[0] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert ap[1] == pytest.approx(1.0)  # the one positive ranked first
    assert ap[1] == pytest.approx(average_precision_score([0, 1, 0], [0.1, 0.8, 0.3]))  # the unknown row left out
    assert np.isnan(ap[2])  # no known positive: excluded
    metrics, per_class = multilabel_frames("t", ["a", "b", "c"], scores, targets, "test")
    value = metrics.set_index("metric")["value"]
    assert value["mAP"] == pytest.approx(100 * (ap[0] + ap[1]) / 2) and value["n_classes_evaluated"] == 2
    assert per_class["positives"].tolist() == [2, 1, 0] and per_class["support"].tolist() == [4, 3, 3]
    # the papers' convention on the same scores, by hand: the unknown (2, 1) counts as a negative
    # and ranks first in b (0.9), so b's positive comes second: AP 1/2; c has no positive: AP 0; a's
    # tied rows 2 and 3 are ranked by reversing numpy's argsort (row 3 first): precisions 1/1, 2/3
    order_a = np.argsort(scores[:, 0])[::-1]
    assert order_a.tolist() == [0, 3, 2, 1]
    assert value["mAP_paper"] == pytest.approx(100 * ((1 + 2 / 3) / 2 + 1 / 2 + 0) / 3)
    assert value["n_unknown_entries"] == 2


def test_multilabel_precision_recall_by_hand():
    from cpt.eval.metrics import precision_recall_f1

    targets = np.array([[1, 0, 1], [0, 1, -1], [1, 1, 0]])
    predicted = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 0]])  # the (1, 2) prediction is on an unknown entry
    m = precision_recall_f1(predicted, targets)
    # per class: a TP 2 / pred 2 / pos 2; b TP 1 / pred 2 / pos 2; c TP 0 / pred 0 / pos 1
    assert m["CP"] == pytest.approx(100 * (1 + 0.5 + 0) / 3) and m["CR"] == pytest.approx(100 * (1 + 0.5 + 0) / 3)
    assert m["OP"] == pytest.approx(100 * 3 / 4) and m["OR"] == pytest.approx(100 * 3 / 5)
    assert m["OF1"] == pytest.approx(2 * 75 * 60 / 135)
