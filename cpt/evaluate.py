"""`cpt eval`: frozen classifiers applied to cached test features, written as CSV + report.

Text features of a finished prompt are computed once per evaluation (each method's
`classifiers()`), then every test image costs one matrix product.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import torch

from cpt import data as D
from cpt import run as R
from cpt.artifact import load_run
from cpt.backbone import load_backbone
from cpt.console import log
from cpt.errors import CptError
from cpt.evaluate_ml import (
    comparison_rows,
    evaluate_multilabel,
    write_comparison,
    write_multilabel_results,
)
from cpt.features import FeatureCache
from cpt.io import write_csv
from cpt.methods import Classifier, build_method
from cpt.metrics import (
    TaskPredictions,
    metrics_frame,
    per_class_frame,
    predictions_frame,
)
from cpt.multilabel import (
    LabelSource,
    MultiLabelTask,
    load_multilabel_task,
    load_source,
)
from cpt.report import write_single_label_report


@dataclass
class EvalSet:
    """One task's evaluation images as cached features."""

    task: str
    classnames: list[str]
    features: torch.Tensor  # (n, dim)
    labels: torch.Tensor  # (n,)
    paths: list[str]


def test_set(task: D.Task, cache: FeatureCache, split: str = "test") -> EvalSet:
    """Cached features of a task's split, without images that failed to decode."""
    samples = task.splits[split]
    feats = cache.features([s.path for s in samples], None, f"{task.name}: {split}")
    keep = cache.readable([s.path for s in samples]).tolist()
    if not keep:
        raise CptError(f"Task {task.name!r} has no readable {split} image (see skipped.csv).")
    labels = torch.tensor([samples[i].label for i in keep], dtype=torch.long)
    return EvalSet(task.name, task.classnames, feats[keep], labels, [str(samples[i].path) for i in keep])


@torch.no_grad()
def evaluate(classifiers: list[Classifier], sets: list[EvalSet]) -> list[TaskPredictions]:
    """Logits of every evaluation image under its task's classifier."""
    return [
        TaskPredictions(s.task, s.classnames, s.labels.numpy(), clf.logits(s.features).numpy(), s.paths)
        for clf, s in zip(classifiers, sets)
    ]


def write_results(out: Path, preds: list[TaskPredictions], split: str, title: str, details: dict[str, str],
                  headline: dict[str, str] | None = None) -> pd.DataFrame:
    """metrics.csv, per_class.csv, predictions.csv and report.md (+ plots) into `out`."""
    metrics = metrics_frame(preds, split, headline)
    per_class = pd.concat([per_class_frame(p) for p in preds], ignore_index=True)
    write_csv(out / "metrics.csv", metrics)
    write_csv(out / "per_class.csv", per_class)
    write_csv(out / "predictions.csv", pd.concat([predictions_frame(p) for p in preds], ignore_index=True))
    write_single_label_report(out, title, preds, metrics, per_class, details)
    return metrics


@dataclass
class EvalRequest:
    """Options of `cpt eval`."""

    target: str  # a run directory, or a backbone for zero-shot evaluation
    data: str | None = None
    task: str | None = None
    out: str | None = None
    templates: list[str] | None = None
    device: str | None = None
    precision: str | None = None
    cache_dir: str | None = None
    clip_cache: str | None = None
    seed: int = 1


def _eval_task(path: str, name: str, seed: int, classnames: list[str] | None) -> D.Task:
    """A folder/CSV/JSON as one evaluation task: its test split, or every image if it has no split."""
    task, skipped = D.load_task(name, path, seed)
    for s in skipped:
        log.warning("skipped %s: %s", s.path, s.reason)
    samples = task.splits["test"] if _has_test_split(path) else sorted(
        (s for split in task.splits.values() for s in split), key=lambda s: str(s.path)
    )
    if classnames is None:
        return D.Task(task.name, task.classnames, {"train": [], "val": [], "test": samples}, path, task.title)
    unknown = [c for c in task.classnames if c not in classnames]
    if unknown:
        raise CptError(
            f"--data {path} has classes the run was not trained on: {', '.join(unknown[:5])}. "
            f"The run knows: {', '.join(classnames[:10])}{' ...' if len(classnames) > 10 else ''}."
        )
    remap = [classnames.index(c) for c in task.classnames]
    samples = [D.Sample(s.path, remap[s.label]) for s in samples]
    return D.Task(task.name, classnames, {"train": [], "val": [], "test": samples}, path, task.title)


def _has_test_split(path: str) -> bool:
    """Whether the data declares its test images (test/ folder, CSV split column, split JSON)."""
    p = Path(path.split("@")[0])
    if p.is_dir():
        return (p / "test").is_dir()
    if p.suffix.lower() == ".csv":
        return "split" in pd.read_csv(p, nrows=0).columns
    return True


def evaluate_target(req: EvalRequest) -> tuple[Path, pd.DataFrame]:
    """Evaluate a run (its test split or `--data`) or a backbone zero-shot on `--data`."""
    is_run = (Path(req.target) / R.CONFIG).exists()
    if is_run:
        if R.read_config(Path(req.target)).get("multi_label"):
            return _evaluate_multilabel_run(req)
        config, backbone, method = load_run(Path(req.target), req.device, req.precision, req.clip_cache, req.templates)
        options = config["request"]
    elif req.data is None:
        raise CptError(
            f"{req.target} is not a run directory (no {R.CONFIG}). To evaluate a backbone zero-shot, "
            "also pass --data FOLDER."
        )
    else:
        options = {"method": "zeroshot", "backbone": req.target, "templates": req.templates or []}
        backbone = load_backbone(req.target, req.device or "auto", req.precision or "fp32", req.clip_cache)
    cache_dir = req.cache_dir or options.get("cache_dir")
    cache = FeatureCache(backbone, Path(cache_dir) if cache_dir else None)
    if is_run:
        run_tasks = config["tasks"]
        if req.data is None:
            tasks = D.tasks_from_frame(D.read_splits(Path(req.target) / R.SPLITS), run_tasks)
            index = list(range(len(tasks)))
        else:
            names = [t["name"] for t in run_tasks]
            chosen = req.task or (names[0] if len(names) == 1 else None)
            if chosen not in names:
                raise CptError(f"This run has tasks {', '.join(names)}: name the one --data belongs to with --task.")
            i = names.index(chosen)
            tasks, index = [_eval_task(req.data, chosen, req.seed, run_tasks[i]["classnames"])], [i]
    else:
        tasks, index = [_eval_task(req.data, Path(req.data).stem or "data", req.seed, None)], [0]
        method = build_method("zeroshot", backbone, [tasks[0].classnames], options)
    classifiers = method.classifiers()
    sets = [test_set(t, cache) for t in tasks]
    for path, reason in cache.stats.failed.items():
        log.warning("skipped %s: %s", path, reason)
    out = Path(req.out) if req.out else (Path(req.target) if is_run and req.data is None else _default_out(req))
    out.mkdir(parents=True, exist_ok=True)
    details = {"target": req.target, "method": options["method"], "backbone": options["backbone"], "data": req.data or "the run's test split"}
    headline = {t["name"]: t.get("metric", "accuracy") for t in config["tasks"]} if is_run else None
    metrics = write_results(out, evaluate([classifiers[i] for i in index], sets), "test", f"cpt eval: {req.target}",
                            details, headline)
    return out, metrics


def _evaluate_multilabel_run(req: EvalRequest) -> tuple[Path, pd.DataFrame]:
    """A multi-label run's test split again (mAP, CP/CR/CF1/OP/OR/OF1, report) into the run or --out."""
    if req.data is not None:
        raise CptError("--data is for single-label runs; a multi-label run is evaluated on its own test labels.")
    config, backbone, method = load_run(Path(req.target), req.device, req.precision, req.clip_cache, req.templates)
    tasks = [_load_task(t) for t in config["tasks"]]
    cache_dir = req.cache_dir or config["request"].get("cache_dir")
    result = evaluate_multilabel(tasks, method.classifiers(), FeatureCache(backbone, Path(cache_dir) if cache_dir else None))
    out = Path(req.out) if req.out else Path(req.target)
    details = {"target": req.target, "method": config["request"]["method"], "backbone": config["request"]["backbone"]}
    write_multilabel_results(out, f"cpt eval: {req.target}", result, details)
    return out, result.metrics


def _load_task(recorded: dict) -> MultiLabelTask:
    """A run's multi-label task from its recorded label source (older runs: the folder in `source`)."""
    if "label_source" in recorded:
        return load_source(recorded["name"], LabelSource(**recorded["label_source"]))[0]
    return load_multilabel_task(recorded["name"], recorded["source"])[0]


def evaluate_targets(targets: list[str], req: EvalRequest) -> tuple[Path, pd.DataFrame]:
    """One target as `evaluate_target`; several multi-label runs each re-evaluated into its own folder, then
    compared in --out (comparison.csv, report.md, map_vs_known_ratio.png). `req.target` is replaced."""
    if len(targets) == 1:
        return evaluate_target(replace(req, target=targets[0]))
    if req.out is None:
        raise CptError("Several runs are compared into one folder: pass --out DIR.")
    if req.data is not None or req.task is not None:
        raise CptError("--data and --task take one target; several runs are evaluated on their own test labels.")
    configs = [R.read_config(Path(run)) for run in targets]
    single = [run for run, config in zip(targets, configs) if not config.get("multi_label")]
    if single:
        raise CptError(f"Only multi-label runs can be compared; these are single-label: {', '.join(single)}. "
                       "Evaluate each of them alone with `cpt eval RUN`.")
    metrics, rows = [], []
    for run, config in zip(targets, configs):
        _, m = _evaluate_multilabel_run(replace(req, target=run, out=None))
        rows.append(comparison_rows(run, config, m))
        metrics.append(m.assign(task=run + ": " + m["task"]))
    out = Path(req.out)
    write_comparison(out, f"cpt eval: {len(targets)} multi-label runs", pd.concat(rows, ignore_index=True))
    return out, pd.concat(metrics, ignore_index=True)


def _default_out(req: EvalRequest) -> Path:
    stem = Path(req.data or "data").stem
    if (Path(req.target) / R.CONFIG).exists():
        return Path(req.target) / f"eval-{stem}"
    return Path("runs") / f"eval-{stem}-{Path(req.target.replace('/', '-')).stem}"
