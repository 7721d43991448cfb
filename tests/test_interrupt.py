"""Ctrl-C (SIGINT) and SIGTERM (what `timeout`, `kill` and schedulers send) on a running `cpt fit`:
exit 2 with a message, config.json status "interrupted", the last checkpoint kept, no temp file
left, and `cpt fit --resume` finishes the run."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from cpt_cli.app import Stopped, stop_signals_interrupt

from cpt import run as R
from tests.conftest import cli


def temp_files(*folders) -> list:
    return [p for f in folders if f.exists() for p in f.rglob("*") if p.name.endswith(".tmp")]


@pytest.fixture
def sigterm_free():
    if signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        pytest.skip("something in this test process handles SIGTERM itself")


def test_stop_signals_raise_like_ctrl_c_and_respect_nohup(sigterm_free):
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Stopped) as stopped, stop_signals_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler runs at the next bytecode
    assert isinstance(stopped.value, KeyboardInterrupt) and stopped.value.args == ("SIGTERM",)
    assert signal.getsignal(signal.SIGTERM) == previous
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as under nohup or a parent that ignores it
    try:
        with stop_signals_interrupt():
            assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_an_interrupted_fit_records_its_status(tiny_clip, colours, tmp_path, monkeypatch, how, sigterm_free):
    original = R.save_checkpoint

    def save_then_stop(run, payload):
        original(run, payload)
        monkeypatch.setattr(R, "save_checkpoint", original)
        if how == "ctrl-c":
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)

    monkeypatch.setattr(R, "save_checkpoint", save_then_stop)
    run = tmp_path / "run"
    code, _, err = cli("fit", "--method", "coop", "--tasks", f"colours={colours}", "--backbone", tiny_clip,
                       "--shots", "2", "--epochs", "3", "--n-ctx", "2", "--quiet", "--out", run,
                       "--cache-dir", tmp_path / "cache")
    assert code == 2 and "interrupted" in err and "--resume" in err and "Traceback" not in err, err
    assert ("SIGTERM" in err) == (how == "sigterm")
    assert json.loads((run / "config.json").read_text())["status"] == "interrupted"
    assert "interrupted" in (run / "fit.log").read_text()
    assert not temp_files(run, tmp_path / "cache")
    code, _, err = cli("fit", "--resume", run, "--quiet")
    assert code == 0, err
    assert json.loads((run / "config.json").read_text())["status"] == "finished"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_leaves_a_resumable_run(tiny_clip, colours, tmp_path, sig):
    run, cache = tmp_path / "run", tmp_path / "cache"
    env = {**os.environ, "CPT_CACHE": str(cache)}
    cmd = [sys.executable, "-m", "cpt_cli.main", "fit", "--method", "coop", "--tasks", f"colours={colours}",
           "--backbone", str(tiny_clip), "--shots", "8", "--epochs", "400", "--n-ctx", "4", "--out", str(run)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "history.csv").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert (run / "history.csv").exists(), proc.communicate()[1]
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert "interrupted" in err and "--resume" in err and "Traceback" not in err
    assert json.loads((run / "config.json").read_text())["status"] == "interrupted"
    assert not temp_files(run, cache)
    done = len(pd.read_csv(run / "history.csv"))
    assert 1 <= done < 400
    assert not (run / "metrics.csv").exists()

    # finish it quickly: resume uses the saved options, so shorten the run through its config
    config = json.loads((run / "config.json").read_text())
    config["request"]["options"]["epochs"] = done + 1
    (run / "config.json").write_text(json.dumps(config))
    out = subprocess.run([sys.executable, "-m", "cpt_cli.main", "fit", "--resume", str(run), "--json", "--quiet"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert len(pd.read_csv(run / "history.csv")) == done + 1
    assert (run / "metrics.csv").exists()
    assert json.loads((run / "config.json").read_text())["status"] == "finished"
