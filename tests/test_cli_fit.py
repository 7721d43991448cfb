"""End-to-end `cpt fit` / `cpt eval` through the real CLI, on image folders and the tiny CLIP."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from cpt_cli.main import app

import cpt
from cpt import run as R
from tests.conftest import accuracy, cli, colour_folder, fit_json, interrupt_after, runner

def test_tuned_prompts_and_linear_probe_beat_zero_shot(tiny_clip, colours, tmp_path):
    """On a visually separable task a random CLIP's zero-shot is near chance; learning must help."""
    common = ["--tasks", f"colours={colours}", "--backbone", tiny_clip, "--seed", "1", "--shots", "8"]
    zs = accuracy(fit_json("--method", "zeroshot", *common, "--out", tmp_path / "zs"))
    lp = accuracy(fit_json("--method", "linear-probe", *common, "--out", tmp_path / "lp"))
    cs = accuracy(
        fit_json("--method", "coop", "--class-specific", "--n-ctx", "4", "--epochs", "30", "--lr", "0.05",
                 *common, "--out", tmp_path / "cs")
    )
    assert zs < 60
    assert lp >= zs + 30, (zs, lp)
    assert cs >= zs + 30, (zs, cs)


def test_run_directory_contents(tiny_clip, colours, tmp_path):
    run = tmp_path / "run"
    summary = fit_json("--method", "coop", "--tasks", f"colours={colours}", "--backbone", tiny_clip,
                       "--shots", "4", "--epochs", "3", "--n-ctx", "4", "--out", run)
    assert summary["run"] == str(run)
    config = json.loads((run / "config.json").read_text())
    assert config["status"] == "finished"
    assert config["resolved"]["kind"]["shots"] == 4 and config["resolved"]["train"]["epochs"] == 3
    assert config["backbone"]["sha256"] and config["versions"]["torch"] == torch.__version__
    assert config["tasks"][0]["classnames"] == ["blue", "green", "red", "yellow ochre"]

    checkpoint = torch.load(run / "checkpoint.pt", weights_only=False)
    assert set(checkpoint["state"]) == {"ctx.0"}  # learnable parameters only: no CLIP weights
    assert checkpoint["state"]["ctx.0"].shape == (4, 64) and checkpoint["done"]

    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics.columns) == ["task", "split", "metric", "value"]
    assert {"accuracy", "mean_per_class_accuracy", "macro_f1"} <= set(metrics.metric)
    assert (metrics.split == "test").all()
    per_class = pd.read_csv(run / "per_class.csv")
    assert len(per_class) == 4 and per_class.support.sum() == 4 * 6
    history = pd.read_csv(run / "history.csv")
    assert list(history.epoch) == [1, 2, 3] and {"loss", "lr", "time_s"} <= set(history.columns)
    assert history.lr.iloc[0] == pytest.approx(1e-5)  # CoOp's constant warm-up epoch
    splits = pd.read_csv(run / "splits.csv")
    counts = splits[splits.split == "train"].groupby("label").size()
    assert (counts == 4).all()  # K shots per class, the list saved for reproduction
    assert (splits[splits.split == "val"].groupby("label").size() == 3).all()  # min(K, 4) but only 3 val images
    assert "starting run" in (run / "fit.log").read_text()
    assert (run / "report.md").exists() and (run / "skipped.csv").exists()


def test_second_fit_encodes_no_image(tiny_clip, colours, tmp_path, monkeypatch):
    calls = {"images": 0}
    original = torch.nn.Module.__call__

    def counting(module, *args, **kwargs):
        if type(module).__name__ == "VisionTransformer":
            calls["images"] += args[0].shape[0]
        return original(module, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "__call__", counting)
    cache = tmp_path / "cache"
    args = ["--method", "coop", "--tasks", f"colours={colours}", "--backbone", tiny_clip, "--shots", "2",
            "--epochs", "1", "--cache-dir", cache]
    first = fit_json(*args, "--out", tmp_path / "a")
    n_images = 4 * 2 + 4 * 6  # train images (8 views each, one encoder call per image) + test images
    assert first["images_encoded"] == n_images and first["images_from_cache"] == 0
    assert calls["images"] == 4 * 2 * 8 + 4 * 6
    calls["images"] = 0
    second = fit_json(*args, "--seed", "1", "--out", tmp_path / "b")
    assert second["images_encoded"] == 0 and calls["images"] == 0
    assert second["images_from_cache"] == n_images


def test_existing_run_is_refused_then_overwritten(tiny_clip, colours, tmp_path):
    args = ["fit", "--method", "zeroshot", "--tasks", f"colours={colours}", "--backbone", tiny_clip, "--quiet"]
    assert cli(*args, "--out", tmp_path / "r")[0] == 0
    code, _, err = cli(*args, "--out", tmp_path / "r")
    assert code == 2 and "already exists" in err and "--resume" in err and "--overwrite" in err
    assert cli(*args, "--out", tmp_path / "r", "--overwrite")[0] == 0
    (tmp_path / "notarun").mkdir()
    (tmp_path / "notarun" / "precious.txt").write_text("keep me")
    code, _, err = cli(*args, "--out", tmp_path / "notarun", "--overwrite")
    assert code == 2 and (tmp_path / "notarun" / "precious.txt").exists()


def test_corrupt_and_non_image_files_are_skipped_and_listed(tiny_clip, tmp_path):
    data = colour_folder(tmp_path / "data", per_class=6, split=True)
    (data / "test" / "red" / "broken.png").write_bytes(b"\x89PNG not really")
    (data / "train" / "blue" / "notes.txt").write_text("not an image")
    summary = fit_json("--method", "zeroshot", "--tasks", f"d={data}", "--backbone", tiny_clip, "--out", tmp_path / "r")
    skipped = pd.read_csv(tmp_path / "r" / "skipped.csv")
    assert set(skipped.path.map(lambda p: Path(p).name)) == {"broken.png", "notes.txt"}
    assert summary["skipped"] == 2
    n_images = next(m["value"] for m in summary["metrics"] if m["metric"] == "n_images")
    assert n_images == 4 * 3  # the broken test image is not counted


def test_missing_path_and_empty_class_exit_2(tiny_clip, tmp_path):
    code, _, err = cli("fit", "--tasks", f"x={tmp_path / 'nowhere'}", "--backbone", tiny_clip, "--out", tmp_path / "r")
    assert code == 2 and "nowhere" in err and "Traceback" not in err
    assert not (tmp_path / "r" / "checkpoint.pt").exists()
    data = colour_folder(tmp_path / "data", per_class=6)
    for f in (data / "green").iterdir():
        f.unlink()
    code, _, err = cli("fit", "--tasks", f"x={data}", "--backbone", tiny_clip, "--out", tmp_path / "r2")
    assert code == 2 and "green" in err


def test_nan_loss_is_a_clear_error_and_keeps_the_last_checkpoint(tiny_clip, colours, tmp_path):
    code, _, err = cli("fit", "--method", "coop", "--tasks", f"colours={colours}", "--backbone", tiny_clip,
                       "--shots", "2", "--epochs", "4", "--warmup-epochs", "0", "--lr", "1e38", "--quiet",
                       "--out", tmp_path / "r")
    assert code == 2 and "loss became" in err and "--resume" in err


def test_interrupted_run_resumes_exactly(tiny_clip, colours, tmp_path, monkeypatch):
    args = ["--method", "coop", "--tasks", f"colours={colours}", "--backbone", tiny_clip, "--shots", "4",
            "--epochs", "5", "--n-ctx", "4", "--lr", "0.01"]
    fit_json(*args, "--out", tmp_path / "straight")

    interrupt_after(monkeypatch, 2)
    code, _, err = cli("fit", *args, "--quiet", "--out", tmp_path / "cut")
    assert code == 2 and "--resume" in err
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)["train_state"]["epoch"] == 2
    assert not (tmp_path / "cut" / "metrics.csv").exists()
    # a checkpoint written before the optimiser groups carried their peak rate resumes as well
    path = tmp_path / "cut" / "checkpoint.pt"
    ckpt = torch.load(path, weights_only=False)
    for group in ckpt["train_state"]["optimizer"]["param_groups"]:
        group.pop("peak_lr")
    torch.save(ckpt, path)

    resumed = fit_json("--resume", tmp_path / "cut")
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)["state"]["ctx.0"]
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)["state"]["ctx.0"]
    assert torch.equal(a, b)
    assert len(pd.read_csv(tmp_path / "cut" / "history.csv")) == 5
    assert resumed["images_encoded"] == 0


def test_eval_reproduces_fit_and_evaluates_other_data(tiny_clip, colours, tmp_path):
    run = tmp_path / "run"
    fitted = fit_json("--method", "linear-probe", "--tasks", f"colours={colours}", "--backbone", tiny_clip,
                      "--shots", "4", "--out", run)
    code, out, err = cli("eval", run, "--json", "--quiet")
    assert code == 0, err
    assert json.loads(out)["metrics"] == fitted["metrics"]

    other = tmp_path / "other"
    shutil.copytree(colours / "test" / "red", other / "red")
    shutil.copytree(colours / "test" / "blue", other / "blue")
    code, out, err = cli("eval", run, "--data", other, "--json", "--quiet")
    assert code == 0, err
    result = json.loads(out)
    assert Path(result["out"]) == run / "eval-other"
    per_class = pd.read_csv(run / "eval-other" / "per_class.csv")
    assert per_class.set_index("class").loc[["blue", "red"], "support"].tolist() == [6, 6]
    assert per_class.set_index("class").loc[["green"], "support"].tolist() == [0]

    code, out, err = cli("eval", tiny_clip, "--data", other, "--out", tmp_path / "zs", "--json", "--quiet")
    assert code == 0, err
    assert (tmp_path / "zs" / "metrics.csv").exists()
    code, _, err = cli("eval", tmp_path / "nothing-here")
    assert code == 2 and "not a run directory" in err


def test_templates_ensemble_and_custom(tiny_clip, colours, tmp_path):
    common = ["--method", "zeroshot", "--tasks", f"colours={colours}", "--backbone", tiny_clip]
    fit_json(*common, "--template", "ensemble", "--out", tmp_path / "e")
    assert len(json.loads((tmp_path / "e" / "config.json").read_text())["resolved"]["method"]["template"]) == 7
    fit_json(*common, "--template", "a {} thing.", "--template", "a photo of a {}.", "--out", tmp_path / "c")
    templates = json.loads((tmp_path / "c" / "config.json").read_text())["resolved"]["method"]["template"]
    assert templates == ["a {} thing.", "a photo of a {}."]
    code, _, err = cli("fit", *common, "--template", "no placeholder", "--out", tmp_path / "bad")
    assert code == 2 and "{}" in err


def test_bf16_coop_reports_its_own_predictions_and_follows_fp32(tiny_clip, colours, tmp_path):
    common = ["--method", "coop", "--tasks", f"colours={colours}", "--backbone", tiny_clip, "--shots", "2",
              "--epochs", "2", "--n-ctx", "4"]
    summary = fit_json(*common, "--precision", "bf16", "--out", tmp_path / "bf16")
    fit_json(*common, "--out", tmp_path / "fp32")
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["backbone"]["precision"] == "bf16"

    predictions = pd.read_csv(tmp_path / "bf16" / "predictions.csv")
    assert len(predictions) == 4 * 6
    assert accuracy(summary) == pytest.approx(100 * (predictions.label == predictions.prediction).mean())
    metrics = pd.read_csv(tmp_path / "bf16" / "metrics.csv").set_index("metric").value
    assert metrics["accuracy"] == pytest.approx(accuracy(summary))

    # the same run in fp32 gives the same logits up to bf16's rounding (logits span about +-1 here)
    def logits(run):
        code, out, err = cli("predict", run, colours / "test", "--jsonl", "--quiet")
        assert code == 0, err
        return {r["path"]: r["logits"] for r in map(json.loads, out.splitlines())}

    low, full = logits(tmp_path / "bf16"), logits(tmp_path / "fp32")
    assert sorted(low) == sorted(full) == sorted(predictions.path)
    spread = max(abs(v) for row in full.values() for v in row)
    assert spread > 0.3
    for path, row in full.items():
        np.testing.assert_allclose(low[path], row, atol=0.25 * spread)


def test_help_lists_methods_with_examples_and_bugs_exit_1(tiny_clip, colours, tmp_path, monkeypatch):
    help_text = runner.invoke(app, ["fit", "--help"], env={"COLUMNS": "300"})
    assert help_text.exit_code == 0
    assert ("One of: zeroshot, linear-probe, lp++, tip-adapter, tip-adapter-f, coop, coop-shared, kgcoop, softcpt, scpnet, "
            "zeroshot-video, coop-video, clip4clip, dgl, tempme, maple.") in help_text.stdout
    assert "Examples" in help_text.stdout

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("cpt.fit.load_backbone", broken)
    code, _, err = cli("fit", "--tasks", f"colours={colours}", "--backbone", tiny_clip, "--out", tmp_path / "r")
    assert code == 1 and "internal error" in err and "boom" in err


def test_version_is_the_installed_packages():
    code, out, _ = cli("--version")
    assert code == 0 and out.strip() == f"cpt {importlib.metadata.version('cpt-clip')}" == f"cpt {cpt.__version__}"
