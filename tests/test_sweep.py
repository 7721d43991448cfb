"""`cpt sweep`: every combination runs once, results gathered into a CSV, a table and a plot."""

import json

import pandas as pd
import pytest
from PIL import Image

from cpt.errors import CptError
from cpt.kinds import KINDS
from cpt.sweep import parse_method
from tests.conftest import cli


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


def test_known_ratio_sweep_with_ablations(tiny_clip, tmp_path):
    args = ["sweep", "--tasks", "toy-ml", "--backbone", tiny_clip, "--methods", "zeroshot,scpnet+no-self-training",
            "--known-ratios", "0.2,0.6", "--seeds", "1", "--epochs", "1", "--out", tmp_path, "--quiet"]
    code, _, err = cli(*args)
    assert code == 0, err
    results = pd.read_csv(tmp_path / "results.csv")
    maps = results[results.metric == "mAP"]
    assert sorted(zip(maps.method, maps.known_ratio)) == [("scpnet+no-self-training", 0.2), ("scpnet+no-self-training", 0.6),
                                                          ("zeroshot", 0.2), ("zeroshot", 0.6)]
    config = json.loads((tmp_path / "scpnet+no-self-training-known0.2-seed1" / "config.json").read_text())
    assert config["request"]["options"]["no_self_training"] and config["resolved"]["kind"]["known_ratio"] == 0.2
    table = (tmp_path / "table.md").read_text().splitlines()
    assert table[0] == "| method | known 0.2 | known 0.6 |"
    zs = maps[maps.method == "zeroshot"]["value"]
    assert table[2] == f"| zeroshot | {zs.iloc[0]:.1f} ± 0.0 | {zs.iloc[1]:.1f} ± 0.0 |"
    with Image.open(tmp_path / "map_vs_known_ratio.png") as im:
        assert im.format == "PNG"
    code, _, err = cli("sweep", "--tasks", "toy-ml", "--out", tmp_path, "--methods", "scpnet+no-brain", "--known-ratios", "0.5")
    assert code == 2 and "no-brain" in err


def test_sweep_labels_take_the_methods_declared_switches():
    single, multi = KINDS["single-label"], KINDS["multi-label"]
    assert parse_method("coop+class-specific", single) == ("coop", {"class_specific": True})
    assert parse_method("scpnet+no-prior+no-gcn", multi) == ("scpnet", {"no_prior": True, "no_gcn": True})
    assert parse_method("scpnet+single-positive", multi) == ("scpnet", {"single_positive": True})  # a kind's switch
    with pytest.raises(CptError) as info:
        parse_method("scpnet+no-brain", multi)
    message = str(info.value)
    assert "--no-brain is not a switch of scpnet" in message
    switches = message.split("its switches are ")[1].rstrip(".").split(", ")
    assert {"no-prior", "no-gcn", "no-self-training", "finetune-image", "single-positive", "amp"} <= set(switches)
    assert switches == sorted(switches) and "lambda-u" not in switches  # numbers are not switches
    assert "class-specific" not in switches  # declared for prompts, excluded by scpnet
    with pytest.raises(CptError, match="single-positive"):
        parse_method("coop+single-positive", single)  # multi-label tasks only
    with pytest.raises(CptError, match="its switches are amp, class-specific, grad-checkpoint"):
        parse_method("coop+single-positive", multi)  # a switch coop excludes: it has no loss for it
