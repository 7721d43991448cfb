"""`cpt eval`: frozen classifiers applied to cached test features, measured by the run's task
kind and written as CSV + report; several runs of any kind compared in one folder.

Text features of a finished prompt are computed once per evaluation (each method's
`classifiers()`), then every test image costs one matrix product.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
from torch import Tensor

from cpt import dist
from cpt import retrieval
from cpt import run as R
from cpt.console import log
from cpt.core.backbone import Backbone, load_backbone
from cpt.data.features import FeatureCache
from cpt.data.tasks import CLASS_HALVES
from cpt.errors import CptError
from cpt.eval.metrics import TaskPredictions
from cpt.eval.report import write_comparison_report
from cpt.io import write_csv
from cpt.kinds import KINDS, Task, TaskKind, kind
from cpt.methods import Classifier, Method, build_method
from cpt.options import build

COMPARISON_COLUMNS = ["run", "label", "method", "kind", "shots", "known_ratio", "frames", "seed", "task", "metric",
                      "value"]


def split_features(tasks: list[Task], cache: FeatureCache, split: str = "test") -> list[tuple[Tensor, Tensor]]:
    """(features, indices of the readable images) of each task's split; a task left without a
    readable image is a user error."""
    out = []
    for task in tasks:
        paths = task.paths(split)
        feats = dist.share_features(cache, paths, None, f"{task.name}: {split}")
        keep = cache.readable(paths)
        if not len(keep):
            raise CptError(f"Task {task.name!r} has no readable {split} image (see skipped.csv).")
        out.append((feats[keep], keep))
    return out


def score(tasks: list[Task], classifiers: list[Classifier], cache: FeatureCache, split: str = "test",
          features: list[tuple[Tensor, Tensor]] | None = None) -> list[TaskPredictions]:
    """Every readable image of each task's split under its task's classifier (`features`: the
    split's `split_features`, when already at hand)."""
    scored = []
    for task, clf, (feats, keep) in zip(tasks, classifiers, features or split_features(tasks, cache, split)):
        paths = task.paths(split)
        scored.append(TaskPredictions(task.name, task.classnames, task.targets(split)[keep.numpy()],
                                      clf.logits(feats).numpy(), [str(paths[i]) for i in keep.tolist()]))
    return scored


def run_label(request: dict) -> str:
    """The method with its preset and the boolean options the run switched on: `scpnet (no_prior,
    single_positive)`, `scpnet (preset scpnet-coco)`."""
    flags = [f"preset {request['preset']}"] if request.get("preset") else []
    flags += [name for name, value in request.get("options", {}).items() if value is True]
    return f"{request['method']} ({', '.join(flags)})" if flags else request["method"]


def details(config: dict) -> dict[str, str]:
    """The settings a report's header shows for a run."""
    request, resolved = config["request"], config["resolved"]
    axis = kind(config["kind"]).axis
    return {"method": run_label(request), "backbone": request["backbone"],
            axis.replace("_", " "): str(resolved["kind"].get(axis)), "seed": str(request["seed"])}


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
    classes: str | None = None  # base-to-new: the half of the run's tasks' classes to evaluate (base, new, all)
    pretrained: str | None = None  # an OpenCLIP target's weights (a run records its own)
    seed: int = 1


@dataclass
class _Target:
    """What `cpt eval` scores: a run's (or a backbone's zero-shot) classifiers on some tasks."""

    kind: TaskKind
    tasks: list[Task]
    index: list[int]  # each task's classifier among the method's
    method: Method
    backbone: Backbone
    headline: dict[str, str] | None
    info: dict[str, str]
    cache_dir: str | None
    kind_options: dict  # the run's resolved kind options (retrieval: --frames, --fps)


def _target(req: EvalRequest) -> _Target:
    """Load the run (or backbone) and the tasks of `req`, or say what is wrong with them."""
    target = Path(req.target)
    overrides = {"template": req.templates} if req.templates else None
    if (target / R.CONFIG).exists():
        if req.pretrained:
            raise CptError(f"--pretrained is for evaluating an OpenCLIP backbone zero-shot; the run {target} "
                           "records its own weights.")
        config = R.read_config(target)
        task_kind, records = kind(config["kind"]), config["tasks"]
        tasks = _other_classes(req, config) if req.classes else None
        config, backbone, method = R.load_run(target, req.device, req.precision, req.clip_cache, overrides,
                                              [t.classnames for t in tasks] if tasks else None)
        cache_dir = req.cache_dir or config["request"].get("cache_dir")
        if tasks:
            index = list(range(len(records)))
        elif req.data is None:
            tasks, index = task_kind.restore(target, records), list(range(len(records)))
            if tasks is None:
                raise CptError(f"The run {target} has no recorded splits; finish it with `cpt fit --resume {target}`.")
        else:
            names = [t["name"] for t in records]
            chosen = req.task or (names[0] if len(names) == 1 else None)
            if chosen not in names:
                raise CptError(f"This run has tasks {', '.join(names)}: name the one --data belongs to with --task.")
            i = names.index(chosen)
            tasks, index = [task_kind.external(req.data, chosen, req.seed, records[i]["classnames"])], [i]
        headline = {t["name"]: t.get("metric", "accuracy") for t in records}
        split = f"the test split of its {req.classes} classes" if req.classes else "the run's test split"
        info = {**details(config), "target": req.target, "data": req.data or split}
        return _Target(task_kind, tasks, index, method, backbone, headline, info, cache_dir,
                       config["resolved"]["kind"])
    if req.data is None:
        raise CptError(f"{req.target} is not a run directory (no {R.CONFIG}). To evaluate a backbone zero-shot, "
                       "also pass --data FOLDER.")
    backbone = load_backbone(req.target, req.device or "auto", req.precision or "fp32", req.clip_cache, req.pretrained)
    tasks = [KINDS["single-label"].external(req.data, Path(req.data).stem or "data", req.seed, None)]
    method = build_method("zeroshot", backbone, [tasks[0].classnames], overrides or {})
    info = {"method": "zeroshot", "backbone": req.target, "data": req.data}
    return _Target(KINDS["single-label"], tasks, [0], method, backbone, None, info, req.cache_dir, {})


def _other_classes(req: EvalRequest, config: dict) -> list[Task]:
    """Base-to-new: the run's tasks on their `req.classes` half, test split only."""
    if req.classes not in CLASS_HALVES:
        raise CptError(f"--classes {req.classes!r} is not one of {', '.join(CLASS_HALVES)}.")
    if config["kind"] != "single-label" or req.data is not None:
        raise CptError("--classes evaluates a single-label run on a half of its tasks' classes; it takes no --data "
                       f"(this run is {config['kind']}{', and --data was given' if req.data else ''}).")
    single = KINDS["single-label"]
    return [single.other_classes(record, req.classes, config["request"]["seed"]) for record in config["tasks"]]


def evaluate_target(req: EvalRequest) -> tuple[Path, pd.DataFrame]:
    """Evaluate a run (its test split or `--data`) or a backbone zero-shot on `--data`.

    Under torchrun every rank encodes a share of the images (rank 0 first loads the model, which
    it may download); rank 0 alone scores them and writes (the others return no metrics).
    """
    dist.check_device(req.device or "auto")
    t = dist.rank0_first(lambda: _target(req))
    out = Path(req.out) if req.out else _default_out(req)
    if t.kind.name == "retrieval":  # videos and captions: rank 0 scores them (the frames are cached)
        if not dist.is_main():
            return out, pd.DataFrame()
        cache = retrieval.clip_source(t.backbone, build(t.kind.Options, t.kind_options), t.cache_dir)
        scored = retrieval.score(t.tasks, t.method, cache)
    else:
        cache = FeatureCache(t.backbone, Path(t.cache_dir) if t.cache_dir else None, encoder=t.method.image_encoder())
        features = split_features(t.tasks, cache)
        if not dist.is_main():
            return out, pd.DataFrame()
        classifiers = t.method.classifiers()
        scored = score(t.tasks, [classifiers[i] for i in t.index], cache, features=features)
    for path, reason in cache.stats.failed.items():
        log.warning("skipped %s: %s", path, reason)
    out.mkdir(parents=True, exist_ok=True)
    evaluation = t.kind.evaluate(scored, "test", t.headline)
    t.kind.write(out, f"cpt eval: {req.target}", evaluation, t.info)
    return out, evaluation.metrics


def comparison_rows(run: str, config: dict, metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per task of a run with its kind's headline metric."""
    request, resolved = config["request"], config["resolved"]["kind"]
    task_kind = kind(config["kind"])
    rows = metrics[(metrics.metric == task_kind.headline) & (metrics.task != "mean")]
    return pd.DataFrame({
        "run": run, "label": run_label(request), "method": request["method"], "kind": task_kind.name,
        "shots": resolved.get("shots"), "known_ratio": resolved.get("known_ratio"), "frames": resolved.get("frames"),
        "seed": request["seed"],
        "task": rows["task"].to_numpy(), "metric": task_kind.headline, "value": rows["value"].to_numpy(),
    }, columns=COMPARISON_COLUMNS)


def evaluate_targets(targets: list[str], req: EvalRequest) -> tuple[Path, pd.DataFrame]:
    """One target as `evaluate_target`; several runs (of any kind) each re-evaluated into its own
    folder, then compared in --out (comparison.csv, report.md, a plot per kind)."""
    if len(targets) == 1:
        return evaluate_target(replace(req, target=targets[0]))
    if req.out is None:
        raise CptError("Several runs are compared into one folder: pass --out DIR.")
    if req.data is not None or req.task is not None:
        raise CptError("--data and --task take one target; several runs are evaluated on their own test labels.")
    configs = [R.read_config(Path(run)) for run in targets]
    metrics, rows = [], []
    for run, config in zip(targets, configs):
        _, m = evaluate_target(replace(req, target=run, out=None))
        if dist.is_main():
            rows.append(comparison_rows(run, config, m))
            metrics.append(m.assign(task=run + ": " + m["task"]))
    out = Path(req.out)
    if not dist.is_main():
        return out, pd.DataFrame()
    comparison = pd.concat(rows, ignore_index=True)
    write_csv(out / "comparison.csv", comparison)
    write_comparison_report(out, f"cpt eval: {len(targets)} runs", comparison, {k.name: k.axis for k in KINDS.values()})
    return out, pd.concat(metrics, ignore_index=True)


def _default_out(req: EvalRequest) -> Path:
    """The run itself; RUN/classes-HALF with --classes; RUN/eval-DATA with --data (runs/eval-... for a backbone)."""
    if req.classes:
        return Path(req.target) / f"classes-{req.classes}"
    if req.data is None:
        return Path(req.target)
    stem = Path(req.data or "data").stem
    if (Path(req.target) / R.CONFIG).exists():
        return Path(req.target) / f"eval-{stem}"
    return Path("runs") / f"eval-{stem}-{Path(req.target.replace('/', '-')).stem}"
