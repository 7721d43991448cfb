"""Tip-Adapter and Tip-Adapter-F: the cache's logits, keys and alpha/beta search against the paper's
formulas computed by hand; training moves the keys; export and predict carry the cache."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cpt.core.backbone import Preprocess
from cpt.data.features import eval_transform
from cpt.methods.base import Classifier, KeyValueCache
from cpt.methods.tip_adapter import TipAdapterConfig, cache_keys, grid, search
from tests.conftest import accuracy, cli, fit_json, interrupt_after

TOL = 1e-4


def test_cache_logits_are_the_papers_affinity_and_blend():
    gen = torch.Generator().manual_seed(0)
    weight = F.normalize(torch.randn(3, 5, generator=gen), dim=-1)
    keys = F.normalize(torch.randn(4, 5, generator=gen), dim=-1)
    labels = [2, 0, 1, 2]
    values = F.one_hot(torch.tensor(labels), 3).float()
    features = torch.randn(2, 5, generator=gen) * 3  # not normalised: the classifier normalises
    clf = Classifier(weight, 50.0, cache=KeyValueCache(keys, values, alpha=1.7, beta=5.5))
    got = clf.logits(features)
    for i in range(2):
        x = features[i] / features[i].norm()
        for c in range(3):
            text = 50.0 * float(x @ weight[c])
            # exp(-beta (1 - cos)) summed over the cache entries labelled c
            cache = sum(math.exp(-5.5 * (1 - float(x @ keys[j]))) for j in range(4) if labels[j] == c)
            assert abs(float(got[i, c]) - (text + 1.7 * cache)) < 1e-4


def test_keys_are_the_normalised_mean_of_the_views():
    views = torch.tensor([[[3.0, 0.0], [1.0, 2.0]], [[0.0, -1.0], [0.0, -3.0]]])
    np.testing.assert_allclose(cache_keys(views), [[2 / math.sqrt(5), 1 / math.sqrt(5)], [0.0, -1.0]], atol=1e-6)


def test_search_takes_the_first_best_on_the_references_grid():
    assert grid(7.0, 200)[:2] == pytest.approx([0.1, 0.1 + 6.9 / 200]) and len(grid(7.0, 200)) == 200
    assert grid(3.0, 20)[-1] == pytest.approx(0.1 + 19 * 2.9 / 20)
    gen = torch.Generator().manual_seed(1)
    zero_shot = torch.randn(30, 4, generator=gen)
    affinity = torch.rand(30, 8, generator=gen) * 2 - 1
    values = F.one_hot(torch.arange(8) % 4, 4).float()
    labels = torch.randint(0, 4, (30,), generator=gen)
    cfg = TipAdapterConfig(tip_alpha_steps=6, tip_beta_steps=7, tip_alpha_max=4.0, tip_beta_max=9.0)
    best = None  # the reference's double loop, betas outer, strictly better replaces
    for b in [0.1 + i * 8.9 / 7 for i in range(7)]:
        for a in [0.1 + i * 3.9 / 6 for i in range(6)]:
            logits = zero_shot + a * torch.exp(-b * (1 - affinity)) @ values
            acc = float((logits.argmax(1) == labels).float().mean())
            if best is None or acc > best[2]:
                best = (a, b, acc)
    assert search(zero_shot, affinity, values, labels, cfg) == pytest.approx(best)


@pytest.fixture(scope="module")
def runs(tiny_clip, colours, tmp_path_factory):
    root = tmp_path_factory.mktemp("tip")
    common = ("--tasks", f"colours={colours}", "--backbone", tiny_clip, "--shots", "4", "--aug-views", "3")
    free = fit_json("--method", "tip-adapter", *common, "--out", root / "free")
    tuned = fit_json("--method", "tip-adapter-f", *common, "--epochs", "3", "--batch-size", "8", "--out", root / "f")
    return root, free, tuned


def test_tip_adapter_f_trains_its_keys_with_the_papers_optimiser(runs):
    root, _, _ = runs
    train = json.loads((root / "f" / "config.json").read_text())["resolved"]["train"]
    assert (train["optimizer"], train["lr"], train["weight_decay"], train["warmup_epochs"]) == ("adamw", 0.001, 0.01, 0)
    free = torch.load(root / "free" / "checkpoint.pt", weights_only=False)["state"]
    tuned = torch.load(root / "f" / "checkpoint.pt", weights_only=False)["state"]
    assert free["keys.0"].shape == tuned["keys.0"].shape == (16, 32)
    assert torch.allclose(free["keys.0"].norm(dim=-1), torch.ones(16), atol=1e-5)  # built, not trained
    assert (tuned["keys.0"] - free["keys.0"]).abs().max() > 1e-4  # fine-tuned from the same cache
    assert torch.equal(free["values.0"], tuned["values.0"]) and free["values.0"].sum(0).tolist() == [4.0] * 4
    history = pd.read_csv(root / "f" / "history.csv")
    assert len(history) == 3 and history.lr.iloc[0] == pytest.approx(0.001)


@pytest.mark.parametrize("name", ["free", "f"])
def test_export_and_predict_carry_the_cache(runs, colours, tmp_path, name):
    run = runs[0] / name
    evaluated = pd.read_csv(run / "predictions.csv").set_index("path")
    for fmt in ("pt", "torchscript"):
        out = tmp_path / f"c.{fmt}"
        code, _, err = cli("export", run, "--format", fmt, "--out", out, "--quiet")
        assert code == 0, err
    code, out, err = cli("predict", tmp_path / "c.pt", colours / "test", "--jsonl", "--quiet")
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == len(evaluated)
    code, out, err = cli("predict", run, colours / "test", "--jsonl", "--quiet")
    from_run = {r["path"]: r for r in map(json.loads, out.splitlines())}
    for r in records:
        assert r["classes"][0] == evaluated.loc[r["path"], "prediction"]
        np.testing.assert_allclose(r["logits"], from_run[r["path"]]["logits"], atol=TOL)
    # the cache changes the logits: they are not zero-shot CLIP's
    payload = torch.load(tmp_path / "c.pt", weights_only=True)["tasks"][0]
    assert payload["cache"]["keys"].shape == (16, 32) and payload["cache"]["alpha"] > 0
    files = {"cpt.json": ""}
    scripted = torch.jit.load(str(tmp_path / "c.torchscript"), _extra_files=files)
    pre = json.loads(files["cpt.json"])["preprocess"]
    transform = eval_transform(Preprocess(**{**pre, "mean": tuple(pre["mean"]), "std": tuple(pre["std"])}))
    paths = sorted(from_run)
    batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    expected = np.array([from_run[p]["logits"] for p in paths])
    np.testing.assert_allclose(scripted(batch)[0].numpy(), expected, atol=TOL)
    code, _, err = cli("export", run, "--format", "csv", "--out", tmp_path / "c.csv")
    assert code == 2 and "cache" in err and not (tmp_path / "c.csv").exists()


def test_tip_adapter_f_resumes_exactly(runs, tiny_clip, colours, tmp_path, monkeypatch):
    root, _, tuned = runs
    args = ["--method", "tip-adapter-f", "--tasks", f"colours={colours}", "--backbone", tiny_clip, "--shots", "4",
            "--aug-views", "3", "--epochs", "3", "--batch-size", "8"]
    interrupt_after(monkeypatch, 2)
    code, _, err = cli("fit", *args, "--quiet", "--out", tmp_path / "cut")
    assert code == 2 and "--resume" in err
    resumed = fit_json("--resume", tmp_path / "cut")
    a = torch.load(root / "f" / "checkpoint.pt", weights_only=False)["state"]
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)["state"]
    assert torch.equal(a["keys.0"], b["keys.0"]) and torch.equal(a["chosen.0"], b["chosen.0"])
    assert resumed["metrics"] == tuned["metrics"]


@pytest.mark.slow
def test_both_beat_zero_shot_at_16_shots_on_the_toy_suite(tmp_path):
    def mean_accuracy(method: str) -> float:
        summary = fit_json("--method", method, "--tasks", "toy", "--backbone", "toy", "--shots", "16",
                           "--out", tmp_path / method)
        return accuracy(summary, "mean")

    zero = mean_accuracy("zeroshot")
    free, tuned = mean_accuracy("tip-adapter"), mean_accuracy("tip-adapter-f")
    assert free >= zero + 3 and tuned >= free, (zero, free, tuned)
