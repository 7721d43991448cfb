"""SCPNet's label prior: symmetric similarity, sparsified and re-weighted rows that sum as configured."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from cpt.core.backbone import load_backbone
from cpt.methods.scpnet.prior import PriorConfig, agreement, build_prior, cooccurrence, label_prior
from tests.conftest import cli

NAMES = ["cat", "dog", "kitten", "car", "truck", "bus"]


def test_prior_matrices(tiny_clip):
    prior = label_prior(load_backbone(str(tiny_clip), "cpu"), NAMES, PriorConfig(topk=3, reweight_p=0.3))
    s = prior.similarity
    torch.testing.assert_close(s, s.T)  # symmetric before sparsification
    torch.testing.assert_close(s.diagonal(), torch.ones(6))
    a = prior.adjacency
    torch.testing.assert_close(a.sum(dim=1), torch.ones(6))  # rows: p to the neighbours, 1 - p to itself
    torch.testing.assert_close(a.diagonal(), torch.full((6,), 0.7))
    assert ((a > 0).sum(dim=1) == 3).all()  # top-3 per row, self included
    torch.testing.assert_close(prior.relation.sum(dim=1), torch.ones(6))
    assert ((prior.relation > 0) == (a > 0)).all()


def test_build_prior_by_hand():
    s = torch.tensor([[1.0, 0.8, 0.2], [0.8, 1.0, 0.6], [0.2, 0.6, 1.0]])
    adjacency, relation = build_prior(s, PriorConfig(topk=2, reweight_p=0.2, temperature=1.0))
    expected = torch.tensor([[0.8, 0.2, 0.0], [0.2, 0.8, 0.0], [0.0, 0.2, 0.8]])
    torch.testing.assert_close(adjacency, expected)
    row = torch.softmax(torch.tensor([0.8, 0.2]), 0)
    torch.testing.assert_close(relation[0, :2], row)


def test_prior_command_writes_csv(tmp_path):
    code, out, err = cli("prior", "--backbone", "toy", "--tasks", "toy-ml", "--out", tmp_path / "prior", "--json", "--quiet")
    assert code == 0, err
    result = json.loads(out)
    assert result["classes"] == 18 and result["template"] == "a photo of a {}."
    for name in ("similarity", "adjacency", "relation", "cooccurrence"):
        table = pd.read_csv(tmp_path / "prior" / f"{name}.csv", index_col=0)
        assert table.shape == (18, 18) and list(table.index) == list(table.columns)
    sim = pd.read_csv(tmp_path / "prior" / "similarity.csv", index_col=0).to_numpy()
    cooc = pd.read_csv(tmp_path / "prior" / "cooccurrence.csv", index_col=0).to_numpy()
    off = ~np.eye(18, dtype=bool)
    assert result["cooccurrence_r"] == pytest.approx(np.corrcoef(sim[off], cooc[off])[0, 1], abs=1e-6)


def test_cooccurrence_counts_known_entries_only():
    targets = np.array([[1, 1, 0], [1, -1, 1], [1, 0, -1], [0, 1, 1]])
    cooc = cooccurrence(targets)
    # P(1 | 0): class 0 is positive in rows 0-2, class 1 known in rows 0 and 2, positive in row 0
    assert cooc[0, 1] == pytest.approx(1 / 2)
    assert cooc[0, 2] == pytest.approx(1 / 2)  # known in rows 0, 1; positive in row 1
    assert cooc[1, 0] == pytest.approx(1 / 2)  # class 1 positive in rows 0 and 3; class 0 positive in row 0
    assert np.allclose(np.diag(cooc), 1)
    sim = torch.tensor([[1.0, 0.9, 0.1], [0.9, 1.0, 0.5], [0.1, 0.5, 1.0]])
    off = ~np.eye(3, dtype=bool)
    assert agreement(sim, cooc) == pytest.approx(np.corrcoef(sim.numpy()[off], cooc[off])[0, 1])
