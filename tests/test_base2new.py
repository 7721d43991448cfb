"""Base-to-new: train on the base half of each task's classes, evaluate on the unseen new half, and
the sweep's table of base, new and their harmonic mean."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from cpt.data.tasks import Sample, Task, class_half
from cpt.errors import CptError
from tests.conftest import cli, fit_json


def test_halves_follow_coops_rule_and_renumber_labels():
    names = ["a", "b", "c", "d", "e"]
    samples = {split: [Sample(Path(f"/{split}/{c}.png"), c) for c in range(5)] for split in ("train", "val", "test")}
    task = Task("t", names, samples, "src", "t")
    base, new = class_half(task, "base"), class_half(task, "new")
    assert base.classnames == ["a", "b", "c"] and new.classnames == ["d", "e"]  # ceil(5 / 2) base classes
    assert [(s.path.name, s.label) for s in new.splits["test"]] == [("3.png", 0), ("4.png", 1)]
    assert [s.label for s in base.splits["train"]] == [0, 1, 2]
    assert class_half(task, "all") is task
    with pytest.raises(CptError, match="at least four"):
        class_half(Task("t", names[:3], samples, "src", "t"), "base")


def accuracy_of(metrics: list[dict]) -> float:
    return next(m["value"] for m in metrics if m["metric"] == "accuracy" and m["task"] == "colours")


def test_a_base_run_evaluates_on_the_new_classes(tiny_clip, colours, tmp_path):
    common = ("--tasks", f"colours={colours}", "--backbone", tiny_clip, "--shots", "4")
    fit_json("--method", "coop", *common, "--classes", "base", "--epochs", "2", "--n-ctx", "4", "--out", tmp_path / "b")
    base = pd.read_csv(tmp_path / "b" / "predictions.csv")
    assert set(base.label) == {"blue", "green"} and len(base) == 12
    code, out, err = cli("eval", tmp_path / "b", "--classes", "new", "--json", "--quiet")
    assert code == 0, err
    new = pd.read_csv(tmp_path / "b" / "classes-new" / "predictions.csv")
    assert set(new.label) == {"red", "yellow ochre"} and set(new.prediction) <= {"red", "yellow ochre"}
    assert sorted(new.path) == sorted(str(p) for c in ("red", "yellow_ochre") for p in (colours / "test" / c).glob("*"))

    # zero-shot trained on base and evaluated on new is zero-shot on the new classes
    fit_json("--method", "zeroshot", *common, "--classes", "base", "--out", tmp_path / "zb")
    code, out, err = cli("eval", tmp_path / "zb", "--classes", "new", "--json", "--quiet")
    direct = fit_json("--method", "zeroshot", *common, "--classes", "new", "--out", tmp_path / "zn")
    assert accuracy_of(json.loads(out)["metrics"]) == accuracy_of(direct["metrics"])


def test_methods_with_per_class_weights_and_full_runs_are_refused(tiny_clip, colours, tmp_path):
    common = ("--tasks", f"colours={colours}", "--backbone", tiny_clip, "--shots", "2")
    fit_json("--method", "linear-probe", *common, "--classes", "base", "--out", tmp_path / "lp")
    code, _, err = cli("eval", tmp_path / "lp", "--classes", "new")
    assert code == 2 and "never saw" in err and not (tmp_path / "lp" / "classes-new").exists()
    fit_json("--method", "zeroshot", *common, "--out", tmp_path / "all")
    code, _, err = cli("eval", tmp_path / "all", "--classes", "new")
    assert code == 2 and "--classes base" in err
    code, _, err = cli("sweep", *common[:4], "--methods", "zeroshot,tip-adapter", "--shots", "2", "--seeds", "1",
                       "--protocol", "base2new", "--out", tmp_path / "sw")
    assert code == 2 and "tip-adapter" in err and not (tmp_path / "sw").exists()


def test_base2new_sweep_tabulates_the_harmonic_mean(tiny_clip, colours, tmp_path):
    code, _, err = cli("sweep", "--tasks", f"colours={colours}", "--backbone", tiny_clip, "--methods", "zeroshot,coop",
                       "--shots", "2", "--seeds", "1,2", "--epochs", "2", "--protocol", "base2new", "--out",
                       tmp_path / "sw", "--quiet")
    assert code == 0, err
    results = pd.read_csv(tmp_path / "sw" / "results.csv")
    assert set(results.classes) == {"base", "new"}
    acc = results[(results.metric == "accuracy") & (results.task == "colours")]
    table = (tmp_path / "sw" / "table.md").read_text().splitlines()
    assert table[0] == "| method | shots | base | new | H |"
    for line, method in zip(table[2:], ("zeroshot", "coop")):
        runs = acc[acc.method == method].pivot_table(index="seed", columns="classes", values="value")
        hm = 2 * runs.base * runs.new / (runs.base + runs.new)
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[:2] == [method, "2"]
        assert cells[2].startswith(f"{runs.base.mean():.1f} ± ") and cells[3].startswith(f"{runs.new.mean():.1f} ± ")
        assert cells[4] == f"{hm.mean():.1f} ± {hm.std():.1f}"
    # the finished sweep is reused, new-class evaluations included
    code, _, err = cli("sweep", "--gather", tmp_path / "sw", "--quiet")
    assert code == 0, err
