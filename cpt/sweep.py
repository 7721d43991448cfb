"""`cpt sweep`: methods x shots (or x known ratios, multi-label) x seeds of `cpt fit`, gathered
into one tidy CSV, a table and a plot.

A method may carry any of its boolean options, e.g. `scpnet+no-prior` or `coop+class-specific`.
Every combination runs into OUT/<method>-<shots>shot-seed<seed>/ (or OUT/<method>-known<ratio>-seed<seed>/);
finished runs are reused, so an interrupted sweep continues where it stopped.
"""

from __future__ import annotations

import json
import typing
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd

from cpt import run as R
from cpt.console import log
from cpt.errors import CptError
from cpt.eval.report import AXIS_PLOTS, plot_against
from cpt.fit import fit
from cpt.plan import FitRequest, applicable, axis_stem, option_classes, task_kind
from cpt.io import write_csv, write_text
from cpt.kinds import TaskKind
from cpt.methods import method_class
from cpt.options import declared, flag


def parse_method(label: str, kind: TaskKind) -> tuple[str, dict[str, bool]]:
    """`scpnet+no-prior+no-gcn` -> ("scpnet", {"no_prior": True, "no_gcn": True}): the method's
    boolean options (from its declarations) on tasks of `kind`."""
    method, *flags = label.split("+")
    cls = method_class(method)
    accepted = applicable(cls, kind)
    switches = {f.name for c in option_classes(cls, kind) for f in declared(c)
                if f.name in accepted and typing.get_type_hints(c)[f.name] is bool}
    options = {f.replace("-", "_"): True for f in flags}
    unknown = [f for f in options if f not in switches]
    if unknown:
        raise CptError(f"--methods {label}: {flag(unknown[0])} is not a switch of {method}; its switches are "
                       f"{', '.join(flag(s)[2:] for s in sorted(switches))}.")
    return method, options


def sweep(base: FitRequest, methods: list[str], shots: list[int], seeds: list[int], out: Path,
          known_ratios: list[float] | None = None) -> pd.DataFrame:
    """Run (or reuse) every combination; returns the tidy results (one row per run, task, metric).

    The second axis is the tasks' kind's: shots (single-label) or known ratios (multi-label).
    `base.options` apply to each method they are an option of.
    """
    kind = task_kind(base)[0]
    axis = kind.axis
    values = known_ratios if axis == "known_ratio" else shots
    if not methods or not seeds or not values:
        raise CptError("--methods, --seeds and --shots (or --known-ratios) each need at least one value.")
    if known_ratios and axis != "known_ratio":
        raise CptError("--known-ratios applies to multi-label tasks; these tasks are single-label (use --shots).")
    frames = []
    for label in methods:
        method, flags = parse_method(label, kind)
        shared = {k: v for k, v in base.options.items() if k in applicable(method_class(method), kind)}
        for value in values:
            for seed in seeds:
                run = out / f"{label}-{axis_stem(axis, value)}-seed{seed}"
                options = {**shared, axis: value, **flags}
                _run_once(replace(base, method=method, seed=seed, out=str(run), options=options))
                frames.append(pd.read_csv(run / "metrics.csv").assign(method=label, **{axis: value}, seed=seed))
    results = pd.concat(frames, ignore_index=True)
    write_csv(out / "results.csv", results)
    summary = headline(results, kind)
    write_text(out / "table.md", table(summary, methods, axis))
    per_run = per_run_headline(results, kind).rename(columns={"method": "label"})
    plot_against(per_run, axis, out / AXIS_PLOTS[axis][0])
    return results


HOW_NOT_WHAT = ("out", "device", "cache_dir", "clip_cache", "encode_batch_size")  # request fields results ignore


def _same_run(config: dict, req: FitRequest) -> bool:
    """Whether the run `config` describes was asked for with the same options as `req`."""
    wanted = json.loads(json.dumps(asdict(req), default=str))
    return all(config["request"].get(k) == v for k, v in wanted.items() if k not in HOW_NOT_WHAT)


def _run_once(req: FitRequest) -> None:
    """Fit `req` into `req.out` unless that run already finished with the same options; an
    interrupted one resumes from its checkpoint; one made with other options is run again."""
    run = Path(req.out)
    config = R.read_config(run) if R.is_run(run) else None
    same = config is not None and _same_run(config, req)
    if same and config.get("status") == "finished":
        return
    if same and (run / R.CHECKPOINT).exists():
        log.info("sweep: resuming %s", run)
        fit(FitRequest(out=str(run)), resume=True)
        return
    if config is not None and not same:
        log.warning("sweep: %s was made with other options; running it again with these", run)
    log.info("sweep: %s, seed %d -> %s", req.method, req.seed, run)
    fit(req, overwrite=True)


def per_run_headline(results: pd.DataFrame, kind: TaskKind) -> pd.DataFrame:
    """Each run's (method, axis value, seed) headline metric, averaged over its tasks: mAP for
    multi-label, each task's headline accuracy (accuracy or mean per-class accuracy) otherwise."""
    rows = results[(results.metric == kind.headline) & (results.task != "mean")]
    return rows.groupby(["method", kind.axis, "seed"], as_index=False, sort=False)["value"].mean()


def headline(results: pd.DataFrame, kind: TaskKind) -> pd.DataFrame:
    """Mean and std over seeds of each run's headline metric."""
    per_run = per_run_headline(results, kind)
    return per_run.groupby(["method", kind.axis])["value"].agg(["mean", "std"]).fillna(0.0).reset_index()


def _column(axis: str, value) -> str:
    if axis == "known_ratio":
        return f"known {value:g}"
    return f"{value} shot{'s' if value > 1 else ''}"


def table(summary: pd.DataFrame, methods: list[str], axis: str = "shots") -> str:
    """Markdown: a row per method, a column per shot count (or known ratio), cells mean ± std."""
    values = sorted(summary[axis].unique())
    lines = ["| method | " + " | ".join(_column(axis, v) for v in values) + " |", "|---|" + "---|" * len(values)]
    for method in methods:
        rows = summary[summary.method == method].set_index(axis)
        cells = [f"{rows.loc[v, 'mean']:.1f} ± {rows.loc[v, 'std']:.1f}" if v in rows.index else "" for v in values]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
