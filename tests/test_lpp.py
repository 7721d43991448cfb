"""LP++: its initialisation, step sizes and training loop against numpy re-derivations of the
authors' formulas, the folded classifier against the blended logits, and the method end to end."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from cpt_cli.main import app

from cpt.methods import METHODS
from cpt.methods.lpp import LppConfig, alpha_step, class_sums, initial_alpha, prototype_step, train_head
from tests.conftest import accuracy, cli, fit_json, runner

TOL = 1e-4


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.normal(size=(n, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def tiny():
    """Seven normalised features of dimension 5 in 3 classes (unbalanced), 3 text embeddings, 4 validation rows."""
    rng = np.random.default_rng(0)
    text = unit_rows(rng, 3, 5)
    y = np.array([0, 0, 0, 1, 1, 2, 2])
    x = unit_rows(rng, 7, 5) + 0.8 * text[y]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    yv = np.array([0, 1, 2, 2])
    xv = unit_rows(rng, 4, 5) + 0.5 * text[yv]
    return x, y, text, xv / np.linalg.norm(xv, axis=1, keepdims=True), yv


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).float() if a.dtype.kind == "f" else torch.from_numpy(a).long()


def reference_lpp(x, y, text, xv, yv, iters):
    """The authors' loop in numpy: prototypes the class sums, blends 250 x the mean own-class text score,
    SGD with momentum 0.9 on (prototypes, bias) at 4N/lambda_max(XᵀX), a plain step on the blends every
    10th step at N / (4 max_k sum_i (x_i·t_k)^2), and the latest iterate of best validation accuracy."""
    n, k = len(y), len(text)
    onehot = np.eye(k)[y]
    w = onehot.T @ x
    b = np.zeros(k)
    scores = x @ text.T
    alpha = np.full(k, 250 * np.mean([scores[y == c, c].mean() for c in range(k)]))
    lr_w = 4 * n / np.linalg.eigvalsh(x.T @ x).max()
    lr_a = n / (4 * (scores**2).sum(axis=0).max())
    vw, vb = np.zeros_like(w), np.zeros_like(b)
    kept, best = None, -1.0
    for step in range(1, iters + 1):
        logits = x @ w.T + b + alpha * scores
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        residual = (p / p.sum(axis=1, keepdims=True) - onehot) / n  # d(mean cross-entropy)/d(logits)
        gw, gb, ga = residual.T @ x, residual.sum(axis=0), (residual * scores).sum(axis=0)
        vw, vb = 0.9 * vw + gw, 0.9 * vb + gb
        w, b = w - lr_w * vw, b - lr_w * vb
        if step % 10 == 0:
            alpha = alpha - lr_a * ga
        acc = np.mean((xv @ w.T + b + alpha * (xv @ text.T)).argmax(axis=1) == yv) if len(yv) else 0.0
        if acc >= best:
            kept, best = (step, w, b, alpha), acc
    return kept


def test_initialisation_and_step_sizes_follow_the_papers_formulas(tiny):
    x, y, text, _, _ = tiny
    sums = np.stack([x[y == c].sum(axis=0) for c in range(3)])
    np.testing.assert_allclose(class_sums(t(x), t(y), 3).numpy(), sums, atol=1e-6)
    own = [np.mean([x[i] @ text[c] for i in np.flatnonzero(y == c)]) for c in range(3)]
    assert initial_alpha(t(x), t(y), t(text)) == pytest.approx(250 * np.mean(own), rel=1e-5)
    assert prototype_step(t(x)) == pytest.approx(4 * 7 / np.linalg.eigvalsh(x.T @ x).max(), rel=1e-5)
    column_energy = [sum((x[i] @ text[c]) ** 2 for i in range(7)) for c in range(3)]
    assert alpha_step(t(x), t(text)) == pytest.approx(7 / (4 * max(column_energy)), rel=1e-5)


@pytest.mark.parametrize("with_val", [True, False])
def test_training_loop_matches_the_reference_and_keeps_the_best_validation_iterate(tiny, with_val):
    x, y, text, xv, yv = tiny
    if not with_val:
        xv, yv = xv[:0], yv[:0]
    step, w, b, alpha = reference_lpp(x, y, text, xv, yv, iters=40)
    head, kept = train_head(t(x), t(y), t(text), t(xv), t(yv), iters=40)
    assert kept == step
    if not with_val:  # the last iterate, after four steps of the blends, which moved apart class by class
        assert step == 40 and not np.allclose(alpha, alpha[0])
    np.testing.assert_allclose(head.prototypes.numpy(), w, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(head.bias.numpy(), b, atol=1e-4)
    np.testing.assert_allclose(head.alpha.numpy(), alpha, rtol=1e-4)


def test_folded_classifier_gives_the_blended_logits(tiny):
    x, y, text, xv, yv = tiny
    head, _ = train_head(t(x), t(y), t(text), t(xv), t(yv), iters=30)
    method = METHODS["lp++"](None, [["a", "b", "c"]], LppConfig())
    method.heads = [head]
    restored = METHODS["lp++"](None, [["a", "b", "c"]], LppConfig())
    restored.load_state(method.state())
    raw = 3.0 * np.random.default_rng(1).normal(size=(6, 5))  # unnormalised: the classifier normalises
    f = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    w, b, alpha = head.prototypes.numpy(), head.bias.numpy(), head.alpha.numpy()
    blended = f @ w.T + b + alpha * (f @ text.T)
    folded = restored.classifiers()[0]
    assert folded.scale == 1.0
    np.testing.assert_allclose(folded.logits(t(raw)).numpy(), blended, atol=1e-5)


def test_fit_eval_export_and_predict_agree(tiny_clip, colours, tmp_path):
    run = tmp_path / "run"
    fitted = fit_json("--method", "lp++", "--tasks", f"colours={colours}", "--backbone", tiny_clip, "--shots", "4",
                      "--lpp-iters", "50", "--template", "a photo of a {} colour.", "--out", run)
    config = json.loads((run / "config.json").read_text())
    assert config["resolved"]["method"]["lpp_iters"] == 50
    assert config["resolved"]["method"]["template"] == ["a photo of a {} colour."]
    state = torch.load(run / "checkpoint.pt", weights_only=False)["state"]
    assert set(state) == {"prototypes.0", "bias.0", "alpha.0", "text.0"} and state["alpha.0"].shape == (4,)

    code, out, err = cli("eval", run, "--json", "--quiet")
    assert code == 0, err
    assert json.loads(out)["metrics"] == fitted["metrics"]

    def predict(source) -> dict[str, dict]:
        code, out, err = cli("predict", source, colours / "test", "--top-k", "4", "--jsonl", "--quiet")
        assert code == 0, err
        return {r["path"]: r for r in map(json.loads, out.splitlines())}

    from_run = predict(run)
    evaluated = pd.read_csv(run / "predictions.csv")
    assert len(from_run) == len(evaluated) == 4 * 6
    for row in evaluated.itertuples():
        assert from_run[row.path]["classes"][0] == row.prediction
        assert abs(from_run[row.path]["scores"][0] - row.score) < TOL

    code, _, err = cli("export", run, "--format", "pt", "--out", tmp_path / "c.pt", "--quiet")
    assert code == 0, err
    exported = predict(tmp_path / "c.pt")
    for path, record in from_run.items():
        np.testing.assert_allclose(exported[path]["logits"], record["logits"], atol=TOL)


def test_methods_lists_lpp_with_its_citation():
    code, out, err = cli("methods", "lp++", "--json")
    assert code == 0, err
    listed = json.loads(out)
    assert listed["kinds"] == ["single-label"] and "Huang et al., CVPR 2024" in listed["summary"]
    assert {o["option"]: o["default"] for o in listed["options"]}["--lpp-iters"] == 300
    shown = runner.invoke(app, ["methods", "lp++"], env={"COLUMNS": "300"})
    assert shown.exit_code == 0 and "Huang et al., CVPR 2024" in shown.stderr  # tables for people go to stderr


@pytest.mark.slow
def test_16_shot_lpp_beats_zero_shot_on_the_toy_suite(tmp_path):
    common = ["--tasks", "toy", "--backbone", "toy"]
    zs = fit_json("--method", "zeroshot", *common, "--out", tmp_path / "zs")
    lpp = fit_json("--method", "lp++", *common, "--shots", "16", "--out", tmp_path / "lpp")
    assert accuracy(lpp, "mean") >= accuracy(zs, "mean") + 10, (accuracy(zs, "mean"), accuracy(lpp, "mean"))
