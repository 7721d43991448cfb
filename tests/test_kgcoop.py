"""KgCoOp: CoOp's loss plus W x (1 - mean cosine to the hand-crafted prompt's class features),
checked against CLIP's own text encoder, against CoOp, and on the toy data end to end."""

from __future__ import annotations

import json

import clip
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from cpt.core.backbone import load_backbone
from cpt.kinds import KINDS
from cpt.methods import build_method, method_class
from cpt.methods.base import TaskData
from cpt.train import TrainConfig, train
from tests.conftest import cli, fit_json

NAMES = ["dog", "cat", "owl", "red car"]
TEMPLATE = "a photo of a {}."
ROWS = torch.tensor([[0, 0], [1, 1], [2, 0], [3, 1], [4, 0], [5, 1]])  # (image, cached view)


@pytest.fixture(scope="module")
def backbone(tiny_clip):
    return load_backbone(str(tiny_clip), "cpu")


def task_data(kind: str, seed: int = 0) -> TaskData:
    """Six images with two cached views each; targets of the kind (multi-label: some entries unknown, -1)."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "single-label":
        targets = torch.tensor([0, 2, 3, 0, 2, 3])
    else:
        targets = torch.randint(-1, 2, (6, len(NAMES)), generator=gen)
    return TaskData("t", NAMES, KINDS[kind], targets, torch.randn(6, 2, 32, generator=gen), torch.empty(6, 32),
                    torch.empty(0, 32), torch.empty(0, dtype=torch.long))


def kgcoop(backbone, nudge: float = 0.05, **options):
    """The method with its context moved off "a photo of a" (so the term is not zero)."""
    method = build_method("kgcoop", backbone, [NAMES], options)
    with torch.no_grad():
        method.ctx[0].add_(nudge * torch.randn(method.ctx[0].shape, generator=torch.Generator().manual_seed(1)))
    return method


def tokens(model, names: list[str]) -> torch.Tensor:
    return clip.tokenize([TEMPLATE.format(n) for n in names], context_length=model.context_length)


def prompt_features(model, names: list[str], ctx: torch.Tensor) -> torch.Tensor:
    """CLIP's encode_text of "a photo of a <name>." with the 4 context embeddings put in place of
    "a photo of a", over the full context length; normalised (n, dim)."""
    ids = tokens(model, names)
    x = model.token_embedding(ids)
    x = torch.cat([x[:, :1], ctx.expand(len(names), -1, -1), x[:, 1 + ctx.shape[0]:]], dim=1)
    x = x + model.positional_embedding
    x = model.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
    x = model.ln_final(x)[torch.arange(len(names)), ids.argmax(dim=-1)] @ model.text_projection
    return F.normalize(x, dim=-1)


def handcrafted(model, names: list[str]) -> torch.Tensor:
    with torch.no_grad():
        return F.normalize(model.encode_text(tokens(model, names)), dim=-1)


def term(model, names: list[str], ctx: torch.Tensor) -> torch.Tensor:
    """The paper's knowledge-guided term as the authors compute it: 1 - mean cosine over the classes."""
    return 1 - (prompt_features(model, names, ctx) * handcrafted(model, names)).sum(dim=-1).mean()


def method_loss(method, data: TaskData, classes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's loss as the train loop weighs it (the mean over the task's images) and its gradient w.r.t. ctx."""
    loss = method.batch_loss(data, 0, ROWS, classes, 0, torch.Generator()) / len(ROWS)
    return loss.detach(), torch.autograd.grad(loss, method.ctx[0])[0]


@pytest.mark.parametrize("classes", [None, torch.tensor([0, 2, 3])], ids=["all-classes", "sampled-classes"])
def test_loss_is_cross_entropy_plus_weighted_term_over_the_logits_classes(backbone, classes):
    model, weight = backbone.model, 8.0
    method = kgcoop(backbone)
    data = task_data("single-label")
    loss, grad = method_loss(method, data, classes)

    ctx = method.ctx[0]
    kept = list(range(len(NAMES))) if classes is None else classes.tolist()
    names = [NAMES[c] for c in kept]
    feats = prompt_features(model, names, ctx)
    images = F.normalize(data.train_views[ROWS[:, 0], ROWS[:, 1]], dim=-1)
    logits = model.logit_scale.exp() * images @ feats.T
    labels = torch.tensor([kept.index(int(t)) for t in data.targets[ROWS[:, 0]]])
    kg = term(model, names, ctx)
    expected = F.cross_entropy(logits, labels) + weight * kg
    assert kg.item() > 1e-3  # the nudged context is away from the hand-crafted prompt: the term counts
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    torch.testing.assert_close(grad, torch.autograd.grad(expected, ctx)[0], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["single-label", "multi-label"])
def test_weight_zero_is_coop_and_the_term_adds_to_coops_loss(backbone, kind):
    """With the same context, kgcoop at weight 0 is CoOp; at weight W it is CoOp's loss + W x the term
    (multi-label: the asymmetric loss, the term over every class)."""
    options = {"n_ctx": 4, "ctx_init": "a photo of a"}
    coop = build_method("coop", backbone, [NAMES], options)
    zero, weighted = kgcoop(backbone, kg_weight=0.0), kgcoop(backbone, kg_weight=3.0)
    with torch.no_grad():
        coop.ctx[0].copy_(zero.ctx[0])
    data = task_data(kind)
    coop_loss, coop_grad = method_loss(coop, data)
    zero_loss, zero_grad = method_loss(zero, data)
    assert zero_loss.item() == pytest.approx(coop_loss.item(), abs=1e-6)
    torch.testing.assert_close(zero_grad, coop_grad)

    loss, _ = method_loss(weighted, data)
    kg = term(backbone.model, NAMES, weighted.ctx[0]).item()
    assert kg > 1e-3 and loss.item() == pytest.approx(coop_loss.item() + 3.0 * kg, abs=1e-5)


def test_training_starts_at_the_zero_shot_classifier(backbone):
    method = build_method("kgcoop", backbone, [NAMES], {})
    assert tuple(method.ctx[0].shape) == (4, 64)  # "a photo of a", the authors' default
    torch.testing.assert_close(method.classifiers()[0].weight, handcrafted(backbone.model, NAMES), rtol=1e-4,
                               atol=1e-5)


def test_the_term_keeps_trained_prompts_nearer_the_handcrafted_ones(backbone):
    """The same data and steps at the authors' rate: weight 8 ends far nearer the hand-crafted features than
    weight 0 (CoOp from the same start)."""
    data = task_data("single-label", seed=2)
    cfg = TrainConfig(epochs=15, batch_size=6, lr=0.002, warmup_epochs=0)
    drift = {}
    for weight in (0.0, 8.0):
        method = build_method("kgcoop", backbone, [NAMES], {"kg_weight": weight})
        train(method, [data], cfg)
        drift[weight] = term(backbone.model, NAMES, method.ctx[0]).item()
    assert drift[0.0] > 0.1 and drift[8.0] < 0.5 * drift[0.0], drift


def test_cli_fit_writes_the_usual_run_and_methods_cites_the_paper(tiny_clip, colours, tmp_path):
    run = tmp_path / "run"
    summary = fit_json("--method", "kgcoop", "--tasks", f"warm={colours},cold={colours}", "--backbone", tiny_clip,
                       "--shots", "2", "--epochs", "2", "--out", run)
    assert summary["run"] == str(run)
    config = json.loads((run / "config.json").read_text())
    assert config["status"] == "finished"
    method, train_cfg = config["resolved"]["method"], config["resolved"]["train"]
    assert method["kg_weight"] == 8.0 and method["kg_template"] == [TEMPLATE] and method["n_ctx"] == 4
    assert train_cfg["epochs"] == 2
    state = torch.load(run / "checkpoint.pt", weights_only=False)["state"]
    assert set(state) == {"ctx.0", "ctx.1"}  # a context per task; no anchors, no CLIP weights
    assert state["ctx.0"].shape == (4, 64)
    assert len(pd.read_csv(run / "history.csv")) == 2
    metrics = pd.read_csv(run / "metrics.csv")
    assert {"warm", "cold"} <= set(metrics.task) and "accuracy" in set(metrics.metric)
    for name in ("per_class.csv", "predictions.csv", "splits.csv", "report.md", "fit.log"):
        assert (run / name).exists(), name

    code, _, table = cli("methods", "kgcoop")
    assert code == 0 and "Yao, Zhang, Xu, CVPR 2023" in " ".join(table.split())
    code, out, err = cli("methods", "kgcoop", "--json")
    assert code == 0, err
    assert [p["name"] for p in json.loads(out)["presets"]] == ["kgcoop-paper"]


def test_export_and_predict_give_evals_logits(tiny_clip, colours, tmp_path):
    run = tmp_path / "run"
    fit_json("--method", "kgcoop", "--tasks", f"colours={colours}", "--backbone", tiny_clip, "--shots", "2",
             "--epochs", "2", "--lr", "0.05", "--out", run)
    code, _, err = cli("export", run, "--format", "pt", "--out", tmp_path / "k.pt", "--quiet")
    assert code == 0, err

    def predict(source) -> dict[str, dict]:
        code, out, err = cli("predict", source, colours / "test", "--top-k", "4", "--jsonl", "--quiet")
        assert code == 0, err
        return {r["path"]: r for r in map(json.loads, out.splitlines())}

    from_run, exported = predict(run), predict(tmp_path / "k.pt")
    evaluated = pd.read_csv(run / "predictions.csv")
    assert len(from_run) == len(evaluated) > 0
    for row in evaluated.itertuples():
        assert from_run[row.path]["classes"][0] == row.prediction and abs(from_run[row.path]["scores"][0] - row.score) < 1e-4
        np.testing.assert_allclose(exported[row.path]["logits"], from_run[row.path]["logits"], atol=1e-4)


def test_default_epochs_are_the_authors_100_at_every_shot_count():
    method = method_class("kgcoop")
    assert [method.default_epochs(k, "single-label") for k in (1, 4, 16, None)] == [100] * 4


@pytest.mark.slow
def test_16_shot_kgcoop_beats_zero_shot_on_the_toy_suite(tmp_path):
    common = ["--tasks", "toy", "--backbone", "toy"]
    zs = fit_json("--method", "zeroshot", *common, "--out", tmp_path / "zs")
    kg = fit_json("--method", "kgcoop", *common, "--shots", "16", "--out", tmp_path / "kg")

    def accuracies(summary):
        return {m["task"]: m["value"] for m in summary["metrics"] if m["metric"] == "accuracy" and m["task"] != "mean"}

    zero, tuned = accuracies(zs), accuracies(kg)
    assert all(tuned[t] >= zero[t] for t in zero), (zero, tuned)
    assert np.mean([tuned[t] - zero[t] for t in zero]) >= 8, (zero, tuned)
