"""The SoftCPT protocol through the CLI: task files, per-task headline metrics, missing benchmarks."""

import json

import pandas as pd
import pytest

from tests.conftest import COLOURS, cli, colour_folder, fit_json


def test_task_file_sets_titles_class_names_and_headline_metrics(tiny_clip, tmp_path):
    colour_folder(tmp_path / "warm", per_class=10, classes={k: COLOURS[k] for k in ("red", "yellow_ochre")}, split=True)
    colour_folder(tmp_path / "cold", per_class=10, classes={k: COLOURS[k] for k in ("green", "blue")}, split=True, seed=1)
    (tmp_path / "tasks.yaml").write_text(
        "tasks:\n"
        "  - {name: warm, path: warm, title: warm colour, classnames: [scarlet, ochre]}\n"
        "  - {name: cold, path: cold, metric: mean_per_class_accuracy}\n"
    )
    fit_json("--method", "softcpt", "--tasks", tmp_path / "tasks.yaml", "--backbone", tiny_clip, "--shots", "2",
             "--epochs", "2", "--out", tmp_path / "run")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert [t["title"] for t in config["tasks"]] == ["warm colour", "cold"]
    assert config["tasks"][0]["classnames"] == ["scarlet", "ochre"]
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv").set_index(["task", "metric"])["value"]
    assert metrics[("warm", "headline")] == metrics[("warm", "accuracy")]
    assert metrics[("cold", "headline")] == metrics[("cold", "mean_per_class_accuracy")]
    assert metrics[("mean", "headline")] == pytest.approx((metrics[("warm", "headline")] + metrics[("cold", "headline")]) / 2)


@pytest.mark.parametrize("suite,count", [("general10", 10), ("plant6", 6)])
def test_missing_benchmark_data_lists_every_folder(tiny_clip, tmp_path, suite, count):
    code, _, err = cli("fit", "--method", "softcpt", "--tasks", suite, "--data-root", tmp_path, "--backbone", tiny_clip,
                       "--out", tmp_path / "run")
    assert code == 2 and "Traceback" not in err
    assert err.count(str(tmp_path)) >= count and "CPT_DATA_ROOT" in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
