"""`cpt sweep`: every combination runs once, results gathered into a CSV, a table and a plot; a
sweep split into shards (separate calls, processes at once, torchrun ranks) gathers the same results."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from cpt.errors import CptError
from cpt.kinds import KINDS
from cpt.sweep import Shard, parse_method, parse_shard
from tests.conftest import cli, session_cache


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
    # each run's fitting seconds: a trained run's are its epochs' (history.csv), tabulated per method and shots
    seconds = pd.read_csv(tmp_path / "seconds.csv").set_index(["method", "shots", "seed"])["train_s"]
    assert len(seconds) == 8 and (seconds >= 0).all()
    epochs = [pd.read_csv(tmp_path / f"coop-2shot-seed{seed}" / "history.csv").time_s.sum() for seed in (1, 2)]
    assert [seconds["coop", 2, seed] for seed in (1, 2)] == pytest.approx(epochs, abs=0.01)
    timing = (tmp_path / "seconds.md").read_text().splitlines()
    assert timing[0] == "| training s/run | 1 shot | 2 shots |" and timing[3].startswith("| coop |")
    assert timing[3].endswith(f"| {sum(epochs) / 2:.1f} |")
    with Image.open(tmp_path / "accuracy_vs_shots.png") as im:
        assert im.format == "PNG"

    stamp = (tmp_path / "coop-2shot-seed1" / "checkpoint.pt").stat().st_mtime_ns
    code, _, err = cli(*args)
    assert code == 0, err
    assert (tmp_path / "coop-2shot-seed1" / "checkpoint.pt").stat().st_mtime_ns == stamp  # reused, not re-run
    code, _, err = cli("sweep", "--tasks", f"colours={colours}", "--out", tmp_path, "--shots", "a,b")
    assert code == 2 and "--shots" in err


def test_sweep_passes_fit_options_and_presets_to_the_runs_they_apply_to(tiny_clip, colours, tmp_path):
    common = ["sweep", "--tasks", f"colours={colours}", "--backbone", tiny_clip, "--methods", "zeroshot,coop",
              "--shots", "1", "--seeds", "1", "--quiet"]
    code, _, err = cli(*common, "--epochs", "2", "--crop-scale", "1.0", "--n-ctx", "4", "--preset", "coop-paper",
                       "--out", tmp_path / "sw")
    assert code == 0, err
    coop = json.loads((tmp_path / "sw" / "coop-1shot-seed1" / "config.json").read_text())
    assert coop["request"]["options"] == {"epochs": 2, "crop_scale": 1.0, "n_ctx": 4, "shots": 1}
    assert coop["request"]["preset"] == "coop-paper" and coop["resolved"]["preset"]["name"] == "coop-paper"
    assert coop["resolved"]["train"]["epochs"] == 2 and coop["resolved"]["method"]["n_ctx"] == 4
    zeroshot = json.loads((tmp_path / "sw" / "zeroshot-1shot-seed1" / "config.json").read_text())
    assert zeroshot["request"]["options"] == {"shots": 1} and zeroshot["request"]["preset"] is None

    for extra, said in ((["--seed", "3"], "sets --seed per run; give --seeds"),
                        (["--nope", "1"], "No such option: --nope"),
                        (["--lr", "abc"], "Invalid value for '--lr'"),
                        (["--crop-scale", "2"], "--crop-scale 2 is out of range"),  # checked before zeroshot runs
                        (["--kg-weight", "2"], "--kg-weight is an option of none of the sweep's methods"),
                        (["--preset", "kgcoop-paper"], "--preset kgcoop-paper is a preset of none")):
        code, _, err = cli(*common, *extra, "--out", tmp_path / "refused")
        assert code == 2 and said in " ".join(err.split()), (extra, err)
        assert not (tmp_path / "refused").exists()


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
    assert parse_method("lp++", single) == ("lp++", {})  # a name with a + is not a switch
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


# --- shards ------------------------------------------------------------------------------------------

SHARDED = ["--methods", "zeroshot,coop", "--shots", "1,2,4", "--seeds", "1", "--epochs", "2", "--device", "cpu"]
RUNS = [f"{m}-{s}shot-seed1" for m in ("zeroshot", "coop") for s in (1, 2, 4)]  # the run list, in its order


def sweep_args(tiny_clip, colours, out, *extra) -> list:
    return ["sweep", "--tasks", f"colours={colours}", "--backbone", tiny_clip, *SHARDED, "--out", out, *extra]


def manifest(out: Path, shard: str) -> dict:
    return json.loads((out / "shards" / f"{shard.replace('/', '-of-')}.json").read_text())


@pytest.fixture(scope="module")
def whole(tiny_clip, colours, tmp_path_factory) -> Path:
    """The sweep run whole, once: what every sharded run of it must reproduce."""
    out = tmp_path_factory.mktemp("whole")
    with pytest.MonkeyPatch.context() as mp:  # the session's cache: the autouse fixture is per test
        mp.setenv("CPT_CACHE", str(session_cache(tmp_path_factory)))
        code, _, err = cli(*sweep_args(tiny_clip, colours, out, "--quiet"))
    assert code == 0, err
    assert json.loads((out / "sweep.json").read_text())["runs"] == RUNS and not (out / "shards").exists()
    return out


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7])
def test_shards_partition_the_run_list(count):
    shares = [[i for i in range(10) if Shard(k, count).owns(i)] for k in range(1, count + 1)]
    assert sorted(i for share in shares for i in share) == list(range(10))  # disjoint and complete
    assert max(map(len, shares)) - min(map(len, shares)) <= 1  # balanced
    assert shares == [list(range(k - 1, 10, count)) for k in range(1, count + 1)]  # runs I, I+N, ... (from 1)
    assert parse_shard(f" {count}/{count}") == Shard(count, count)


@pytest.mark.parametrize("text, fragment", [("3/2", "no shard 3 of 2"), ("0/4", "$((INDEX+1))/4"),
                                            ("1/0", "at least 1"), ("2", "takes I/N"), ("-1/2", "takes I/N")])
def test_bad_shards_are_refused(text, fragment):
    with pytest.raises(CptError) as info:
        parse_shard(text)
    assert fragment in str(info.value)


def test_two_shards_gathered_give_the_whole_sweeps_results(tiny_clip, colours, whole, tmp_path):
    code, out, err = cli(*sweep_args(tiny_clip, colours, tmp_path, "--shard", "1/2", "--json"))
    assert code == 0, err
    assert "shard 1/2: its 3 runs have finished; 3 runs of other shards have not yet" in err
    first = [RUNS[i] for i in (0, 2, 4)]
    assert manifest(tmp_path, "1/2")["status"] == "complete"
    assert manifest(tmp_path, "1/2")["runs"] == dict.fromkeys(first, "finished")
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == sorted([*first, "shards"])
    rows = pd.DataFrame(json.loads(out))  # a shard that does not gather prints its own runs' rows
    assert sorted(set(zip(rows.method, rows.shots))) == [("coop", 2), ("zeroshot", 1), ("zeroshot", 4)]
    assert not (tmp_path / "results.csv").exists()

    code, _, err = cli("sweep", "--gather", tmp_path)  # shard 2/2 has not run
    assert code == 2 and not (tmp_path / "results.csv").exists()
    assert "3 of the 6 runs of the sweep" in err and "shard 2/2, not started" in err, err
    for name in RUNS[1::2]:
        assert f"{name} (not started)" in err

    code, _, err = cli(*sweep_args(tiny_clip, colours, tmp_path, "--shard", "2/2", "--quiet", "--epochs", "1"))
    assert code == 2 and "other options (options: {'epochs': 2} there, {'epochs': 1} here)" in err, err
    assert not (tmp_path / RUNS[1]).exists() and not (tmp_path / "shards" / "2-of-2.json").exists()

    code, _, err = cli(*sweep_args(tiny_clip, colours, tmp_path, "--shard", "2/2"))  # the last shard gathers
    assert code == 0, err
    assert manifest(tmp_path, "2/2")["runs"] == dict.fromkeys(RUNS[1::2], "finished")
    for name in ("results.csv", "table.md", "sweep.json"):
        assert (tmp_path / name).read_bytes() == (whole / name).read_bytes(), name
    assert (tmp_path / "table.md").read_text() in err  # printed as the whole sweep prints it
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "results.csv"), pd.read_csv(whole / "results.csv"))

    stamp = (tmp_path / "results.csv").stat().st_mtime_ns
    code, out, err = cli("sweep", "--gather", tmp_path, "--json")  # gathering again: the same files
    assert code == 0, err
    assert (tmp_path / "results.csv").stat().st_mtime_ns != stamp
    assert (tmp_path / "results.csv").read_bytes() == (whole / "results.csv").read_bytes()
    assert pd.DataFrame(json.loads(out)).equals(pd.read_csv(whole / "results.csv"))
    with Image.open(tmp_path / "accuracy_vs_shots.png") as im:
        assert im.format == "PNG"
    code, _, err = cli("sweep", "--gather", tmp_path, "--seeds", "1")
    assert code == 2 and "give it alone" in err and "--seeds" in err


@pytest.mark.slow
def test_shards_running_at_once_as_processes(tiny_clip, colours, whole, tmp_path):
    procs = [subprocess.Popen([sys.executable, "-m", "cpt_cli.main",
                               *map(str, sweep_args(tiny_clip, colours, tmp_path, "--shard", f"{i}/2", "--quiet"))],
                              env=os.environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in (1, 2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0 and "Traceback" not in err, err
    for name in ("results.csv", "table.md", "sweep.json"):
        assert (tmp_path / name).read_bytes() == (whole / name).read_bytes(), name
    assert [manifest(tmp_path, f"{i}/2")["status"] for i in (1, 2)] == ["complete", "complete"]
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith((".tmp", ".new"))]


def test_torchrun_ranks_take_their_shares(tiny_clip, colours, whole, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in ("1", "0"):
        monkeypatch.setenv("RANK", rank)
        code, _, err = cli(*sweep_args(tiny_clip, colours, tmp_path / "ranks", "--quiet"))
        assert code == 0, err
    assert manifest(tmp_path / "ranks", "2/2")["runs"] == dict.fromkeys(RUNS[1::2], "finished")
    assert (tmp_path / "ranks" / "results.csv").read_bytes() == (whole / "results.csv").read_bytes()

    monkeypatch.setenv("RANK", "1")  # with --shard 2/3 too: rank 1 of 2 takes shard (2 - 1) * 2 + 1 + 1 = 4 of 6
    code, _, err = cli(*sweep_args(tiny_clip, colours, tmp_path / "both", "--quiet", "--shard", "2/3"))
    assert code == 0, err
    assert manifest(tmp_path / "both", "4/6")["runs"] == {RUNS[3]: "finished"}
    monkeypatch.setenv("RANK", "2")
    code, _, err = cli(*sweep_args(tiny_clip, colours, tmp_path / "bad", "--quiet"))
    assert code == 2 and "$RANK='2' and $WORLD_SIZE='2'" in err and not (tmp_path / "bad").exists()
