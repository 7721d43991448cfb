"""Progress output when stderr is a log file or a pipe: a few whole lines, no bars, no blank lines."""

from __future__ import annotations

import re

from tests.conftest import cli


def test_progress_is_plain_lines_when_stderr_is_not_a_terminal(tiny_clip, colours, tmp_path):
    code, _, err = cli("fit", "--method", "coop", "--tasks", f"colours={colours}", "--backbone", tiny_clip,
                       "--shots", "2", "--epochs", "8", "--n-ctx", "4", "--out", tmp_path / "r")
    assert code == 0, err
    assert re.findall(r"^Training: (\d+)/8$", err, flags=re.M) == ["2", "4", "6", "8"]
    assert "\x1b[" not in err.split("┏")[0] and "\n\n" not in err.split("┏")[0]  # before the results table
    code, _, err = cli("fit", "--method", "coop", "--tasks", f"colours={colours}", "--backbone", tiny_clip,
                       "--shots", "2", "--epochs", "8", "--n-ctx", "4", "--out", tmp_path / "q", "--quiet")
    assert code == 0 and "Training" not in err
