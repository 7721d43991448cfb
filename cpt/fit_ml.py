"""`cpt fit` on multi-label tasks: zero-shot, CoOp or SCPNet trained on partial labels.

Label sources (a folder with train.csv/test.csv, or --labels/--images/--test-labels) are
read before the run directory exists. The partial-label protocol (a saved mask, one positive
per image, or --known-ratio under the seed) decides what training sees; the run keeps the
mask (mask_<task>.csv) and the targets it trained on (train_labels_<task>.csv).
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
from cpt.data import check_image
from cpt.errors import CptError
from cpt.evaluate_ml import evaluate_multilabel, write_multilabel_results
from cpt.features import STRONG_OPS, AugmentSpec, EncodedViews, FeatureCache
from cpt.io import write_csv
from cpt.methods import Method, TaskData, build_method
from cpt.multilabel import UNKNOWN, LabelSource, MultiLabelTask, load_source
from cpt.options import SCPNET_FLAGS, FitRequest, FitResult, run_flags
from cpt.partial import mask_frame, partial_targets, read_mask
from cpt.taskfile import TaskSpec
from cpt.train import TrainConfig, train

MULTILABEL_METHODS = ("zeroshot", "coop", "scpnet")


def label_sources(req: FitRequest, specs: list[TaskSpec]) -> list[tuple[str, LabelSource]]:
    """(task name, label source) of every task: --labels, or each folder's train.csv/test.csv."""
    if req.labels:
        source = LabelSource(req.labels, req.test_labels, req.images, req.unknown_value, seed=req.seed)
        return [(req.tasks or Path(req.labels).stem.removeprefix("instances_"), source)]
    return [(s.name, LabelSource.folder(s.path)) for s in specs]


def check_request(req: FitRequest) -> None:
    """Refuse option combinations that cannot mean anything, before anything is read."""
    if req.method not in MULTILABEL_METHODS:
        raise CptError(f"--method {req.method} does not train on multi-label tasks; use one of "
                       f"{', '.join(MULTILABEL_METHODS)}.")
    if req.class_sample_rate > 0:
        raise CptError("--class-sample-rate applies to single-label tasks only.")
    flags = [f"--{f.replace('_', '-')}" for f in SCPNET_FLAGS if getattr(req, f)]
    if flags and req.method != "scpnet":
        raise CptError(f"{', '.join(flags)} switch parts of SCPNet off; they apply to --method scpnet only.")
    if req.single_positive and req.method == "coop":
        raise CptError("--single-positive needs a loss for unobserved negatives: use --method scpnet (SPLC loss).")
    if req.strong_augment not in STRONG_OPS:
        raise CptError(f"--strong-augment {req.strong_augment!r} must be one of {', '.join(STRONG_OPS)}.")
    if req.finetune_image and req.precision != "fp32":
        raise CptError("--finetune-image trains the image encoder in fp32; drop --precision.")
    if req.mask and (req.single_positive or req.known_ratio < 1):
        raise CptError("--mask replaces --known-ratio and --single-positive; give only one of them.")


def load_multilabel(req: FitRequest, specs: list[TaskSpec]) -> tuple[list[MultiLabelTask], list[LabelSource], list]:
    """The tasks, their sources and the skipped rows (read before the run directory is made)."""
    check_request(req)
    named = label_sources(req, specs)
    if req.mask and len(named) != 1:
        raise CptError("--mask holds the mask of one task; run the tasks separately.")
    loaded = [load_source(name, source) for name, source in named]
    return [t for t, _ in loaded], [s for _, s in named], [s for _, skips in loaded for s in skips]


def _training_targets(req: FitRequest, run: Path, task: MultiLabelTask) -> torch.Tensor:
    """The partial targets the run trains on; mask and targets saved in the run."""
    labelled = task.splits["train"]
    paths = [str(p) for p in labelled.paths]
    known = read_mask(Path(req.mask), paths, task.classnames) if req.mask else None
    targets = partial_targets(labelled.targets, req.known_ratio, req.seed, req.single_positive, known)
    write_csv(run / f"mask_{task.name}.csv", mask_frame(paths, task.classnames, targets != UNKNOWN))
    write_csv(run / f"train_labels_{task.name}.csv", mask_frame(paths, task.classnames, targets))
    return torch.from_numpy(targets).long()


def _task_data(req: FitRequest, run: Path, method: Method, task: MultiLabelTask, cache: FeatureCache) -> TaskData:
    """Weak (and, for self-training, strong) views of the training images with their targets:
    cached features, or views the trainable image encoder encodes every step (--finetune-image)."""
    paths = task.splits["train"].paths
    targets = _training_targets(req, run, task)
    weak = AugmentSpec(views=req.aug_views, scale=(req.crop_scale, 1.0))
    specs = {"weak": weak}
    if "strong" in method.uses and not req.no_self_training:
        specs["strong"] = AugmentSpec(views=req.aug_views, scale=weak.scale, strong=req.strong_augment)
    if req.finetune_image:
        for path in paths:
            reason = check_image(path)
            if reason:
                cache.stats.failed[str(path)] = reason
        keep = cache.readable(paths)
        readable = [paths[i] for i in keep.tolist()]
        views = {k: EncodedViews(cache.backbone, readable, aug) for k, aug in specs.items()}
    else:
        views = {k: cache.features(paths, aug, f"{task.name}: {k} train views") for k, aug in specs.items()}
        keep = cache.readable(paths)
        views = {k: v[keep] for k, v in views.items()}
    dim = cache.backbone.geometry["embed_dim"]
    return TaskData(task.name, task.classnames, views["weak"], torch.empty(0, dim), targets[keep],
                    torch.empty(0, dim), torch.empty(0, dtype=torch.long), views.get("strong"))


def _train(run: Path, method: Method, data: list[TaskData], cache: FeatureCache, train_cfg: TrainConfig,
           resume: bool) -> None:
    """Train on the partial labels, checkpointing every epoch (or restore a finished run)."""
    checkpoint = R.load_checkpoint(run) if resume else None
    if checkpoint and checkpoint.get("done"):
        method.load_state(checkpoint["state"])
        return
    names = [d.name for d in data]

    def save(state: dict) -> None:
        write_csv(run / "history.csv", pd.DataFrame(state["history"]))
        R.save_checkpoint(run, R.checkpoint_payload(method, names, cache.backbone, state, done=False))

    history = train(method, data, train_cfg, checkpoint["train_state"] if checkpoint else None, save)
    write_csv(run / "history.csv", pd.DataFrame(history))


def fit_multilabel(req: FitRequest, run: Path, loaded: tuple[list[MultiLabelTask], list[LabelSource], list],
                   t0: float, train_cfg: TrainConfig, resume: bool = False) -> FitResult:
    """Multi-label runs: build, train on partial labels, then test mAP, CSVs and the mAP report."""
    tasks, sources, skipped = loaded
    backbone = load_backbone(req.backbone, req.device, req.precision, req.clip_cache)
    method = build_method(req.method, backbone, [t.classnames for t in tasks], asdict(req))
    config = {
        "command": "fit",
        "multi_label": True,
        "request": asdict(req),
        "method_config": asdict(method.cfg),
        "train": asdict(train_cfg) if method.trains else None,
        "backbone": backbone.describe(),
        "tasks": [{"name": t.name, "title": t.title, "source": t.source, "classnames": t.classnames,
                   "label_source": asdict(s)} for t, s in zip(tasks, sources)],
        "status": "running",
    }
    R.write_config(run, config)
    cache = FeatureCache(backbone, Path(req.cache_dir) if req.cache_dir else None, req.encode_batch_size)
    if method.trains:
        data = [_task_data(req, run, method, t, cache) for t in tasks]
        _train(run, method, data, cache, train_cfg, resume)
        if req.finetune_image:
            backbone.mark_image_tuned()  # test features come from the tuned encoder, under their own cache key
    result = evaluate_multilabel(tasks, method.classifiers(), cache)
    failed = [(t.name, p, r) for t in tasks for p, r in cache.stats.failed.items()]
    skipped_frame = pd.DataFrame([asdict(s) for s in skipped] + [dict(zip(("task", "path", "reason"), f)) for f in failed],
                                 columns=["task", "path", "reason"])
    write_csv(run / "skipped.csv", skipped_frame)
    R.save_checkpoint(run, R.checkpoint_payload(method, [t.name for t in tasks], backbone, None, done=True))
    details = {"method": req.method, "backbone": req.backbone, "known ratio": str(req.known_ratio),
               **{k.replace("_", " "): "yes" for k in run_flags(asdict(req))}}
    write_multilabel_results(run, f"cpt fit: {req.method} on {', '.join(t.name for t in tasks)}", result, details)
    R.write_config(run, {**config, "status": "finished"})
    log.info("finished: %s", run)
    return FitResult(run, result.metrics, cache.stats.encoded, cache.stats.cached, len(skipped_frame),
                     time.perf_counter() - t0)
