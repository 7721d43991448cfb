"""The method registry and `cpt methods`: a method is one registered class whose `Config` declares
its options; `cpt methods`, `cpt fit --help`, `cpt fit` and config.json all follow from it."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import pytest
import torch
from cpt_cli.main import make_app

from cpt.core.templates import template_embeddings
from cpt.methods import METHODS, Classifier, Method, register
from cpt.options import Options, option
from tests.conftest import cli, runner

NAME = "echo-test"


@dataclass
class EchoConfig(Options):
    echo_scale: float = option(3.0, "Throw-away test method: the logit scale of its zero-shot classifier.",
                               panel="Echo", low=0, above=True)


class Echo(Method):
    """Zero-shot embeddings under a logit scale of its own option, so the option's value is visible in the run."""

    name = NAME
    Config = EchoConfig
    summary = "A throw-away method registered by the tests."
    kinds = ("single-label",)

    def classifiers(self) -> list[Classifier]:
        return [Classifier(template_embeddings(self.backbone, names, ["a photo of a {}."]), self.cfg.echo_scale)
                for names in self.classnames]


@pytest.fixture
def echo():
    """Register Echo for one test and take it out again, whatever the test did."""
    assert NAME not in METHODS
    register(Echo)
    try:
        yield make_app()  # built now: its `cpt fit` takes --echo-scale
    finally:
        METHODS.pop(NAME, None)


def invoke(app, *args: str, columns: int = 300) -> tuple[int, str, str]:
    result = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": str(columns)})
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_a_registered_method_is_listed_offered_and_run_with_its_option(echo, tiny_clip, colours, tmp_path):
    code, _, table = invoke(echo, "methods")  # tables for people go to stderr, as every command's
    assert code == 0, table
    row = next(line for line in table.splitlines() if f" {NAME} " in line)
    assert "single-label" in row and "A throw-away method registered by the tests." in row
    code, out, err = invoke(echo, "methods", "--json")
    assert code == 0, err
    listed = {m["method"]: m for m in json.loads(out)}
    assert list(listed) == list(METHODS) and listed[NAME]["kinds"] == ["single-label"] and not listed[NAME]["trains"]
    code, out, err = invoke(echo, "methods", NAME, "--json")
    assert code == 0, err
    options = {o["option"]: o for o in json.loads(out)["options"]}
    assert options["--echo-scale"]["default"] == 3.0 and "--shots" in options
    assert "--epochs" not in options and "--lr" not in options  # it does not train

    code, out, err = invoke(echo, "fit", "--help")
    assert code == 0, err
    assert re.search(r"--echo-scale\s+<float>\s+Throw-away test method: .*\[default: 3\.0\]", out)
    assert re.search(rf"One of: [a-z0-9+, -]*\b{NAME}\.", out)

    run = tmp_path / "run"
    code, out, err = invoke(echo, "fit", "--method", NAME, "--echo-scale", "7.5", "--tasks", f"colours={colours}",
                            "--backbone", tiny_clip, "--out", run, "--json", "--quiet")
    assert code == 0, err
    config = json.loads((run / "config.json").read_text())
    assert config["request"]["method"] == NAME and config["resolved"]["method"]["echo_scale"] == 7.5
    assert "train" not in config["resolved"] or config["resolved"]["train"] is None
    # the option reached the method: the exported classifier has its scale
    code, _, err = invoke(echo, "export", run, "--out", tmp_path / "echo.pt", "--quiet")
    assert code == 0, err
    assert torch.load(tmp_path / "echo.pt", weights_only=True)["tasks"][0]["scale"] == 7.5

    code, _, err = invoke(echo, "fit", "--method", NAME, "--echo-scale", "0", "--tasks", f"colours={colours}",
                          "--backbone", tiny_clip, "--out", tmp_path / "bad", "--quiet")
    assert code == 2 and "--echo-scale" in err and not (tmp_path / "bad").exists()
    code, _, err = invoke(echo, "fit", "--method", "coop", "--echo-scale", "2", "--tasks", f"colours={colours}",
                          "--backbone", tiny_clip, "--out", tmp_path / "stray", "--quiet")
    assert code == 2 and f"--echo-scale (used by {NAME})" in err


def test_the_method_is_gone_after_its_test():
    assert NAME not in METHODS
    code, out, _ = cli("methods", "--json")
    assert code == 0 and NAME not in {m["method"] for m in json.loads(out)}
    code, _, err = cli("fit", "--method", NAME, "--tasks", "x=nowhere")
    assert code == 2 and NAME in err


def test_methods_lists_every_registered_method():
    code, out, err = cli("methods", "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["method"] for r in rows] == list(METHODS) == ["zeroshot", "linear-probe", "lp++", "tip-adapter",
                                                             "tip-adapter-f", "coop", "coop-shared", "kgcoop", "softcpt",
                                                             "scpnet", "zeroshot-video", "coop-video", "clip4clip", "dgl",
                                                             "tempme", "maple"]
    kinds = {r["method"]: r["kinds"] for r in rows}
    assert kinds["scpnet"] == ["multi-label"] and kinds["dgl"] == kinds["coop-video"] == ["retrieval"]
    assert all(r["summary"] for r in rows)


def test_methods_scpnet_lists_its_options_with_defaults():
    code, out, err = cli("methods", "scpnet", "--json")
    assert code == 0, err
    listing = json.loads(out)
    assert listing["method"] == "scpnet" and listing["kinds"] == ["multi-label"]
    options = {o["option"]: o for o in listing["options"]}
    assert options["--lambda-u"]["default"] == 0.125 and options["--lambda-u"]["help"]
    assert options["--n-ctx"]["default"] == 4 and options["--no-prior"]["default"] is False
    assert "--known-ratio" in options and "--shots" not in options and "--template" not in options
    code, _, err = cli("methods", "nope")
    assert code == 2 and "nope" in err and "scpnet" in err
