"""Pinned figures: fits on the toy world give the test metrics the code gave before the one-pipeline
redesign (commit cf110b6), row for row, each value to 1e-6.

tests/data/pinned/<name>/metrics.csv were written by that code with the commands below. The
multi-label ones (scpnet*, coopml*, zsml) were written again after the redesign, on purpose, by
the commit that detaches ASL's focal weights (as the ASL authors train) and adds mAP_paper and
n_unknown_entries to multi-label metrics; the single-label ones are still the pre-redesign files. Every method
and both task kinds run by default, with few epochs (and 2 cached views on toy-ml, the views
test_toy's SCPNet run caches too), to stay cheap. The commands at their default lengths (coop4,
scpnet, softcpt4, coopml) take minutes; CPT_PINNED=all runs them as well.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import cli

PINNED = Path(__file__).parent / "data" / "pinned"
TOY = ["--tasks", "toy", "--backbone", "toy", "--shots", "4", "--seed", "1"]
TOY_ML = ["--tasks", "toy-ml", "--backbone", "toy", "--known-ratio", "0.3", "--seed", "1"]
SHORT = {
    "coop4-10ep": ["--method", "coop", *TOY, "--epochs", "10"],
    "softcpt4-5ep": ["--method", "softcpt", *TOY, "--epochs", "5"],
    "lp4": ["--method", "linear-probe", *TOY],
    "scpnet-2views-5ep": ["--method", "scpnet", *TOY_ML, "--aug-views", "2", "--epochs", "5"],
    "coopml-2views-5ep": ["--method", "coop", *TOY_ML, "--ctx-init", "a photo of a", "--aug-views", "2", "--epochs", "5"],
}
FULL = {
    "coop4": ["--method", "coop", *TOY],
    "softcpt4": ["--method", "softcpt", *TOY],
    "scpnet": ["--method", "scpnet", *TOY_ML],
    "coopml": ["--method", "coop", *TOY_ML, "--ctx-init", "a photo of a"],
}
full = pytest.mark.skipif(os.environ.get("CPT_PINNED") != "all", reason="minutes each: set CPT_PINNED=all")


def assert_pinned(name: str, run: Path) -> None:
    expected, got = pd.read_csv(PINNED / name / "metrics.csv"), pd.read_csv(run / "metrics.csv")
    keys = ["task", "split", "metric"]
    assert got[keys].values.tolist() == expected[keys].values.tolist()
    np.testing.assert_allclose(got.value.to_numpy(), expected.value.to_numpy(), rtol=0, atol=1e-6,
                               err_msg="\n".join(map(str, zip(got.task, got.metric, expected.value, got.value))))


@pytest.mark.slow
@pytest.mark.parametrize("name", [*SHORT, *(pytest.param(n, marks=full) for n in FULL)])
def test_fit_gives_the_pinned_figures(name, tmp_path):
    code, _, err = cli("fit", *{**SHORT, **FULL}[name], "--out", tmp_path / name, "--quiet")
    assert code == 0, err
    assert_pinned(name, tmp_path / name)


def test_zero_shot_toy_ml_gives_the_pinned_figures(toy_ml_zeroshot):
    """`cpt fit --method zeroshot --tasks toy-ml --backbone toy`: the session's run."""
    assert_pinned("zsml", toy_ml_zeroshot.run)


def test_every_pinned_file_has_its_command():
    assert sorted(p.name for p in PINNED.iterdir()) == sorted([*SHORT, *FULL, "zsml"])
