"""A real Ctrl-C (SIGINT) on a running `cpt fit` subprocess: exit 2, resumable, nothing lost."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest


@pytest.mark.slow
def test_sigint_leaves_a_resumable_run(tiny_clip, colours, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "CPT_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "cpt_cli.main", "fit", "--method", "coop", "--tasks", f"colours={colours}",
           "--backbone", str(tiny_clip), "--shots", "8", "--epochs", "400", "--n-ctx", "4", "--out", str(run)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "history.csv").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert (run / "history.csv").exists(), proc.communicate()[1]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert "interrupted" in err and "--resume" in err and "Traceback" not in err
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
