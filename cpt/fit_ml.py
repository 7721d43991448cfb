"""`cpt fit` on multi-label tasks (label files with unknown entries): zero-shot, or CoOp trained
with the asymmetric loss on the known entries (`--known-ratio` hides the rest, under the seed).

Unknown entries are left out of every AP; classes without a known positive are left out of
the mean and counted in `n_classes_evaluated`.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch

from cpt import run as R
from cpt.backbone import load_backbone
from cpt.console import log
from cpt.errors import CptError
from cpt.features import AugmentSpec, FeatureCache
from cpt.io import write_csv
from cpt.methods import Classifier, TaskData, build_method
from cpt.metrics import multilabel_frames
from cpt.multilabel import MultiLabelTask, load_multilabel_task, mask_known
from cpt.options import FitRequest, FitResult
from cpt.report import write_multilabel_report
from cpt.taskfile import TaskSpec
from cpt.train import TrainConfig, train

MULTILABEL_METHODS = ("zeroshot", "coop")


def _train(req: FitRequest, run: Path, method, tasks: list, cache: FeatureCache, train_cfg: TrainConfig, resume: bool) -> None:
    """Prompt training on the known entries of the training labels (--known-ratio hides the rest)."""
    aug = AugmentSpec(views=req.aug_views, scale=(req.crop_scale, 1.0))
    data = []
    for task in tasks:
        labelled = task.splits["train"]
        targets = mask_known(labelled.targets, req.known_ratio, req.seed)
        labels = pd.DataFrame(targets, columns=task.classnames)
        labels.insert(0, "path", [str(p) for p in labelled.paths])
        write_csv(run / f"train_labels_{task.name}.csv", labels)  # what the run learned from (-1: unknown)
        views = cache.features(labelled.paths, aug, f"{task.name}: train views")
        keep = cache.readable(labelled.paths)
        dim = views.shape[-1]
        data.append(TaskData(task.name, task.classnames, views[keep], torch.empty(0, dim),
                             torch.from_numpy(targets).long()[keep], torch.empty(0, dim), torch.empty(0, dtype=torch.long)))
    checkpoint = R.load_checkpoint(run) if resume else None
    if checkpoint and checkpoint.get("done"):
        method.load_state(checkpoint["state"])
        return

    def save(state: dict) -> None:
        write_csv(run / "history.csv", pd.DataFrame(state["history"]))
        R.save_checkpoint(run, R.checkpoint_payload(method, [t.name for t in tasks], cache.backbone, state, done=False))

    history = train(method, data, train_cfg, checkpoint["train_state"] if checkpoint else None, save)
    write_csv(run / "history.csv", pd.DataFrame(history))


def evaluate_multilabel(tasks: list[MultiLabelTask], classifiers: list[Classifier],
                        cache: FeatureCache) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(metrics, per_class) of every task's test split, images that fail to decode left out."""
    metrics, per_class = [], []
    for task, classifier in zip(tasks, classifiers):
        test = task.splits["test"]
        feats = cache.features(test.paths, None, f"{task.name}: test")
        keep = cache.readable(test.paths)
        scores = classifier.logits(feats[keep]).numpy()
        m, pc = multilabel_frames(task.name, task.classnames, scores, test.targets[keep.numpy()], "test")
        metrics.append(m)
        per_class.append(pc)
    return pd.concat(metrics, ignore_index=True), pd.concat(per_class, ignore_index=True)


def write_multilabel_results(out: Path, title: str, metrics: pd.DataFrame, per_class: pd.DataFrame,
                             details: dict[str, str]) -> None:
    """metrics.csv, per_class.csv and the mAP report into `out`."""
    write_csv(out / "metrics.csv", metrics)
    write_csv(out / "per_class.csv", per_class)
    write_multilabel_report(out, title, metrics, per_class, details)


def fit_multilabel(req: FitRequest, run: Path, specs: list[TaskSpec], t0: float, train_cfg: TrainConfig,
                   resume: bool = False) -> FitResult:
    """Multi-label runs: zero-shot, or prompts trained on partial labels; test mAP, CSVs and report."""
    if req.method not in MULTILABEL_METHODS:
        raise CptError(
            f"--method {req.method} does not train on multi-label tasks; use one of {', '.join(MULTILABEL_METHODS)}."
        )
    if req.class_sample_rate > 0:
        raise CptError("--class-sample-rate applies to single-label tasks only.")
    loaded = [load_multilabel_task(s.name, s.path) for s in specs]
    tasks = [task for task, _ in loaded]
    skipped = [s for _, skips in loaded for s in skips]
    backbone = load_backbone(req.backbone, req.device, req.precision, req.clip_cache)
    method = build_method(req.method, backbone, [t.classnames for t in tasks], asdict(req))
    config = {
        "command": "fit",
        "multi_label": True,
        "request": asdict(req),
        "method_config": asdict(method.cfg),
        "train": asdict(train_cfg) if method.trains else None,
        "backbone": backbone.describe(),
        "tasks": [{"name": t.name, "title": t.title, "source": t.source, "classnames": t.classnames} for t in tasks],
        "status": "running",
    }
    R.write_config(run, config)
    cache = FeatureCache(backbone, Path(req.cache_dir) if req.cache_dir else None, req.encode_batch_size)
    if method.trains:
        _train(req, run, method, tasks, cache, train_cfg, resume)
    metrics, per_class = evaluate_multilabel(tasks, method.classifiers(), cache)
    failed = [(t.name, p, r) for t in tasks for p, r in cache.stats.failed.items()]
    skipped_frame = pd.DataFrame([asdict(s) for s in skipped] + [dict(zip(("task", "path", "reason"), f)) for f in failed],
                                 columns=["task", "path", "reason"])
    write_csv(run / "skipped.csv", skipped_frame)
    R.save_checkpoint(run, R.checkpoint_payload(method, [t.name for t in tasks], backbone, None, done=True))
    details = {"method": req.method, "backbone": req.backbone, "known ratio": str(req.known_ratio)}
    write_multilabel_results(run, f"cpt fit: {req.method} on {', '.join(t.name for t in tasks)}", metrics, per_class, details)
    R.write_config(run, {**config, "status": "finished"})
    log.info("finished: %s", run)
    return FitResult(run, metrics, cache.stats.encoded, cache.stats.cached, len(skipped_frame), time.perf_counter() - t0)
