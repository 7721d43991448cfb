"""Bad input through the real CLI (#12): every row of each table is a command, its exit code, a
fragment of its message and what it may leave behind. Classes: command options, damaged run
files, silently wrong results, failed starts (each rerunnable in the same --out), writes the
system refuses; then, in subprocesses, signals, pipes and processes racing on one cache.

No command here may print a traceback: exit 2 is the user's to fix, with one message."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.conftest import TINY_VIT, cli, colour_folder, interrupt_after, make_clip

TINY_FIT = {"--method": "coop", "--shots": "1", "--epochs": "1", "--n-ctx": "2", "--device": "cpu"}


def fit_args(**options: str | None) -> list[str]:
    """`cpt fit` arguments: TINY_FIT with `options` (`n_ctx="0"` -> --n-ctx 0; None drops one) replacing or adding."""
    merged = {**TINY_FIT, **{f"--{k.replace('_', '-')}": v for k, v in options.items()}}
    return ["fit", *[x for k, v in merged.items() if v is not None for x in (k, v)], "--quiet"]


def expect(code: int, err: str, want_code: int, fragment: str) -> None:
    assert code == want_code, err
    assert fragment in err, err
    assert "Traceback" not in err and "internal error" not in err, err


def fill(args: list[str], paths: dict[str, Path]) -> list[str]:
    return [str(a).format(**paths) for a in args]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (relative path -> sha256 of its bytes)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(*folders: Path) -> list[Path]:
    """Temporary files and folders an interrupted write would leave."""
    return [p for f in folders if f.exists() for p in f.rglob("*")
            if p.name.endswith(".tmp") or ".building." in p.name]


@pytest.fixture(scope="module")
def world(tiny_clip, colours, tmp_path_factory) -> dict[str, Path]:
    """A finished coop run, its .pt export, a one-class task and small bad files, shared read-only."""
    root = tmp_path_factory.mktemp("bad-input")
    run, cache = root / "run", tmp_path_factory.getbasetemp() / "feature-cache"
    code, _, err = cli(*fit_args(tasks=f"colours={colours}", backbone=str(tiny_clip), shots="2"),
                       "--cache-dir", cache, "--out", run)
    assert code == 0, err
    code, _, err = cli("export", run, "--out", root / "export.pt")
    assert code == 0, err
    colour_folder(root / "one", per_class=6, classes={"red": (220, 40, 40)}, split=True)
    (root / "a-file").write_text("not a folder\n")
    (root / "notes.pt").write_text("hello, I am text\n")
    with open(root / "pickled-list.pt", "wb") as fh:
        pickle.dump([1, 2, 3], fh)
    torch.save([1, 2, 3], root / "torch-list.pt")
    (root / "dup.txt").write_text("cat\ndog\ncat\n")
    (root / "single.txt").write_text("cat\n")
    (root / "two.txt").write_text("cat\ndog\n")
    return {"run": run, "export": root / "export.pt", "tiny": tiny_clip, "colours": colours, "root": root,
            "red": colours / "test" / "red", "one": root / "one", "cache": cache}


# --- command options --------------------------------------------------------------------------------

OPTIONS = [  # id, arguments ({tmp}: the test's own folder), exit code, message fragment, must not exist after
    ("fit-out-is-a-file", fit_args(tasks="c={colours}", backbone="{tiny}", out="{root}/a-file"), 2, "is a file", []),
    ("fit-out-under-a-file", fit_args(tasks="c={colours}", backbone="{tiny}", out="{root}/a-file/run"), 2,
     "a-file/run", []),
    ("linear-probe-one-class", fit_args(method="linear-probe", tasks="one={one}", backbone="{tiny}", out="{tmp}/lp",
                                       epochs=None, n_ctx=None),
     2, "at least two classes", ["{tmp}/lp"]),
    ("bench-classes-0", ["bench", "--classes", "0", "--geometry", "tiny", "--device", "cpu"], 2, "--classes", []),
    ("bench-classes-x", ["bench", "--classes", "x"], 2, "--classes", []),
    ("bench-repeats-0", ["bench", "--repeats", "0", "--classes", "2", "--geometry", "tiny"], 2, "--repeats", []),
    ("bench-geometry", ["bench", "--geometry", "huge", "--classes", "2"], 2, "--geometry", []),
    ("sweep-no-seeds", ["sweep", "--tasks", "c={colours}", "--backbone", "{tiny}", "--seeds", "", "--out",
                        "{tmp}/sweep"], 2, "--seeds", ["{tmp}/sweep"]),
    ("sweep-no-methods", ["sweep", "--tasks", "c={colours}", "--backbone", "{tiny}", "--methods", ",", "--out",
                          "{tmp}/sweep"], 2, "--methods", ["{tmp}/sweep"]),
    ("sweep-seed-twice", ["sweep", "--tasks", "c={colours}", "--backbone", "{tiny}", "--seeds", "1,1", "--out",
                          "{tmp}/sweep"], 2, "names 1 twice", ["{tmp}/sweep"]),
    ("sweep-shard-3-of-2", ["sweep", "--tasks", "c={colours}", "--backbone", "{tiny}", "--shard", "3/2", "--out",
                            "{tmp}/sweep"], 2, "there is no shard 3 of 2", ["{tmp}/sweep"]),
    ("sweep-shard-0-of-2", ["sweep", "--tasks", "c={colours}", "--backbone", "{tiny}", "--shard", "0/2", "--out",
                            "{tmp}/sweep"], 2, "$((INDEX+1))/2", ["{tmp}/sweep"]),
    ("sweep-shard-words", ["sweep", "--tasks", "c={colours}", "--backbone", "{tiny}", "--shard", "half", "--out",
                           "{tmp}/sweep"], 2, "--shard takes I/N", ["{tmp}/sweep"]),
    ("sweep-no-out", ["sweep", "--tasks", "c={colours}", "--backbone", "{tiny}"], 2, "needs --tasks and --out", []),
    ("sweep-gather-not-a-sweep", ["sweep", "--gather", "{root}"], 2, "holds no sweep.json", ["{root}/results.csv"]),
    ("sweep-gather-with-options", ["sweep", "--gather", "{tmp}/sweep", "--tasks", "c={colours}"], 2,
     "give it alone", ["{tmp}/sweep"]),
    ("export-out-is-a-folder", ["export", "{run}", "--out", "{tmp}"], 2, "is a folder", []),
    ("eval-out-is-a-file", ["eval", "{run}", "--out", "{root}/a-file"], 2, "a-file", []),
    ("prior-out-is-a-file", ["prior", "--backbone", "{tiny}", "--classes", "{root}/two.txt", "--out",
                             "{root}/a-file"], 2, "a-file", []),
    ("predict-out-is-a-folder", ["predict", "{run}", "{red}", "--out", "{tmp}"], 2, "is a folder", []),
    ("predict-top-k-negative", ["predict", "{run}", "{red}", "--top-k", "-1"], 2, "--top-k", []),
    ("predict-top-k-0", ["predict", "{export}", "{red}", "--top-k", "0"], 2, "--top-k", []),
    ("predict-threshold", ["predict", "{run}", "{red}", "--threshold", "1.5"], 2, "--threshold", []),
    ("predict-text-as-export", ["predict", "{root}/notes.pt", "{red}"], 2, "not a file `cpt export", []),
    ("predict-pickled-list", ["predict", "{root}/pickled-list.pt", "{red}"], 2, "cpt classifier export", []),
    ("predict-torch-list", ["predict", "{root}/torch-list.pt", "{red}", "--out", "{tmp}/p.csv"], 2,
     "not a cpt classifier export (a list", ["{tmp}/p.csv"]),
    ("prior-duplicate-classes", ["prior", "--backbone", "{tiny}", "--classes", "{root}/dup.txt", "--out",
                                 "{tmp}/prior"], 2, "'cat' more than once", ["{tmp}/prior"]),
    ("prior-one-class", ["prior", "--backbone", "{tiny}", "--classes", "{root}/single.txt"], 2, "at least two", []),
    ("export-duplicate-classes", ["export", "--backbone", "{tiny}", "--classes", "{root}/dup.txt", "--out",
                                  "{tmp}/zs.pt"], 2, "more than once", ["{tmp}/zs.pt"]),
    ("backbone-text-file", fit_args(tasks="c={colours}", backbone="{root}/notes.pt", out="{tmp}/r"), 2,
     "as a CLIP checkpoint", ["{tmp}/r"]),
]


@pytest.mark.parametrize("args, code, fragment, absent", [pytest.param(*row[1:], id=row[0]) for row in OPTIONS])
def test_bad_options_exit_2_with_a_message(world, tmp_path, args, code, fragment, absent):
    paths = {**world, "tmp": tmp_path}
    got, _, err = cli(*fill(args, paths))
    expect(got, err, code, fragment)
    for path in fill(absent, paths):
        assert not Path(path).exists(), path


# --- damaged run files -------------------------------------------------------------------------------

def _truncate(name: str, keep: float = 0.5):
    def damage(run: Path) -> None:
        data = (run / name).read_bytes()
        (run / name).write_bytes(data[: int(len(data) * keep)])
    return damage


def _drop_label(run: Path) -> None:
    frame = pd.read_csv(run / "splits.csv")
    frame.drop(columns="label").to_csv(run / "splits.csv", index=False)


DAMAGE = {  # id -> (how, message fragment)
    "checkpoint-truncated": (_truncate("checkpoint.pt"), "checkpoint.pt is damaged"),
    "checkpoint-empty": (_truncate("checkpoint.pt", 0), "checkpoint.pt is damaged"),
    "checkpoint-a-list": (lambda run: torch.save([1, 2], run / "checkpoint.pt"), "not a cpt checkpoint"),
    "config-truncated": (_truncate("config.json"), "config.json is damaged"),
    "splits-without-label": (_drop_label, "no label column"),
    "splits-empty": (_truncate("splits.csv", 0), "splits.csv is damaged"),
}
COMMANDS = {
    "eval": ["eval", "{damaged}"],
    "export": ["export", "{damaged}", "--out", "{tmp}/x.pt"],
    "predict": ["predict", "{damaged}", "{red}"],
    "resume": ["fit", "--resume", "{damaged}", "--quiet"],
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_run_files_exit_2_and_change_nothing(world, tmp_path, damage, command):
    damaged = tmp_path / "run"
    shutil.copytree(world["run"], damaged)
    how, fragment = DAMAGE[damage]
    how(damaged)
    before = snapshot(damaged)
    code, _, err = cli(*fill(COMMANDS[command], {**world, "tmp": tmp_path, "damaged": damaged}))
    expect(code, err, 2, fragment)
    assert snapshot(damaged) == before  # nothing rewritten, no log, no status, no temp file
    assert not (tmp_path / "x.pt").exists()


# --- silently wrong results --------------------------------------------------------------------------

def test_diverged_weights_are_never_saved_or_scored(world, tmp_path):
    # one step at lr 1e38 leaves the loss of that step finite and the weights infinite
    out = tmp_path / "r"
    code, _, err = cli(*fit_args(tasks="c={colours}".format(**world), backbone=str(world["tiny"]), lr="1e38",
                                 warmup_epochs="0", out=str(out)))
    expect(code, err, 2, "diverged")
    assert "--overwrite" in err
    assert not (out / "checkpoint.pt").exists() and not (out / "metrics.csv").exists()
    assert json.loads((out / "config.json").read_text())["status"] == "failed"
    # a later epoch diverging keeps the last finite checkpoint, which --resume could continue
    out2 = tmp_path / "r2"
    code, _, err = cli(*fit_args(tasks="c={colours}".format(**world), backbone=str(world["tiny"]), lr="1e30",
                                 warmup_epochs="0", epochs="3", out=str(out2)))
    expect(code, err, 2, "diverged")
    state = torch.load(out2 / "checkpoint.pt", weights_only=True)
    assert not state["done"]
    assert all(torch.isfinite(t).all() for t in state["state"].values() if isinstance(t, torch.Tensor))


def test_a_changed_backbone_file_is_refused_unless_accepted(world, tmp_path, monkeypatch):
    backbone = tmp_path / "clip.pt"
    shutil.copy(world["tiny"], backbone)
    run = tmp_path / "zs"
    code, _, err = cli("fit", "--method", "zeroshot", "--tasks", f"c={world['colours']}", "--backbone", backbone,
                       "--device", "cpu", "--quiet", "--out", run)
    assert code == 0, err
    code, _, err = cli("export", run, "--out", tmp_path / "zs.pt")
    assert code == 0, err
    old = hashlib.sha256(backbone.read_bytes()).hexdigest()
    torch.save(make_clip(TINY_VIT, seed=1).state_dict(), backbone)  # same name, another model
    new = hashlib.sha256(backbone.read_bytes()).hexdigest()
    before = snapshot(run)
    for args in (["eval", run], ["predict", run, world["red"]], ["predict", tmp_path / "zs.pt", world["red"]],
                 ["export", run, "--out", tmp_path / "again.pt"], ["fit", "--resume", run, "--quiet"]):
        code, out, err = cli(*args)
        expect(code, err, 2, "has changed")
        assert old in err.replace("\n", "") and new in err.replace("\n", ""), err
        assert "CPT_ACCEPT_BACKBONE_CHANGE" in err and out == ""
    assert snapshot(run) == before and not (tmp_path / "again.pt").exists()
    monkeypatch.setenv("CPT_ACCEPT_BACKBONE_CHANGE", "1")  # the escape hatch: a re-saved copy, say
    code, _, err = cli("eval", run, "--quiet")
    assert code == 0 and "used anyway" in err, err


def test_a_sweep_reruns_what_changed_and_resumes_what_was_interrupted(world, tmp_path, monkeypatch):
    args = ["sweep", "--tasks", f"c={world['colours']}", "--backbone", world["tiny"], "--methods", "coop",
            "--shots", "1", "--seeds", "1", "--device", "cpu", "--out", tmp_path, "--quiet"]
    run = tmp_path / "coop-1shot-seed1"
    code, _, err = cli(*args, "--epochs", "1")
    assert code == 0, err
    code, _, err = cli(*args, "--epochs", "2")  # not the 1-epoch run again under the 2-epoch label
    assert code == 0 and "other options" in err, err
    assert len(pd.read_csv(run / "history.csv")) == 2
    interrupt_after(monkeypatch, 1)
    code, _, err = cli(*args, "--epochs", "3")
    expect(code, err, 2, "interrupted")
    assert json.loads((run / "config.json").read_text())["status"] == "interrupted"
    code, _, err = cli(*args, "--epochs", "3")  # continues from epoch 1, not from scratch
    assert code == 0, err
    assert "resuming" in (run / "fit.log").read_text()
    assert len(pd.read_csv(run / "history.csv")) == 3


# --- failed starts: nothing left, the fixed command succeeds in the same --out ----------------------

FAILED_STARTS = [  # id, bad options, fixed options, fragment
    ("unknown-backbone", {"backbone": "no-such-clip"}, {}, "no-such-clip"),
    ("precision", {"precision": "fp64"}, {"precision": "fp32"}, "--precision"),
    ("cuda-without-gpu", {"device": "cuda"}, {"device": "cpu"}, "CUDA"),
    ("n-ctx-0", {"n_ctx": "0"}, {"n_ctx": "2"}, "--n-ctx"),
    ("variant", {"method": "softcpt", "variant": "bogus"}, {"method": "softcpt", "variant": "nats"}, "--variant"),
    ("missing-data", {"tasks": "c={root}/nowhere"}, {}, "nowhere"),
]


@pytest.mark.parametrize("bad, fixed, fragment", [pytest.param(*row[1:], id=row[0]) for row in FAILED_STARTS])
def test_a_failed_start_leaves_nothing_and_can_be_rerun(world, tmp_path, bad, fixed, fragment):
    if "cuda" in bad.get("device", "") and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "run"
    base = {"tasks": "c={colours}", "backbone": "{tiny}", "out": str(out)}
    code, _, err = cli(*fill(fit_args(**{**base, **bad}), world))
    expect(code, err, 2, fragment)
    assert not out.exists()
    code, _, err = cli(*fill(fit_args(**{**base, **fixed}), world))
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["status"] == "finished"


@pytest.mark.parametrize("config", ['{"hello": "world"}\n', "not json at all", '{"request": {}}'])
def test_overwrite_never_deletes_a_folder_that_is_not_a_run(world, tmp_path, config):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text(config)
    (mine / "thesis.tex").write_text("years of work")
    before = snapshot(mine)
    code, _, err = cli(*fill(fit_args(tasks="c={colours}", backbone="{tiny}", out=str(mine)), world), "--overwrite")
    expect(code, err, 2, "not a cpt run")
    assert snapshot(mine) == before


# --- writes the system refuses -----------------------------------------------------------------------

def make_read_only(root: Path, monkeypatch) -> Path:
    """Make every write under `root` fail as on a read-only file system (EROFS), whoever runs the
    tests (root ignores permission bits): creating folders, temporary files, files opened for writing."""
    real_mkdir, real_mkstemp, real_open = os.mkdir, tempfile.mkstemp, open

    def inside(path) -> bool:
        return str(Path(path).absolute()).startswith(str(root))

    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    def mkdir(path, *args, **kwargs):
        return refuse(path) if inside(path) else real_mkdir(path, *args, **kwargs)

    def mkstemp(*args, dir=None, **kwargs):
        return refuse(dir) if dir is not None and inside(dir) else real_mkstemp(*args, dir=dir, **kwargs)

    def open_(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, Path)) and any(c in mode for c in "wax+") and inside(file):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr("builtins.open", open_)
    return root


@pytest.fixture
def read_only(tmp_path, monkeypatch) -> Path:
    """An empty folder under `make_read_only`."""
    (tmp_path / "ro").mkdir()
    return make_read_only(tmp_path / "ro", monkeypatch)


READ_ONLY = [  # id, arguments ({ro}: the read-only folder), message fragment
    ("fit-out", fit_args(tasks="c={colours}", backbone="{tiny}", out="{ro}/run"), "{ro}/run"),
    ("fit-cache-dir", [*fit_args(tasks="c={colours}", backbone="{tiny}", out="{tmp}/run"), "--cache-dir",
                       "{ro}/cache"], "read-only file system"),
    ("predict-out", ["predict", "{run}", "{red}", "--out", "{ro}/p.csv"], "{ro}/p.csv"),
    ("export-out", ["export", "{run}", "--out", "{ro}/x.pt"], "{ro}/x.pt"),
    ("eval-out", ["eval", "{run}", "--out", "{ro}/eval"], "{ro}/eval"),
    ("prior-out", ["prior", "--backbone", "{tiny}", "--classes", "{root}/two.txt", "--out", "{ro}/prior"],
     "{ro}/prior"),
]


@pytest.mark.parametrize("args, fragment", [pytest.param(*row[1:], id=row[0]) for row in READ_ONLY])
def test_refused_writes_exit_2_naming_the_path(world, tmp_path, read_only, args, fragment):
    paths = {**world, "tmp": tmp_path, "ro": read_only}
    code, _, err = cli(*fill(args, paths))
    assert code == 2 and "Traceback" not in err, err
    assert fragment.format(**paths) in err.replace("\n", ""), err
    assert not list(read_only.iterdir())


def test_a_read_only_run_directory(world, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    make_read_only(run, monkeypatch)
    before = snapshot(run)
    code, _, err = cli("eval", run)  # eval writes its metrics into the run
    assert code == 2 and "read-only file system" in err and "Traceback" not in err, err
    assert snapshot(run) == before
    code, _, err = cli("fit", "--resume", run, "--quiet")
    assert code == 2 and "read-only file system" in err and "Traceback" not in err, err


def test_a_real_read_only_folder(world, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("permissions do not bind this user (root)")
        code, _, err = cli(*fill(fit_args(tasks="c={colours}", backbone="{tiny}", out=str(ro / "run")), world))
        expect(code, err, 2, str(ro / "run"))
        code, _, err = cli("predict", world["run"], world["red"], "--out", ro / "p.csv")
        expect(code, err, 2, "permission denied")
    finally:
        ro.chmod(0o755)


def test_a_read_only_cache_for_a_recipe(world, read_only, monkeypatch):
    monkeypatch.setenv("CPT_CACHE", str(read_only / "cache"))
    code, _, err = cli("data", "toy")
    expect(code, err, 2, "read-only file system")


# --- signals, pipes and races (subprocesses) ---------------------------------------------------------

def cpt(*args: object) -> list[str]:
    return [sys.executable, "-m", "cpt_cli.main", *map(str, args)]


@pytest.mark.slow
def test_predict_into_a_closed_pipe_ends_quietly(world, tmp_path):
    """`cpt predict RUN images | head -1`: far more output than a pipe holds, so writes hit EPIPE."""
    many = tmp_path / "many"
    many.mkdir()
    image = next(world["red"].iterdir())
    for i in range(700):
        os.link(image, many / f"{i:04d}.png")
    env = {**os.environ, "CPT_CACHE": str(world["cache"])}  # the run's features: nothing to encode
    procs = {}
    for fmt in ("csv", "jsonl"):
        extra = ["--jsonl"] if fmt == "jsonl" else ["--top-k", "4"]
        cmd = shlex.join(cpt("predict", world["run"], many, *extra))
        procs[fmt] = subprocess.Popen(["bash", "-c", f"set -o pipefail; {cmd} 2>{tmp_path / fmt}.err | head -1"],
                                      env=env, stdout=subprocess.PIPE, text=True)
    for fmt, proc in procs.items():
        out, _ = proc.communicate(timeout=180)
        err = (tmp_path / f"{fmt}.err").read_text()
        assert proc.returncode == 0, err
        assert len(out.splitlines()) == 1
        assert "Traceback" not in err and "internal error" not in err and "Exception ignored" not in err, err


@pytest.mark.slow
def test_two_fits_share_one_cache_at_once(world, tmp_path):
    env = {**os.environ, "CPT_CACHE": str(tmp_path / "cache")}
    args = fit_args(tasks=f"c={world['colours']}", backbone=str(world["tiny"]), shots="4", epochs="2")[1:]
    procs = [subprocess.Popen(cpt("fit", *args, "--out", tmp_path / f"r{i}"), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0 and "Traceback" not in err, err
    first, second = (pd.read_csv(tmp_path / f"r{i}" / "metrics.csv") for i in range(2))
    pd.testing.assert_frame_equal(first, second)
    assert not leftovers(tmp_path)


@pytest.mark.slow
def test_recipe_builds_race_and_a_killed_build_is_cleaned_up(tmp_path):
    """Three processes materialise the toy recipe on a fresh cache at once, after a build that was
    killed (SIGKILL) half-way: all three get the same complete folder, and no temp folder remains."""
    env = {**os.environ, "CPT_CACHE": str(tmp_path / "cache")}
    code = "from cpt_datasets.recipes import materialize; print(materialize('toy')[0][1])"
    slow = ("import time, cpt_datasets.recipes as r; render = r.W.render; "  # a build slow enough to kill
            "r.W.render = lambda *a: (time.sleep(0.01), render(*a))[1]; " + code)
    seed0 = tmp_path / "cache" / "data"
    victim = subprocess.Popen([sys.executable, "-c", slow], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not list(seed0.rglob(".toy.building.*/*/*/*/*.png")) and time.time() < deadline and victim.poll() is None:
        time.sleep(0.05)
    victim.kill()
    victim.communicate()
    if victim.returncode == 0:
        pytest.fail("the build finished before it could be killed")
    assert list(seed0.rglob(".toy.building.*")), "the killed build left no temp folder to clean up"
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        outs.append(out.strip())
    assert len(set(outs)) == 1
    toy = Path(outs[0]).parent
    assert (toy / ".complete").exists() and len(list(toy.rglob("*.png"))) == 1600
    assert not leftovers(tmp_path / "cache")
