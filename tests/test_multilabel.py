"""Multi-label label files: wide and long CSVs give the same labels; unknowns stay unknown."""

import numpy as np
import pytest

from cpt.errors import CptError
from cpt.data.multilabel import load_multilabel_task
from tests.conftest import write_image


def images(root, n=4):
    rng = np.random.default_rng(0)
    return [write_image(root / "img" / f"{i}.png", (10 * i, 50, 90), rng).relative_to(root) for i in range(n)]


def test_wide_and_long_csv_load_the_same_labels(tmp_path):
    wide, long = tmp_path / "wide", tmp_path / "long"
    for folder in (wide, long):
        paths = images(folder)
    rows = [("cat",), ("cat", "dog"), (), ("sea_lion",)]
    for split in ("train", "test"):
        (wide / f"{split}.csv").write_text(
            "path,cat,dog,sea_lion\n" + "".join(f"{p},{int('cat' in r)},{int('dog' in r)},{int('sea_lion' in r)}\n"
                                               for p, r in zip(paths, rows)))
        (long / f"{split}.csv").write_text("path,labels\n" + "".join(f"{p},{';'.join(r)}\n" for p, r in zip(paths, rows)))
    a, _ = load_multilabel_task("w", str(wide))
    b, _ = load_multilabel_task("l", str(long))
    assert a.classnames == b.classnames == ["cat", "dog", "sea lion"]
    for split in ("train", "test"):
        assert np.array_equal(a.splits[split].targets, b.splits[split].targets)
        assert [p.name for p in a.splits[split].paths] == [p.name for p in b.splits[split].paths]
    assert a.splits["test"].targets.tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 0, 1]]


def test_unknown_cells_and_mismatched_files(tmp_path):
    paths = images(tmp_path, 2)
    (tmp_path / "train.csv").write_text(f"path,a,b\n{paths[0]},1,\n{paths[1]},-1,0\n")
    (tmp_path / "test.csv").write_text(f"path,a,c\n{paths[0]},1,0\n")
    with pytest.raises(CptError, match="missing \\['b'\\], unexpected \\['c'\\]"):
        load_multilabel_task("t", str(tmp_path))
    (tmp_path / "test.csv").write_text(f"path,a,b\n{paths[0]},1,0\n{paths[1]},0,1\n")
    task, _ = load_multilabel_task("t", str(tmp_path))
    assert task.splits["train"].targets.tolist() == [[1, -1], [-1, 0]]
    (tmp_path / "test.csv").write_text(f"path,labels\n{paths[0]},a;zebra\n")
    (tmp_path / "train.csv").write_text(f"path,labels\n{paths[0]},a\n{paths[1]},b\n")
    with pytest.raises(CptError, match="zebra"):
        load_multilabel_task("t", str(tmp_path))


def test_known_ratio_mask_keeps_p_of_the_entries_and_repeats_under_the_seed():
    from cpt.data.partial import mask_known

    targets = np.random.default_rng(0).integers(0, 2, (400, 50))
    masked = mask_known(targets, 0.3, seed=1)
    known = masked >= 0
    assert abs(known.mean() - 0.3) < 3 * np.sqrt(0.3 * 0.7 / known.size)  # within sampling error
    assert np.array_equal(masked[known], targets[known])
    assert np.array_equal(masked, mask_known(targets, 0.3, seed=1))
    assert not np.array_equal(masked, mask_known(targets, 0.3, seed=2))
    with pytest.raises(CptError, match="known-ratio"):
        mask_known(targets, 0.0, seed=1)


def test_asymmetric_loss_by_hand_ignores_unknowns():
    import torch

    from cpt.methods.losses import asymmetric_loss

    logits = torch.tensor([[2.0, -1.0, 0.5]])
    targets = torch.tensor([[1, 0, -1]])
    p = torch.sigmoid(logits)[0]
    p_neg = (p[1] - 0.05).clamp(min=0)
    expected = -(torch.log(p[0]) + torch.log(1 - p_neg) * p_neg**4)
    torch.testing.assert_close(asymmetric_loss(logits, targets), expected)
    assert asymmetric_loss(logits, torch.full((1, 3), -1)) == 0


def test_asymmetric_loss_gradient_treats_the_focal_weights_as_constants():
    """The ASL authors train with the focal weight detached; the gradient by hand on a 3x4 example:
    positive: -(1 - p)^g+ * (1 - p); negative with p_m = p - clip > 0: p_m^g- * p (1 - p) / (1 - p_m);
    a negative below the clip and an unknown entry: 0."""
    import torch

    from cpt.methods.losses import asymmetric_loss

    logits = torch.tensor([[2.0, -1.0, 0.5, 1.5], [-0.3, 3.0, -4.0, 0.2], [1.0, 0.0, -2.0, 2.5]], requires_grad=True)
    targets = torch.tensor([[1, 0, -1, 0], [0, 1, 0, -1], [1, 0, 0, 1]])
    gamma_neg, gamma_pos, clip = 4.0, 1.0, 0.05
    asymmetric_loss(logits, targets, gamma_neg, gamma_pos, clip).backward()
    expected = torch.zeros(3, 4, dtype=torch.float64)
    for (i, j), t in zip(((i, j) for i in range(3) for j in range(4)), targets.flatten().tolist()):
        p = 1 / (1 + torch.exp(-logits[i, j].detach().double()))
        if t == 1:
            expected[i, j] = -((1 - p) ** gamma_pos) * (1 - p)
        elif t == 0 and p > clip:
            p_m = p - clip
            expected[i, j] = p_m**gamma_neg * p * (1 - p) / (1 - p_m)
    torch.testing.assert_close(logits.grad.double(), expected, rtol=1e-5, atol=1e-7)
