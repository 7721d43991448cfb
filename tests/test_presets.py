"""Published recipes as `--preset`, and the training-loop parts they need: resolution order, Adam
with torch's OneCycleLR per step, the EMA of the weights, selection on a validation split (never
test), the multi-label validation split, and resuming all of it exactly."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import average_precision_score
from torch.optim.lr_scheduler import OneCycleLR
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

import cpt.fit
from cpt.core.backbone import load_backbone
from cpt.data.recipes import RECIPES, Recipe, recipes, register
from cpt.data.taskfile import TaskSpec
from cpt.errors import CptError
from cpt.eval.metrics import TaskPredictions
from cpt.kinds import KINDS
from cpt.methods import METHODS, TaskData, build_method
from cpt.plan import FitRequest, plan
from cpt.train import TrainConfig, train
from tests.conftest import COLOURS, cli, colour_folder, fit_json, interrupt_after, write_image

NAMES = list(COLOURS)


@pytest.fixture(scope="module")
def ml_folder(tmp_path_factory) -> Path:
    """A multi-label task folder: 24 training and 8 test images of one or two colours (labels: the colours present)."""
    root = tmp_path_factory.mktemp("ml")
    rng = np.random.default_rng(3)
    for split, n in (("train", 24), ("test", 8)):
        rows = []
        for i in range(n):
            present = set(rng.choice(len(NAMES), size=rng.integers(1, 3), replace=False).tolist())
            path = write_image(root / split / f"{i}.png", COLOURS[NAMES[min(present)]], rng)
            rows.append([str(path.relative_to(root))] + [int(c in present) for c in range(len(NAMES))])
        pd.DataFrame(rows, columns=["path", *NAMES]).to_csv(root / f"{split}.csv", index=False)
    return root


@pytest.fixture
def recipe(ml_folder):
    """A recipe over `ml_folder` whose presets overlap SCPNet's (hard_k, temperature) and not (crop_scale)."""
    recipes()  # the entry-point recipes first: only ours is taken out again
    register(Recipe("preset-test", "test recipe", "multi-label", lambda root: [TaskSpec("ml", str(ml_folder))],
                    defaults={"hard_k": 3, "temperature": 0.25, "crop_scale": 1.0}))
    yield "preset-test"
    RECIPES.pop("preset-test")


def config(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())


def labels(run: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(run / f"{name}_ml.csv")


# --- resolution ------------------------------------------------------------------------------------------

def test_explicit_options_beat_the_preset_which_beats_the_recipe_which_beats_the_defaults(tiny_clip, recipe, tmp_path):
    run = tmp_path / "run"
    fit_json("--method", "scpnet", "--tasks", recipe, "--preset", "scpnet-voc", "--backbone", tiny_clip,
             "--epochs", "1", "--aug-views", "2", "--batch-size", "8", "--topk", "2", "--temperature", "0.5",
             "--out", run)
    resolved = config(run)["resolved"]
    method, train_cfg = resolved["method"], resolved["train"]
    assert method["temperature"] == 0.5  # given; the preset says 0.3, the recipe 0.25
    assert method["hard_k"] == 5  # the preset; the recipe says 3, the default is 2
    assert resolved["views"]["crop_scale"] == 1.0  # the recipe; the default is 0.08
    assert train_cfg["momentum"] == 0.9 and method["no_prior"] is False  # declared defaults
    assert (train_cfg["optimizer"], train_cfg["schedule"], train_cfg["lr"], method["graph_lr"]) == ("adam", "onecycle",
                                                                                                   4e-5, 2e-4)
    assert (train_cfg["epochs"], train_cfg["batch_size"], method["topk"]) == (1, 8, 2)
    preset = METHODS["scpnet"].presets["scpnet-voc"]
    assert resolved["preset"] == {"name": "scpnet-voc", "values": preset.values,
                                  "overridden": ["batch_size", "epochs", "temperature", "topk"]}
    assert config(run)["request"]["preset"] == "scpnet-voc"
    # the preset's single-positive protocol: one known positive per training image, nothing else known
    kept = labels(run, "train_labels").iloc[:, 1:].to_numpy()
    assert ((kept == 1).sum(axis=1) == 1).all() and set(np.unique(kept)) == {-1, 1}


def test_a_partial_label_protocol_given_replaces_the_presets(ml_folder):
    given = plan(FitRequest(method="scpnet", tasks=f"ml={ml_folder}", preset="scpnet-coco",
                            options={"known_ratio": 0.5}))
    assert given.kind_options.known_ratio == 0.5 and given.kind_options.single_positive is False
    assert given.preset["overridden"] == ["single_positive"]
    assert plan(FitRequest(method="scpnet", tasks=f"ml={ml_folder}", preset="scpnet-coco")).kind_options.single_positive


@pytest.mark.parametrize("method, name, kind", [(m, p, k) for m, cls in METHODS.items() for p in cls.presets
                                                for k in cls.kinds])
def test_every_preset_resolves_to_its_values_on_every_kind_of_its_method(colours, ml_folder, method, name, kind):
    tasks = f"c={colours}" if kind == "single-label" else f"ml={ml_folder}"
    resolved = plan(FitRequest(method=method, tasks=tasks, preset=name))
    values = METHODS[method].presets[name].values
    assert {k: resolved.settings[k] for k in values} == values
    assert resolved.preset == {"name": name, "values": values, "overridden": []}


@pytest.mark.parametrize("method, preset, said", [
    ("coop", "scpnet-coco", "is a preset of --method scpnet; --method coop's presets: coop-paper"),
    ("scpnet", "scpnet-imagenet", "is unknown; --method scpnet's presets: scpnet-coco, scpnet-voc, scpnet-nus, "
                                  "scpnet-cub"),
    ("zeroshot", "coop-paper", "is a preset of --method coop; --method zeroshot has no presets"),
])
def test_a_preset_of_another_method_or_none_exits_2_naming_the_methods_presets(tiny_clip, colours, ml_folder, tmp_path,
                                                                              method, preset, said):
    tasks = f"ml={ml_folder}" if method == "scpnet" else f"c={colours}"
    code, _, err = cli("fit", "--method", method, "--tasks", tasks, "--preset", preset, "--backbone", tiny_clip,
                       "--out", tmp_path / "r", "--quiet")
    assert code == 2 and f"--preset {preset} {said}" in " ".join(err.split()), err
    assert not (tmp_path / "r").exists()


def test_a_schedule_shorter_than_the_training_exits_2(colours):
    with pytest.raises(CptError, match="--schedule-epochs 2 is shorter than the 3 training epochs"):
        plan(FitRequest(method="coop", tasks=f"c={colours}", options={"epochs": 3, "schedule_epochs": 2}))


def test_cpt_methods_lists_the_presets_with_every_value(tmp_path):
    code, out, err = cli("methods", "scpnet", "--json")
    assert code == 0, err
    listed = {p["name"]: p for p in json.loads(out)["presets"]}
    for name, preset in METHODS["scpnet"].presets.items():
        assert listed[name]["values"] == {"--" + k.replace("_", "-"): v for k, v in preset.values.items()}
        assert listed[name]["source"].startswith("jameslahm/SCPNet")
    code, out, _ = cli("methods", "--json")
    assert {r["method"]: r["presets"] for r in json.loads(out)}["coop"] == ["coop-paper"]


# --- the training loop --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def backbone(tiny_clip):
    return load_backbone(str(tiny_clip), "cpu", "fp32")


def synthetic(kind: str, n: int, dim: int = 32, views: int = 2) -> TaskData:
    """Random features of `n` images of NAMES' classes, with the targets of `kind`."""
    gen = torch.Generator().manual_seed(0)
    if kind == "multi-label":
        targets = torch.randint(-1, 2, (n, len(NAMES)), generator=gen)
    else:
        targets = torch.arange(n) % len(NAMES)
    return TaskData("t", NAMES, KINDS[kind], targets, torch.randn(n, views, dim, generator=gen), torch.empty(n, dim),
                    torch.empty(0, dim), torch.empty(0), torch.randn(n, views, dim, generator=gen))


def test_onecycle_rates_and_momentum_per_step_are_torchs(backbone):
    method = build_method("scpnet", backbone, [NAMES], {"graph_lr": 1e-3, "topk": 2})
    cfg = TrainConfig(epochs=2, schedule_epochs=3, batch_size=4, optimizer="adam", schedule="onecycle", lr=3e-3)
    seen = []
    hook = register_optimizer_step_pre_hook(
        lambda opt, *_: seen.append([(g["peak_lr"], g["lr"], g["betas"][0]) for g in opt.param_groups]))
    try:
        train(method, [synthetic("multi-label", 10)], cfg)
    finally:
        hook.remove()
    # independently: torch's scheduler over one parameter per peak rate, for the whole 3-epoch cycle
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    reference = torch.optim.Adam([{"params": [p]} for p in params], lr=3e-3)
    schedule = OneCycleLR(reference, max_lr=[3e-3, 1e-3], epochs=3, steps_per_epoch=math.ceil(10 / 4), pct_start=0.2)
    expected = []
    for _ in range(2 * 3):
        expected.append({g["max_lr"]: (g["lr"], g["betas"][0]) for g in reference.param_groups})
        reference.step()
        schedule.step()
    assert len(seen) == len(expected) == 6
    assert {peak for step in seen for peak, _, _ in step} == {3e-3, 1e-3}  # prompt and graph module
    for step, want in zip(seen, expected):
        for peak, lr, beta1 in step:
            assert (lr, beta1) == pytest.approx(want[peak], rel=1e-12)


def test_ema_weights_are_the_hand_computed_average_of_three_steps(backbone):
    method = build_method("coop", backbone, [NAMES], {"n_ctx": 2})
    cfg = TrainConfig(epochs=1, batch_size=2, lr=0.05, warmup_epochs=0, ema_decay=0.9)
    steps = [method.ctx[0].detach().clone()]
    hook = register_optimizer_step_post_hook(lambda *_: steps.append(method.ctx[0].detach().clone()))
    try:
        history = train(method, [synthetic("single-label", 6)], cfg)
    finally:
        hook.remove()
    assert len(steps) == 4  # the initial weights and three steps
    ema = steps[0]
    for weights in steps[1:]:
        ema = 0.9 * ema + 0.1 * weights
    assert not torch.allclose(steps[-1], ema)
    torch.testing.assert_close(method.ctx[0].detach(), ema, rtol=0, atol=1e-7)  # --select last keeps the EMA's
    assert history[-1]["selected"] == "ema"


def test_selection_scores_known_entries_and_single_positive_labels_with_unknowns_as_negatives():
    logits = np.random.default_rng(0).normal(size=(12, 3))
    single = np.full((12, 3), -1)
    single[np.arange(12), np.arange(12) % 3] = 1
    partial = np.where(np.random.default_rng(1).random((12, 3)) < 0.5, -1, np.arange(12)[:, None] % 2)
    kind = KINDS["multi-label"]
    as_negatives = np.mean([average_precision_score(single[:, c] == 1, logits[:, c]) for c in range(3)])
    assert kind.selection_score([TaskPredictions("t", NAMES[:3], single, logits, [])], {}) == pytest.approx(
        100 * as_negatives)
    known = [average_precision_score(partial[partial[:, c] >= 0, c], logits[partial[:, c] >= 0, c]) for c in range(3)]
    assert kind.selection_score([TaskPredictions("t", NAMES[:3], partial, logits, [])], {}) == pytest.approx(
        100 * np.mean(known))


# --- selection on the validation split ----------------------------------------------------------------------

COOP = ["--method", "coop", "--shots", "4", "--n-ctx", "4", "--lr", "0.05", "--warmup-epochs", "0"]


def test_select_val_keeps_the_best_epoch_and_tests_its_weights(tiny_clip, colours, tmp_path, monkeypatch):
    scores = iter([50.0, 80.0, 60.0, 70.0])  # epoch 2 is the best, not the last
    monkeypatch.setattr(cpt.fit, "val_scorer", lambda *_: lambda: next(scores))
    common = [*COOP, "--tasks", f"colours={colours}", "--backbone", tiny_clip]
    fit_json(*common, "--epochs", "4", "--select", "val", "--out", tmp_path / "val")
    assert config(tmp_path / "val")["selected"] == {"epoch": 2, "weights": "model", "val_score": 80.0}
    history = pd.read_csv(tmp_path / "val" / "history.csv")
    assert history.val_score.tolist() == [50, 80, 60, 70] and history.selected.fillna("").tolist() == [
        "", "model", "", ""]
    # the same training stopped after epoch 2 of the same 4-epoch schedule: the same weights and test figures
    fit_json(*common, "--epochs", "2", "--schedule-epochs", "4", "--out", tmp_path / "two")
    kept, two = (torch.load(tmp_path / r / "checkpoint.pt", weights_only=True)["state"] for r in ("val", "two"))
    assert torch.equal(kept["ctx.0"], two["ctx.0"])
    assert pd.read_csv(tmp_path / "val" / "metrics.csv").equals(pd.read_csv(tmp_path / "two" / "metrics.csv"))


def test_select_val_scores_are_the_kept_weights_accuracy_on_the_val_images(tiny_clip, colours, tmp_path):
    run = tmp_path / "run"
    fit_json(*COOP, "--tasks", f"colours={colours}", "--backbone", tiny_clip, "--epochs", "4", "--ema-decay", "0.5",
             "--select", "val", "--out", run)
    history = pd.read_csv(run / "history.csv")
    entries = [(getattr(row, f"val_score{suffix}"), -row.epoch, suffix == "_ema") for row in history.itertuples()
               for suffix in ("", "_ema")]
    best = max(entries)  # the highest score; on ties the earlier epoch, then the EMA
    assert config(run)["selected"]["epoch"] == -best[1]
    assert config(run)["selected"]["weights"] == ("ema" if best[2] else "model")
    # every image of colours/val is in the run's val split (3 a class, --shots 4): cpt eval on them gives the score
    code, out, err = cli("eval", run, "--data", colours / "val", "--json", "--quiet")
    assert code == 0, err
    accuracy = next(m["value"] for m in json.loads(out)["metrics"] if m["metric"] == "accuracy")
    assert accuracy == pytest.approx(best[0])


def test_select_val_without_a_validation_split_exits_2_saying_how_to_get_one(tiny_clip, ml_folder, tmp_path):
    code, _, err = cli("fit", "--method", "coop", "--tasks", f"ml={ml_folder}", "--backbone", tiny_clip,
                       "--select", "val", "--out", tmp_path / "ml", "--quiet")
    assert code == 2 and "--val-ratio" in err and "never used" in err, err
    no_val = colour_folder(tmp_path / "data", per_class=4, split=True)
    shutil.rmtree(no_val / "val")  # train/ and test/ only
    code, _, err = cli("fit", "--method", "coop", "--tasks", f"c={no_val}", "--backbone", tiny_clip, "--select", "val",
                       "--out", tmp_path / "sl", "--quiet")
    assert code == 2 and "has none" in err and "val/" in err, err
    assert not (tmp_path / "ml").exists() and not (tmp_path / "sl").exists()


def test_val_ratio_holds_out_disjoint_training_images_with_their_partial_labels(tiny_clip, ml_folder, tmp_path):
    def fit_with(seed: str) -> Path:
        run = tmp_path / f"seed{seed}"
        fit_json("--method", "coop", "--tasks", f"ml={ml_folder}", "--backbone", tiny_clip, "--epochs", "1",
                 "--aug-views", "2", "--known-ratio", "0.5", "--val-ratio", "0.25", "--select", "val", "--seed", seed,
                 "--out", run)
        return run

    run = fit_with("1")
    train_rows, val_rows = labels(run, "train_labels"), labels(run, "val_labels")
    train_paths, val_paths = set(train_rows.path), set(val_rows.path)
    assert len(val_paths) == 6 and not train_paths & val_paths
    labelled = {str(ml_folder / p) for p in pd.read_csv(ml_folder / "train.csv").path}
    assert train_paths | val_paths == labelled
    assert not val_paths & {str(ml_folder / p) for p in pd.read_csv(ml_folder / "test.csv").path}
    # the held-out images keep only the entries the mask lets the run see
    mask = labels(run, "mask").set_index("path").loc[val_rows.path]
    assert ((val_rows.set_index("path") == -1) == (mask == 0)).all().all() and (mask == 0).any().any()
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics.loc[metrics.metric == "n_images", "value"].item() == 8  # the test split is untouched
    assert set(labels(fit_with("2"), "val_labels").path) != val_paths


# --- resuming --------------------------------------------------------------------------------------------

def test_resumed_adam_onecycle_ema_run_ends_as_an_uninterrupted_one(tiny_clip, ml_folder, tmp_path, monkeypatch):
    args = ["--method", "scpnet", "--preset", "scpnet-voc", "--tasks", f"ml={ml_folder}", "--backbone", tiny_clip,
            "--epochs", "4", "--batch-size", "8", "--aug-views", "2", "--topk", "2", "--val-ratio", "0.25",
            "--lr", "0.01", "--graph-lr", "0.01", "--ema-decay", "0.8"]
    fit_json(*args, "--out", tmp_path / "straight")
    interrupt_after(monkeypatch, 2)
    code, _, err = cli("fit", *args, "--quiet", "--out", tmp_path / "cut")
    assert code == 2 and "--resume" in err
    fit_json("--resume", tmp_path / "cut")
    a, b = (torch.load(tmp_path / r / "checkpoint.pt", weights_only=True)["state"] for r in ("straight", "cut"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    history = [pd.read_csv(tmp_path / r / "history.csv").drop(columns="time_s") for r in ("straight", "cut")]
    assert history[0].equals(history[1]) and history[0].lr.nunique() == 4
    assert config(tmp_path / "cut")["selected"] == config(tmp_path / "straight")["selected"]
    assert pd.read_csv(tmp_path / "straight" / "metrics.csv").equals(pd.read_csv(tmp_path / "cut" / "metrics.csv"))
