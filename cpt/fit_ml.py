"""`cpt fit` on multi-label tasks (label files with unknown entries): zero-shot ranking + mAP.

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
from cpt.features import FeatureCache
from cpt.io import write_csv
from cpt.methods import build_method
from cpt.metrics import multilabel_frames
from cpt.multilabel import load_multilabel_task
from cpt.options import FitRequest, FitResult
from cpt.report import write_multilabel_report
from cpt.taskfile import TaskSpec

MULTILABEL_METHODS = ("zeroshot",)


def fit_multilabel(req: FitRequest, run: Path, specs: list[TaskSpec], t0: float) -> FitResult:
    """Zero-shot multi-label classification of each task's test images; writes the run's CSVs and report."""
    if req.method not in MULTILABEL_METHODS:
        raise CptError(
            f"--method {req.method} does not train on multi-label tasks; use one of {', '.join(MULTILABEL_METHODS)}."
        )
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
        "backbone": backbone.describe(),
        "tasks": [{"name": t.name, "title": t.title, "source": t.source, "classnames": t.classnames} for t in tasks],
        "status": "running",
    }
    R.write_config(run, config)
    cache = FeatureCache(backbone, Path(req.cache_dir) if req.cache_dir else None, req.encode_batch_size)
    metrics, per_class = [], []
    for task, classifier in zip(tasks, method.classifiers()):
        test = task.splits["test"]
        feats = cache.features(test.paths, None, f"{task.name}: test")
        keep = [i for i, p in enumerate(test.paths) if str(p) not in cache.stats.failed]
        scores = classifier.logits(feats[torch.tensor(keep, dtype=torch.long)]).numpy()
        m, pc = multilabel_frames(task.name, task.classnames, scores, test.targets[keep], "test")
        metrics.append(m)
        per_class.append(pc)
    metrics, per_class = pd.concat(metrics, ignore_index=True), pd.concat(per_class, ignore_index=True)
    failed = [(t.name, p, r) for t in tasks for p, r in cache.stats.failed.items()]
    skipped_frame = pd.DataFrame([asdict(s) for s in skipped] + [dict(zip(("task", "path", "reason"), f)) for f in failed],
                                 columns=["task", "path", "reason"])
    write_csv(run / "skipped.csv", skipped_frame)
    write_csv(run / "metrics.csv", metrics)
    write_csv(run / "per_class.csv", per_class)
    R.save_checkpoint(run, {"method": method.name, "state": {}, "classnames": [t.classnames for t in tasks],
                            "tasks": [t.name for t in tasks], "geometry": backbone.geometry,
                            "backbone_sha256": backbone.checksum, "train_state": None, "done": True})
    details = {"method": req.method, "backbone": req.backbone, "templates": "; ".join(method.cfg.templates)}
    write_multilabel_report(run, f"cpt fit: {req.method} on {', '.join(t.name for t in tasks)}", metrics, per_class, details)
    R.write_config(run, {**config, "status": "finished"})
    log.info("finished: %s", run)
    return FitResult(run, metrics, cache.stats.encoded, cache.stats.cached, len(skipped_frame), time.perf_counter() - t0)
