"""`cpt fit`: tasks -> few-shot sample -> cached features -> method -> checkpoint -> test metrics.

The data flow is linear and every stage writes what it produced into the run directory, so
an interrupted run resumes from its last checkpoint with the same sampled images.
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd
import torch
from cpt_datasets.recipes import RECIPES

from cpt import data as D
from cpt import run as R
from cpt.backbone import load_backbone
from cpt.console import log, log_to_file
from cpt.errors import CptError
from cpt.evaluate import evaluate, test_set, write_results
from cpt.features import AugmentSpec, FeatureCache
from cpt.fit_ml import fit_multilabel, load_multilabel
from cpt.io import write_csv
from cpt.methods import TaskData, build_method, config_from, method_class
from cpt.options import FitRequest, FitResult
from cpt.taskfile import TaskSpec
from cpt.train import TASK_SAMPLING, TrainConfig, coop_epochs, train


def _load_tasks(
    req: FitRequest, specs: list[TaskSpec], run: Path, resume: bool
) -> tuple[list[D.Task], list[D.Skipped]]:
    """The run's tasks with their sampled splits: re-read on resume, sampled otherwise."""
    splits = run / R.SPLITS
    if resume and splits.exists():
        meta = R.read_config(run)["tasks"]
        return D.tasks_from_frame(D.read_splits(splits), meta), []
    tasks, skipped = [], []
    for spec in specs:
        task, skip = D.load_spec(spec, req.seed)
        task, skip2 = D.few_shot(task, req.shots, req.seed)
        tasks.append(task)
        skipped += skip + skip2
    return tasks, skipped


def _labels(samples: list[D.Sample], keep: torch.Tensor) -> torch.Tensor:
    return torch.tensor([samples[i].label for i in keep.tolist()], dtype=torch.long)


def _check_classes(task: D.Task, labels: torch.Tensor) -> None:
    missing = [name for c, name in enumerate(task.classnames) if c not in set(labels.tolist())]
    if missing:
        raise CptError(
            f"Task {task.name!r}: class {missing[0]!r} has no readable training image left "
            f"(see skipped.csv). Add images to that class or remove its folder."
        )


def _task_data(uses: tuple[str, ...], task: D.Task, cache: FeatureCache, aug: AugmentSpec) -> TaskData:
    """The cached training features `uses` asks for ("views", "plain", "val"); empty otherwise."""
    dim = cache.backbone.geometry["embed_dim"]
    train, val = task.splits["train"], task.splits["val"]
    paths = [s.path for s in train]
    views = cache.features(paths, aug, f"{task.name}: train views") if "views" in uses else torch.empty(len(train), aug.views, dim)
    plain = cache.features(paths, None, f"{task.name}: train") if "plain" in uses else torch.empty(len(train), dim)
    keep = cache.readable([s.path for s in train])
    labels = _labels(train, keep)
    if uses:
        _check_classes(task, labels)
    if "val" in uses:
        val_feats = cache.features([s.path for s in val], None, f"{task.name}: val")
        val_keep = cache.readable([s.path for s in val])
        val_feats, val_labels = val_feats[val_keep], _labels(val, val_keep)
    else:
        val_feats, val_labels = torch.empty(0, dim), torch.empty(0, dtype=torch.long)
    return TaskData(task.name, task.classnames, views[keep], plain[keep], labels, val_feats, val_labels)


def _train_config(req: FitRequest, multi_label: bool = False) -> TrainConfig:
    options = asdict(req)
    fixed = multi_label or req.method in ("softcpt", "coop-shared")  # 50 epochs, as SoftCPT / DualCoOp
    options["epochs"] = req.epochs or (50 if fixed else coop_epochs(req.shots))
    if req.task_sampling not in TASK_SAMPLING:
        raise CptError(f"--task-sampling {req.task_sampling!r} must be one of {', '.join(TASK_SAMPLING)}.")
    return config_from(TrainConfig, options)


def fit(req: FitRequest, resume: bool = False, overwrite: bool = False) -> FitResult:
    """Run (or resume) a whole `cpt fit` into `req.out`."""
    t0 = time.perf_counter()
    method_class(req.method)  # an unknown method fails before anything is read or created
    if resume:
        run = R.prepare(Path(req.out), resume=True)
        req = FitRequest(**{**R.read_config(run)["request"], "out": str(run)})
    # find and read the data before creating the run, so bad input leaves nothing behind
    specs, multi_label = ([], True) if req.labels else D.resolve_tasks(req.tasks, req.data_root)
    recipe = RECIPES.get(req.tasks)
    if req.crop_scale is None:
        req = replace(req, crop_scale=recipe.crop_scale if recipe and recipe.crop_scale else AugmentSpec.scale[0])
    if req.strong_augment is None:
        req = replace(req, strong_augment=recipe.strong_augment if recipe and recipe.strong_augment else "randaugment")
    if multi_label:
        loaded = load_multilabel(req, specs)
    else:
        if method_class(req.method).multi_label_only:
            raise CptError(f"{req.method} is a multi-label method; give a multi-label task (--labels FILE, a folder with "
                           "train.csv and test.csv, or toy-ml).")
        tasks, skipped = _load_tasks(req, specs, Path(req.out), resume)
    if not resume:
        run = R.prepare(Path(req.out), overwrite=overwrite)
    handler = log_to_file(run / "fit.log")
    try:
        log.info("%s run %s (method %s)", "resuming" if resume else "starting", run, req.method)
        if multi_label:
            return fit_multilabel(req, run, loaded, t0, _train_config(req, multi_label=True), resume)
        backbone = load_backbone(req.backbone, req.device, req.precision, req.clip_cache)
        method = build_method(req.method, backbone, [t.classnames for t in tasks], asdict(req), [t.title for t in tasks])
        train_cfg = _train_config(req)
        config = {
            "command": "fit",
            "request": asdict(req),
            "method_config": asdict(method.cfg),
            "train": asdict(train_cfg) if method.trains else None,
            "backbone": backbone.describe(),
            "tasks": [{"name": t.name, "title": t.title, "source": t.source, "classnames": t.classnames,
                       "metric": s.metric} for t, s in zip(tasks, specs)],
            "status": "running",
        }
        R.write_config(run, config)
        cache = FeatureCache(backbone, Path(req.cache_dir) if req.cache_dir else None, req.encode_batch_size)
        aug = AugmentSpec(views=req.aug_views, scale=(req.crop_scale, 1.0))
        train_data = [_task_data(method.uses, t, cache, aug) for t in tasks]
        tests = [test_set(t, cache) for t in tasks]
        skipped += [D.Skipped(t.name, p, r) for t in tasks for p, r in cache.stats.failed.items() if _in_task(t, p)]
        if not (resume and (run / "skipped.csv").exists()):
            write_csv(run / "skipped.csv", pd.DataFrame([asdict(s) for s in skipped], columns=["task", "path", "reason"]))
        for s in skipped:
            log.warning("skipped %s (%s): %s", s.path, s.task, s.reason)
        write_csv(run / R.SPLITS, D.splits_frame(_without(tasks, cache.stats.failed)))
        checkpoint = R.load_checkpoint(run) if resume else None
        if checkpoint and checkpoint.get("done"):
            method.load_state(checkpoint["state"])
        elif method.trains:
            train_state = checkpoint["train_state"] if checkpoint else None

            def save(state: dict) -> None:  # the checkpoint last: it is what --resume trusts
                write_csv(run / "history.csv", pd.DataFrame(state["history"]))
                R.save_checkpoint(run, R.checkpoint_payload(method, [t.name for t in tasks], backbone, state, done=False))

            history = train(method, train_data, train_cfg, train_state, save)
            write_csv(run / "history.csv", pd.DataFrame(history))
        else:
            method.fit(train_data)
        R.save_checkpoint(run, R.checkpoint_payload(method, [t.name for t in tasks], backbone, None, done=True))
        predictions = evaluate(method.classifiers(), tests)
        details = {"method": req.method, "backbone": req.backbone, "shots": str(req.shots), "seed": str(req.seed)}
        headline = {t.name: s.metric for t, s in zip(tasks, specs)}
        metrics = write_results(run, predictions, "test", f"cpt fit: {req.method} on {', '.join(t.name for t in tasks)}",
                                details, headline)
        R.write_config(run, {**config, "status": "finished"})
        log.info("finished: %s", run)
        return FitResult(run, metrics, cache.stats.encoded, cache.stats.cached, len(skipped), time.perf_counter() - t0)
    finally:
        log.removeHandler(handler)
        handler.close()


def _in_task(task: D.Task, path: str) -> bool:
    return any(str(s.path) == path for split in task.splits.values() for s in split)


def _without(tasks: list[D.Task], failed: dict[str, str]) -> list[D.Task]:
    """The tasks with the images that failed to decode removed (what splits.csv records)."""
    return [
        D.Task(t.name, t.classnames, {k: [s for s in v if str(s.path) not in failed] for k, v in t.splits.items()}, t.source, t.title)
        for t in tasks
    ]
