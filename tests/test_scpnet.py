"""SCPNet's parts against independent computations, its state, and its partial-label protocol."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cpt.core.backbone import load_backbone
from cpt.methods.scpnet.graph import LabelGraph
from cpt.methods.losses import splc_loss
from cpt.methods import build_method
from cpt.methods.scpnet import class_thresholds, pseudo_labels, self_training_loss
from cpt.data.partial import mask_frame, partial_targets, read_mask, single_positive

CLASSES = ["cat", "dog", "sea lion", "boat"]


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_class_thresholds_start_uniform_then_follow_the_selected_share():
    selected = torch.zeros(5, 4, dtype=torch.uint8)
    assert torch.allclose(class_thresholds(selected, 2, 0.95), torch.full((4,), 0.95 * 0.25 / 1.75))
    selected[:3, 0] = 1  # class 0 picked 3 times, class 1 once: max(3, 2 * 5 - 4) = 6 is the norm
    selected[0, 1] = 1
    share = np.maximum(np.array([3, 1, 0, 0]) / 6, 0.25)
    assert np.allclose(class_thresholds(selected, 2, 0.95).numpy(), 0.95 * share / (2 - share))


def test_pseudo_labels_take_confident_top_k_plus_observed_positives():
    probs = torch.tensor([[0.9, 0.2, 0.8, 0.1], [0.3, 0.35, 0.2, 0.1]])
    thresholds = torch.tensor([0.5, 0.5, 0.85, 0.5])
    observed = torch.tensor([[0, 0, 0, 1], [0, 0, 0, 0]], dtype=torch.bool)
    labels, confident = pseudo_labels(probs, thresholds, 2, observed)
    # row 0: top-2 = classes 0, 2; class 2 is under its threshold; class 3 observed
    assert labels.tolist() == [[1, 0, 0, 1], [0, 0, 0, 0]]
    assert confident.tolist() == [True, False]


def test_self_training_loss_matches_a_hand_computation():
    rng = np.random.default_rng(0)
    strong = rng.normal(size=(3, 4))
    weak = _sigmoid(rng.normal(size=(3, 4)))
    labels = (rng.random((3, 4)) > 0.5).astype(float)
    confident = np.array([True, False, True])
    relation = rng.random((4, 4))
    relation /= relation.sum(1, keepdims=True)
    soft = weak @ relation.T

    def expected(strong):  # the reference clamps the probabilities at 1e-8 before the log
        p = _sigmoid(strong.astype(np.float32)).astype(np.float32)
        bce = lambda t: -(t * np.log(np.maximum(p, 1e-8)) + (1 - t) * np.log(np.maximum(1 - p, 1e-8)))  # noqa: E731
        return ((bce(labels) + 0.5 * bce(soft)) * confident[:, None]).sum()

    for scale in (1.0, 100.0):  # 100: CLIP's logit scale, where the sigmoid saturates in float32
        logits = (scale * np.tanh(strong)).astype(np.float32)
        got = self_training_loss(torch.tensor(logits), *(torch.tensor(a, dtype=torch.float32) for a in
                                                        (weak, labels)), torch.tensor(confident),
                                 torch.tensor(relation, dtype=torch.float32), kl_lambda=0.5)
        assert got.item() == pytest.approx(expected(logits), rel=1e-4)


def test_splc_matches_a_hand_computation_and_corrects_confident_negatives():
    logits = np.array([[2.0, 1.0, -1.0], [0.5, 3.0, -2.0]])
    targets = np.array([[1, -1, -1], [-1, -1, 1]])

    def expected(correct):
        z = np.where(targets == 1, logits - 1.0, logits)
        p = _sigmoid(z)
        y = (targets == 1) | (correct & (p > 0.6))
        w = np.where(y, 1 - p, p) ** 2
        return (w * -np.where(y, np.log(p), np.log(1 - p))).sum()

    for correct in (False, True):
        got = splc_loss(torch.tensor(logits), torch.tensor(targets), correct=correct)
        assert got.item() == pytest.approx(expected(correct), rel=1e-6)
    assert splc_loss(torch.tensor(logits), torch.tensor(targets), True) < splc_loss(torch.tensor(logits), torch.tensor(targets), False)


def test_label_graph_is_three_mixing_layers_with_a_residual():
    torch.manual_seed(0)
    adjacency = torch.softmax(torch.randn(4, 4), dim=1)
    graph = LabelGraph(6, adjacency)
    x = torch.randn(4, 6)
    w1, w2, w3 = (w.detach() for w in graph.weights)
    assert [tuple(w.shape) for w in (w1, w2, w3)] == [(6, 12), (12, 12), (12, 6)]
    leaky = torch.nn.functional.leaky_relu
    h = adjacency @ leaky(adjacency @ leaky(adjacency @ x @ w1, 0.2) @ w2, 0.2) @ w3
    assert torch.allclose(graph(x), x + h, atol=1e-6)
    assert "adjacency" not in graph.state_dict()  # rebuilt from the prior, not stored


def test_single_positive_keeps_one_true_positive_per_image():
    rng = np.random.default_rng(3)
    targets = (rng.random((200, 6)) < 0.3).astype(np.int8)
    kept = single_positive(targets, seed=1)
    has_positive = targets.sum(1) > 0
    assert ((kept == 1).sum(1) == has_positive).all()
    assert (targets[kept == 1] == 1).all() and set(np.unique(kept)) <= {1, -1}
    assert np.array_equal(kept, single_positive(targets, seed=1))
    assert not np.array_equal(kept, single_positive(targets, seed=2))


def test_saved_mask_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    targets = (rng.random((30, 4)) < 0.4).astype(np.int8)
    paths = [f"/data/img/{i}.png" for i in range(30)]
    masked = partial_targets(targets, 0.3, seed=5)
    mask_frame(paths, CLASSES, masked != -1).to_csv(tmp_path / "mask.csv", index=False)
    moved = [p.replace("/data/", "/elsewhere/") for p in paths[::-1]]  # other root, other order: matched by name
    known = read_mask(tmp_path / "mask.csv", moved, CLASSES)
    assert np.array_equal(partial_targets(targets[::-1], 1.0, 0, known=known), masked[::-1])


def test_scpnet_state_round_trip_and_ablations(tiny_clip):
    backbone = load_backbone(str(tiny_clip), "cpu", "fp32")
    full = build_method("scpnet", backbone, [CLASSES], {"seed": 0})
    assert full.cfg.n_ctx == 4 and full.cfg.ctx_init == "a photo of a"
    full.selected[0] = torch.ones(7, 4, dtype=torch.uint8)
    again = build_method("scpnet", backbone, [CLASSES], {"seed": 1})
    again.load_state(full.state())
    assert torch.equal(again.selected[0], full.selected[0])
    assert torch.allclose(again.classifiers()[0].weight, full.classifiers()[0].weight)
    assert full.classifiers()[0].scale == 10.0
    # without the graph, the class weights are the normalised prompt features (CoOp's with the same context)
    plain = build_method("scpnet", backbone, [CLASSES], {"seed": 0, "no_gcn": True})
    coop = build_method("coop", backbone, [CLASSES], {"seed": 0, "ctx_init": "a photo of a"})
    assert torch.allclose(plain.classifiers()[0].weight, coop.classifiers()[0].weight, atol=1e-6)
    no_prior = build_method("scpnet", backbone, [CLASSES], {"seed": 0, "no_prior": True})
    assert torch.equal(no_prior.relations[0], torch.eye(4))
