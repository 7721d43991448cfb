"""`cpt eval` on multi-label runs: PR curves, several runs compared, tasks reloaded from their label source."""

from __future__ import annotations

import json
from dataclasses import asdict

import pandas as pd
import pytest
from PIL import Image

from cpt.eval.evaluate import run_label
from cpt.data.multilabel import LabelSource
from tests.conftest import cli, fit_json, session_cache, two_colour_rows


@pytest.fixture(scope="module")
def ml_runs(toy_ml_zeroshot, tmp_path_factory):
    """Zero-shot toy-ml runs: known ratio 0.5 (seed 1), 1.0 (seeds 1 and 2); the second is the session's."""
    root = tmp_path_factory.mktemp("ml-runs")
    runs = [root / "zs-0.5-1", toy_ml_zeroshot.run, root / "zs-1.0-2"]
    with pytest.MonkeyPatch.context() as mp:  # the session's cache: the autouse fixture is per test
        mp.setenv("CPT_CACHE", str(session_cache(tmp_path_factory)))
        for run, ratio, seed in ((runs[0], "0.5", "1"), (runs[2], "1.0", "2")):
            fit_json("--method", "zeroshot", "--tasks", "toy-ml", "--backbone", "toy", "--known-ratio", ratio,
                     "--seed", seed, "--out", run)
    return runs


def map_of(run) -> float:
    metrics = pd.read_csv(run / "metrics.csv")
    return metrics.loc[metrics.metric == "mAP", "value"].item()


def test_eval_writes_pr_curves_into_the_run(ml_runs):
    run = ml_runs[0]
    code, _, err = cli("eval", run, "--quiet")
    assert code == 0, err
    assert "](pr_toy-ml.png)" in (run / "report.md").read_text()
    with Image.open(run / "pr_toy-ml.png") as im:
        im.verify()
        assert im.format == "PNG"


def test_several_runs_are_compared(ml_runs, tmp_path):
    out = tmp_path / "compare"
    code, stdout, err = cli("eval", *ml_runs, "--out", out, "--json", "--quiet")
    assert code == 0, err
    assert json.loads(stdout)["out"] == str(out)
    table = pd.read_csv(out / "comparison.csv")
    assert list(table.columns) == ["run", "label", "method", "kind", "shots", "known_ratio", "frames", "seed", "task",
                                   "metric", "value"]
    assert table.run.tolist() == [str(r) for r in ml_runs]
    assert table.known_ratio.tolist() == [0.5, 1.0, 1.0] and table.seed.tolist() == [1, 1, 2]
    assert set(table.label) == set(table.method) == {"zeroshot"} and set(table.task) == {"toy-ml"}
    assert set(table.kind) == {"multi-label"} and set(table.metric) == {"mAP"}
    assert table.value.tolist() == pytest.approx([map_of(r) for r in ml_runs])
    text = (out / "report.md").read_text()
    assert "](map_vs_known_ratio.png)" in text and "| zeroshot | 1.00 | toy-ml | mAP |" in text
    with Image.open(out / "map_vs_known_ratio.png") as im:
        im.verify()
        assert im.format == "PNG"
    assert all((r / "pr_toy-ml.png").exists() for r in ml_runs)  # each run re-evaluated into its folder


def test_runs_of_both_kinds_are_compared_each_by_its_headline(ml_runs, tiny_clip, colours, tmp_path):
    code, _, err = cli("eval", *ml_runs[:2])
    assert code == 2 and "--out" in err
    single = tmp_path / "single"
    fit_json("--method", "zeroshot", "--tasks", f"colours={colours}", "--backbone", tiny_clip, "--out", single)
    code, _, err = cli("eval", ml_runs[0], single, "--out", tmp_path / "c", "--quiet")
    assert code == 0, err
    table = pd.read_csv(tmp_path / "c" / "comparison.csv")
    assert table.kind.tolist() == ["multi-label", "single-label"] and table.metric.tolist() == ["mAP", "headline"]
    accuracy = pd.read_csv(single / "metrics.csv").query("metric == 'accuracy'").value.item()
    assert table.value.tolist() == pytest.approx([map_of(ml_runs[0]), accuracy])
    assert table.shots.isna().tolist() == [True, False] and table.known_ratio.isna().tolist() == [False, True]
    text = (tmp_path / "c" / "report.md").read_text()
    assert "](map_vs_known_ratio.png)" in text and "](accuracy_vs_shots.png)" in text


def test_run_label_names_the_switched_on_flags():
    assert run_label({"method": "coop", "options": {"shots": 4}}) == "coop"
    options = {"no_prior": True, "no_gcn": False, "single_positive": True, "known_ratio": 0.5}
    assert run_label({"method": "scpnet", "options": options}) == "scpnet (no_prior, single_positive)"
    # runs of one method with and without a preset are told apart in comparisons
    assert run_label({"method": "scpnet", "preset": "scpnet-coco", "options": {"no_gcn": True}}) == (
        "scpnet (preset scpnet-coco, no_gcn)")


def test_tasks_reload_from_their_recorded_label_source(tiny_clip, tmp_path):
    data = tmp_path / "data"
    rows = two_colour_rows(data)
    for split in ("train", "held_out"):
        (data / f"{split}.csv").write_text("path,red,blue\n" + "".join(rows))
    (data / "test.csv").write_text("path,red,blue\n" + "".join(rows[:4]))
    run = tmp_path / "run"
    fit_json("--method", "zeroshot", "--tasks", f"ml={data}", "--backbone", tiny_clip, "--out", run)
    config = json.loads((run / "config.json").read_text())
    assert pd.read_csv(run / "metrics.csv").query("metric == 'n_images'").value.item() == 4
    source = LabelSource(str(data / "train.csv"), str(data / "held_out.csv"))
    config["tasks"][0] = {**config["tasks"][0], "source": str(tmp_path / "gone"), "label_source": asdict(source)}
    (run / "config.json").write_text(json.dumps(config))
    code, _, err = cli("eval", run, "--quiet")
    assert code == 0, err
    assert pd.read_csv(run / "metrics.csv").query("metric == 'n_images'").value.item() == 8
