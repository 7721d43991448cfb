"""`cpt fit` on multi-label label files through the real CLI: --labels/--images/--test-labels,
the saved and reused mask, SCPNet and its ablations, and the errors users hit."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score

from cpt.core.backbone import Preprocess
from cpt.data.features import eval_transform
from tests.conftest import COLOURS, cli, fit_json, interrupt_after, write_image

NAMES = list(COLOURS)


@pytest.fixture(scope="module")
def ml_data(tmp_path_factory):
    """Images of one or two colour halves; labels = the colours present. Wide train CSV, long test CSV."""
    root = tmp_path_factory.mktemp("ml")
    rng = np.random.default_rng(0)
    rows = {"train": [], "test": []}
    for split, n in (("train", 24), ("test", 12)):
        for i in range(n):
            present = sorted(set(rng.choice(len(NAMES), size=rng.integers(1, 3), replace=False).tolist()))
            path = write_image(root / "images" / split / f"{i}.png", COLOURS[NAMES[present[0]]], rng)
            rows[split].append((path.relative_to(root / "images"), present))
    wide = pd.DataFrame([[str(p)] + [int(c in present) for c in range(len(NAMES))] for p, present in rows["train"]],
                        columns=["path", *NAMES])
    wide.to_csv(root / "train.csv", index=False)
    long = pd.DataFrame([(str(p), ";".join(NAMES[c] for c in present)) for p, present in rows["test"]],
                        columns=["path", "labels"])
    long.to_csv(root / "test.csv", index=False)
    return root


def test_scpnet_on_label_files_writes_the_run_and_reuses_its_mask(tiny_clip, ml_data, tmp_path):
    common = ["--labels", ml_data / "train.csv", "--images", ml_data / "images", "--test-labels", ml_data / "test.csv",
              "--backbone", tiny_clip, "--epochs", "2", "--aug-views", "2", "--tasks", "colours"]
    first = fit_json("--method", "scpnet", *common, "--known-ratio", "0.5", "--out", tmp_path / "a")
    run = tmp_path / "a"
    metrics = {m["metric"]: m["value"] for m in first["metrics"]}
    assert {"mAP", "CF1", "OF1", "CF1_top3"} <= set(metrics)
    # mAP recomputed with scikit-learn from the logits `cpt predict` gives for the test images
    test = pd.read_csv(ml_data / "test.csv")
    code, out, err = cli("predict", run, *[ml_data / "images" / p for p in test.path], "--jsonl", "--quiet")
    assert code == 0, err
    logits = np.array([json.loads(line)["logits"] for line in out.splitlines()])
    truth = np.array([[int(c in labels.split(";")) for c in NAMES] for labels in test["labels"]])
    assert logits.shape == truth.shape == (12, 4)
    scored = [c for c in range(4) if truth[:, c].any()]
    ap = [average_precision_score(truth[:, c], logits[:, c]) for c in scored]
    assert metrics["mAP"] == pytest.approx(100 * np.mean(ap), abs=1e-6)
    assert metrics["n_classes_evaluated"] == len(scored)
    for name in ("mask_colours.csv", "train_labels_colours.csv", "per_class.csv", "report.md", "pr_colours.png",
                 "ap_colours.png", "checkpoint.pt", "history.csv"):
        assert (run / name).exists(), name
    mask = pd.read_csv(run / "mask_colours.csv")
    assert list(mask.columns) == ["path", "red", "green", "blue", "yellow ochre"] and len(mask) == 24
    assert 0.3 < mask.iloc[:, 1:].to_numpy().mean() < 0.7
    labels = pd.read_csv(run / "train_labels_colours.csv")
    assert (labels.iloc[:, 1:].to_numpy()[mask.iloc[:, 1:].to_numpy() == 0] == -1).all()
    # a second run given the mask file trains on exactly the same entries, whatever its seed
    fit_json("--method", "coop", *common, "--mask", run / "mask_colours.csv", "--seed", "9", "--out", tmp_path / "b")
    assert pd.read_csv(tmp_path / "b" / "train_labels_colours.csv").equals(labels)
    assert len(pd.read_csv(run / "history.csv")) == 2


def test_single_positive_and_ablation_runs(tiny_clip, ml_data, tmp_path):
    common = ["--labels", ml_data / "train.csv", "--images", ml_data / "images", "--backbone", tiny_clip,
              "--epochs", "2", "--aug-views", "2"]
    fit_json("--method", "scpnet", *common, "--single-positive", "--no-prior", "--no-gcn", "--out", tmp_path / "sp")
    kept = pd.read_csv(tmp_path / "sp" / "train_labels_train.csv").iloc[:, 1:].to_numpy()
    assert ((kept == 1).sum(axis=1) == 1).all() and set(np.unique(kept)) == {1, -1}
    assert "| method | scpnet (single_positive, no_prior, no_gcn) |" in (tmp_path / "sp" / "report.md").read_text()
    # no --test-labels: a seeded 30 % of the labelled images is held out
    summary = fit_json("--method", "scpnet", *common, "--no-self-training", "--out", tmp_path / "ns")
    n_test = next(m["value"] for m in summary["metrics"] if m["metric"] == "n_images")
    assert n_test == round(0.3 * 24)


def test_multilabel_input_errors_exit_2(tiny_clip, ml_data, colours, tmp_path):
    bad = tmp_path / "bad.csv"
    pd.read_csv(ml_data / "train.csv").rename(columns={"blue": "navy"}).to_csv(bad, index=False)
    code, _, err = cli("fit", "--method", "scpnet", "--labels", ml_data / "train.csv", "--images", ml_data / "images",
                       "--test-labels", bad, "--backbone", tiny_clip, "--out", tmp_path / "x")
    assert code == 2 and "navy" in err and "blue" in err
    assert not (tmp_path / "x").exists()  # bad input leaves no run behind
    cases = [
        (["--method", "scpnet", "--tasks", f"c={colours}"], "trains on multi-label tasks"),
        (["--method", "coop", "--labels", ml_data / "train.csv", "--no-prior"], "--no-prior"),
        (["--method", "scpnet", "--labels", tmp_path / "missing.csv"], "missing.csv"),
        (["--method", "scpnet", "--labels", ml_data / "train.csv", "--images", ml_data / "images",
          "--mask", ml_data / "test.csv"], "--mask"),
    ]
    for args, message in cases:
        code, _, err = cli("fit", *args, "--backbone", tiny_clip, "--out", tmp_path / "y")
        assert code == 2 and message in err, (args, err)


def test_finetune_image_trains_the_encoder_and_its_run_evaluates_with_it(tiny_clip, ml_data, tmp_path):
    run = tmp_path / "ft"
    common = ["--labels", ml_data / "train.csv", "--images", ml_data / "images", "--test-labels", ml_data / "test.csv",
              "--backbone", tiny_clip, "--aug-views", "2", "--tasks", "colours"]
    summary = fit_json("--method", "scpnet", *common, "--epochs", "1", "--finetune-image", "--out", run)
    state = torch.load(run / "checkpoint.pt", weights_only=False)["state"]
    frozen = torch.load(tiny_clip, weights_only=False)
    changed = [k for k, v in state.items() if k.startswith("visual.") and not torch.equal(v, frozen[k])]
    assert changed, "the image encoder did not train"
    # cpt eval rebuilds the tuned encoder from the run: the same figures, not the frozen encoder's cached ones
    code, out, err = cli("eval", run, "--json", "--quiet")
    assert code == 0, err
    assert json.loads(out)["metrics"] == summary["metrics"]
    code, _, err = cli("export", run, "--format", "pt", "--out", tmp_path / "c.pt")
    assert code == 2 and "torchscript" in err and not (tmp_path / "c.pt").exists()
    # predict on the run and the TorchScript export both use the tuned encoder
    code, out, err = cli("predict", run, ml_data / "images" / "test", "--jsonl", "--quiet")
    assert code == 0, err
    records = {r["path"]: r["logits"] for r in map(json.loads, out.splitlines())}
    code, _, err = cli("export", run, "--format", "torchscript", "--out", tmp_path / "c.ts", "--quiet")
    assert code == 0, err
    scripted = torch.jit.load(str(tmp_path / "c.ts"))
    paths = sorted(records)
    transform = eval_transform(Preprocess(resolution=32))
    batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    np.testing.assert_allclose(scripted(batch)[0].detach().numpy(), np.array([records[p] for p in paths]), atol=1e-4)


def test_interrupted_scpnet_run_resumes_exactly(tiny_clip, ml_data, tmp_path, monkeypatch):
    """Pseudo-label state and the per-epoch draws of views are part of the checkpoint."""
    args = ["--method", "scpnet", "--labels", ml_data / "train.csv", "--images", ml_data / "images",
            "--backbone", tiny_clip, "--epochs", "4", "--aug-views", "2", "--known-ratio", "0.5", "--batch-size", "8"]
    fit_json(*args, "--out", tmp_path / "straight")
    interrupt_after(monkeypatch, 2)
    code, _, err = cli("fit", *args, "--quiet", "--out", tmp_path / "cut")
    assert code == 2 and "--resume" in err
    fit_json("--resume", tmp_path / "cut")
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)["state"]
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)["state"]
    assert a.keys() == b.keys() and "selected.0" in a
    assert all(torch.equal(a[k], b[k]) for k in a)
