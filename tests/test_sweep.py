"""`cpt sweep`: every combination runs once, results gathered into a CSV, a table and a plot."""

import pandas as pd
from PIL import Image

from tests.test_cli_fit import cli


def test_sweep_gathers_and_reuses_runs(tiny_clip, colours, tmp_path):
    args = ["sweep", "--tasks", f"colours={colours}", "--backbone", tiny_clip, "--methods", "zeroshot,coop",
            "--shots", "1,2", "--seeds", "1,2", "--epochs", "2", "--out", tmp_path, "--quiet"]
    code, _, err = cli(*args)
    assert code == 0, err
    results = pd.read_csv(tmp_path / "results.csv")
    assert {"task", "split", "metric", "value", "method", "shots", "seed"} <= set(results.columns)
    runs = results[results.metric == "accuracy"][["method", "shots", "seed"]]
    assert len(runs) == 8 and len(runs.drop_duplicates()) == 8
    table = (tmp_path / "table.md").read_text().splitlines()
    assert table[0] == "| method | 1 shot | 2 shots |" and table[2].startswith("| zeroshot |")
    coop = results[(results.method == "coop") & (results.shots == 2) & (results.metric == "accuracy")]["value"]
    assert f"{coop.mean():.1f} ± {coop.std():.1f}" in table[3]
    with Image.open(tmp_path / "accuracy_vs_shots.png") as im:
        assert im.format == "PNG"

    stamp = (tmp_path / "coop-2shot-seed1" / "checkpoint.pt").stat().st_mtime_ns
    code, _, err = cli(*args)
    assert code == 0, err
    assert (tmp_path / "coop-2shot-seed1" / "checkpoint.pt").stat().st_mtime_ns == stamp  # reused, not re-run
    code, _, err = cli("sweep", "--tasks", f"colours={colours}", "--out", tmp_path, "--shots", "a,b")
    assert code == 2 and "--shots" in err
