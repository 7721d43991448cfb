"""`cpt fit`'s options (cpt.plan): each declared once, shown once in --help, checked before anything
is written, refused where they do not apply; and `plan` resolving presets, per-method defaults and epochs."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
from cpt_datasets import toy_video

from cpt.errors import CptError
from cpt.methods import METHODS
from cpt.kinds import KINDS
from cpt.options import declared, flag, option_type
from cpt.plan import FitRequest, applicable, fit_options, method_options, option_classes, plan
from tests.conftest import cli, runner, two_colour_rows


def fit_help() -> str:
    from cpt_cli.main import make_app

    result = runner.invoke(make_app(), ["fit", "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    return result.stdout


def help_rows(text: str) -> dict[str, list[str]]:
    """Option -> the help text of each row naming it (a row: `│ --name  <type>  text`, plus its continuation lines)."""
    rows: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        cells = line.strip().strip("│").strip()
        head = re.match(r"(--[a-z0-9-]+)\s+(.*)$", cells)
        if head:
            current = head.group(1)
            rows.setdefault(current, []).append(head.group(2))
        elif line.startswith("╰") or line.startswith("╭"):
            current = None
        elif current and cells:
            rows[current][-1] += " " + cells
    return rows


@pytest.fixture(scope="module")
def ml_folder(tmp_path_factory) -> Path:
    """A tiny multi-label task: a folder with train.csv and test.csv over two colours."""
    data = tmp_path_factory.mktemp("ml")
    rows = two_colour_rows(data)
    (data / "train.csv").write_text("path,red,blue\n" + "".join(rows))
    (data / "test.csv").write_text("path,red,blue\n" + "".join(rows[:4]))
    return data


# --- --help -----------------------------------------------------------------------------------------

def test_fit_help_lists_every_option_once_with_at_most_one_default():
    rows = help_rows(fit_help())
    declared = {s.name.replace("_", "-") for s in fit_options()}
    assert {f"--{name}" for name in declared} <= set(rows), declared - {r[2:] for r in rows}
    twice = [name for name, texts in rows.items() if len(texts) > 1]
    assert not twice, twice
    defaults = {name: texts[0].count("[default:") for name, texts in rows.items()}
    assert not [name for name, n in defaults.items() if n > 1], defaults
    # an option several methods declare shows each method's default once, in one place
    assert "[default: 16; kgcoop: 4; scpnet: 4; coop-video: 4; maple: 2]" in rows["--n-ctx"][0]
    assert "[default: 0.002; tip-adapter-f: 0.001; maple: 0.0035]" in rows["--lr"][0]  # published recipes
    assert "[default: 0.125]" in rows["--lambda-u"][0]
    methods = re.search(r"One of: ([a-z0-9+, -]+)\.", rows["--method"][0]).group(1).split(", ")
    assert methods == list(METHODS)


def test_fit_help_keeps_the_placeholders_of_its_texts():
    rows = help_rows(fit_help())
    assert "runs/<method>-<tasks>-<shots>shot-seed<seed>" in rows["--out"][0]
    assert "mask_<task>.csv" in rows["--mask"][0]


def test_each_option_is_declared_once_and_by_one_help_text():
    names = [s.name for s in fit_options()]
    assert len(names) == len(set(names))
    n_ctx = next(s for s in fit_options() if s.name == "n_ctx")
    assert n_ctx.defaults["coop"] == 16 and n_ctx.defaults["scpnet"] == 4 and n_ctx.default_text() == "16; kgcoop: 4; scpnet: 4; coop-video: 4; maple: 2"


# --- values out of range: exit 2 naming the flag, nothing written ----------------------------------------

OUT_OF_RANGE = [  # extra arguments, the flag named
    (["--lr", "-1"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "inf"], "--lr"),
    (["--batch-size", "0"], "--batch-size"),
    (["--shots", "-1"], "--shots"),
    (["--epochs", "0"], "--epochs"),
    (["--momentum", "1.5"], "--momentum"),
    (["--crop-scale", "2"], "--crop-scale"),
    (["--crop-scale", "0"], "--crop-scale"),
    (["--aug-views", "0"], "--aug-views"),
    (["--seed", "-1"], "--seed"),
    (["--encode-batch-size", "0"], "--encode-batch-size"),
    (["--class-token-position", "top"], "--class-token-position"),
    (["--precision", "fp8"], "--precision"),
    (["--method", "softcpt", "--variant", "bad"], "--variant"),
    (["--method", "zeroshot", "--shots", "-1"], "--shots"),
]


@pytest.mark.parametrize("args, flag", OUT_OF_RANGE, ids=[" ".join(a) for a, _ in OUT_OF_RANGE])
def test_out_of_range_values_exit_2_naming_the_flag(tiny_clip, colours, tmp_path, args, flag):
    code, _, err = cli("fit", "--tasks", f"colours={colours}", "--backbone", tiny_clip, *args, "--out", tmp_path / "r",
                       "--quiet")
    assert code == 2 and flag in err and "Traceback" not in err, err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("args", [["--known-ratio", "0"], ["--known-ratio", "1.5"], ["--unknown-value", "1"]])
def test_multi_label_values_out_of_range_exit_2(tiny_clip, ml_folder, tmp_path, args):
    code, _, err = cli("fit", "--method", "zeroshot", "--tasks", f"ml={ml_folder}", "--backbone", tiny_clip, *args,
                       "--out", tmp_path / "r", "--quiet")
    assert code == 2 and args[0] in err and "out of range" in err, err
    assert not (tmp_path / "r").exists()


# --- options that do not apply ----------------------------------------------------------------------------

TRAINERS = ["tip-adapter-f", "coop", "coop-shared", "kgcoop", "softcpt", "scpnet", "coop-video", "clip4clip", "dgl", "tempme",
            "maple"]
NOT_APPLICABLE = [  # method, extra arguments, the flag, what the message says uses it
    ("coop", ["--lambda-u", "1"], "--lambda-u", ["scpnet"]),
    ("zeroshot", ["--epochs", "3"], "--epochs", TRAINERS),
    ("linear-probe", ["--lr", "0.1"], "--lr", TRAINERS),
    ("coop", ["--merge", "tome"], "--merge", ["clip4clip", "dgl", "tempme"]),
    ("coop", ["--variant", "nats"], "--variant", ["softcpt"]),
    ("zeroshot", ["--n-ctx", "4"], "--n-ctx", ["coop", "coop-shared", "kgcoop", "softcpt", "scpnet", "coop-video",
                                               "maple"]),
    ("coop", ["--known-ratio", "0.5"], "--known-ratio", ["not for single-label tasks"]),
]


@pytest.mark.parametrize("method, args, flag, users", NOT_APPLICABLE, ids=[f"{m} {' '.join(a)}" for m, a, *_ in NOT_APPLICABLE])
def test_an_option_of_other_methods_exits_2_naming_who_uses_it(tiny_clip, colours, tmp_path, method, args, flag, users):
    code, _, err = cli("fit", "--method", method, "--tasks", f"colours={colours}", "--backbone", tiny_clip, *args,
                       "--out", tmp_path / "r", "--quiet")
    assert code == 2 and flag in err and f"--method {method}" in err, err
    said = re.search(rf"{flag} \(([^)]*)\)", err).group(1)
    assert said == ("used by " + ", ".join(users) if users[0] in METHODS else users[0])
    assert not (tmp_path / "r").exists()


def test_resume_takes_no_other_option(tmp_path):
    code, _, err = cli("fit", "--resume", tmp_path / "run", "--lr", "1", "--quiet")
    assert code == 2 and "--lr" in err and "--resume" in err, err
    code, _, err = cli("fit", "--resume", tmp_path / "run", "--no-prior", "--quiet")
    assert code == 2 and "--no-prior" in err, err


# --- plan() ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method, shots, epochs", [("coop", 1, 50), ("coop", 4, 100), ("coop", 8, 200),
                                                    ("coop", 0, 200), ("coop-shared", 4, 50), ("softcpt", 4, 50)])
def test_plan_resolves_the_methods_default_epochs(colours, method, shots, epochs):
    resolved = plan(FitRequest(method=method, tasks=f"c={colours}", options={"shots": shots}))
    assert resolved.train.epochs == epochs and resolved.kind_options.shots == shots
    assert plan(FitRequest(method=method, tasks=f"c={colours}", options={"shots": shots, "epochs": 3})).train.epochs == 3


def test_plan_gives_each_method_its_own_defaults_and_checks_the_kind(colours, ml_folder):
    coop = plan(FitRequest(method="coop", tasks=f"c={colours}"))
    assert coop.method_config.n_ctx == 16 and coop.method_config.ctx_init == "" and coop.kind.name == "single-label"
    assert coop.settings["lr"] == 0.002 and coop.settings["shots"] == 16 and coop.settings["aug_views"] == 8
    scpnet = plan(FitRequest(method="scpnet", tasks=f"m={ml_folder}", options={"known_ratio": 0.5, "lambda_u": 1.0}))
    assert scpnet.method_config.n_ctx == 4 and scpnet.method_config.ctx_init == "a photo of a"
    assert scpnet.method_config.lambda_u == 1.0 and scpnet.kind_options.known_ratio == 0.5
    assert scpnet.kind.name == "multi-label" and scpnet.train.epochs == 50
    zs = plan(FitRequest(method="zeroshot", tasks=f"c={colours}"))
    assert zs.train is None and zs.method_config.template == ["a photo of a {}."]
    with pytest.raises(CptError, match="multi-label"):
        plan(FitRequest(method="scpnet", tasks=f"c={colours}"))
    with pytest.raises(CptError, match="--lambda-u"):
        plan(FitRequest(method="coop", tasks=f"c={colours}", options={"lambda_u": 1.0}))


def test_every_switch_a_method_lists_is_one_it_accepts(colours, ml_folder, tmp_path):
    toy_video.build(tmp_path / "videos", n={"train": 4, "val": 2, "test": 2})
    tasks = {"single-label": f"c={colours}", "multi-label": f"m={ml_folder}", "retrieval": f"v={tmp_path / 'videos'}"}
    refused = []
    for name, cls in METHODS.items():
        for kind in cls.kinds:
            for spec in option_classes(cls, KINDS[kind]):
                for f in (f for f in declared(spec) if f.name in applicable(cls, KINDS[kind])):
                    value = True if option_type(spec, f.name) is bool else 0.5 if f.name == "class_sample_rate" else None
                    try:
                        if value is not None:
                            plan(FitRequest(method=name, tasks=tasks[kind], options={f.name: value}))
                    except CptError:
                        refused.append(f"{name} on {kind}: {flag(f.name)}")
    assert not refused, refused


def test_method_options_cover_every_kind_the_method_supports():
    coop = {flag: default for flag, default, _ in method_options(METHODS["coop"])}
    assert coop["--n-ctx"] == 16 and coop["--shots"] == 16 and coop["--known-ratio"] == 1.0 and coop["--lr"] == 0.002
    assert "--lambda-u" not in coop and "--variant" not in coop
    zeroshot = {flag for flag, _, _ in method_options(METHODS["zeroshot"])}
    assert "--template" in zeroshot and not {"--epochs", "--lr", "--aug-views", "--n-ctx"} & zeroshot
    scpnet = {flag: default for flag, default, _ in method_options(METHODS["scpnet"])}
    assert scpnet["--lambda-u"] == 0.125 and scpnet["--n-ctx"] == 4 and "--shots" not in scpnet
    assert all(n == 1 for n in Counter(flag for flag, _, _ in method_options(METHODS["scpnet"])).values())
