"""`cpt fit`: tasks -> sampled splits -> cached features -> method -> checkpoint -> test metrics.

One pipeline for every task kind (cpt.kinds). A request is resolved into a `Plan` — the
kind, the method and every config, validated — and the backbone is loaded before the run
directory exists, so a bad option or file leaves nothing behind. Every stage writes what it
produced into the run directory, so an interrupted run resumes from its last checkpoint with
the same sampled images.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch
from torch import Tensor

from cpt import dist
from cpt import retrieval
from cpt import run as R
from cpt.console import log, log_to_file
from cpt.core.backbone import load_backbone
from cpt.data.features import EncodedViews, FeatureCache
from cpt.data.tasks import Skipped, check_image
from cpt.errors import CptError
from cpt.eval.evaluate import details, score, split_features
from cpt.eval.metrics import TaskPredictions
from cpt.io import write_csv
from cpt.kinds import Task
from cpt.methods import Method, TaskData
from cpt.plan import FitRequest, Plan, default_out, plan
from cpt.train import train

SKIPPED = "skipped.csv"


@dataclass
class FitResult:
    run: Path
    metrics: pd.DataFrame
    encoded: int  # images encoded by this call (0 when every feature came from the cache)
    cached: int
    skipped: int
    seconds: float

    def summary(self) -> dict:
        """What `--json` prints."""
        return {
            "run": str(self.run),
            "metrics": self.metrics.to_dict(orient="records"),
            "images_encoded": self.encoded,
            "images_from_cache": self.cached,
            "skipped": self.skipped,
            "seconds": round(self.seconds, 2),
        }


def _readable_now(paths: list[Path], cache: FeatureCache) -> Tensor:
    """Indices of the images that decode now (recorded as failed otherwise): for images a trainable
    image encoder reads every step instead of through the cache."""
    for path in paths:
        reason = check_image(path)
        if reason:
            cache.stats.failed[str(path)] = reason
    return cache.readable(paths)


def training_data(p: Plan, method: Method, task: Task, cache: FeatureCache, run: Path, seed: int) -> TaskData:
    """The task's training split as the method needs it: cached views (or views the trainable
    image encoder encodes every step), plain features, validation features (for the method, or
    for --select val), and the kind's targets."""
    paths = task.paths("train")
    targets = p.kind.train_targets(task, p.kind_options, seed, run)
    augmentations = method.augmentations(p.views)
    if method.tunes_image():
        keep = _readable_now(paths, cache)
        readable = [paths[i] for i in keep.tolist()]
        views = {k: EncodedViews(cache.backbone, readable, aug, cache.encode) for k, aug in augmentations.items()}
    else:
        views = {k: dist.share_features(cache, paths, aug, f"{task.name}: train {k}") for k, aug in augmentations.items()}
        plain = dist.share_features(cache, paths, None, f"{task.name}: train") if "plain" in method.uses else None
        keep = cache.readable(paths)
        views = {k: v[keep] for k, v in views.items()}
    dim = cache.backbone.geometry["embed_dim"]
    kept = targets[keep.numpy()]
    p.kind.check_training(task, kept)
    val, val_targets = torch.empty(0, dim), torch.empty(0, dtype=torch.long)
    if "val" in method.uses or selects_on_val(p):
        val_paths = task.paths("val")
        if method.tunes_image():
            val_keep = _readable_now(val_paths, cache)
            val = EncodedViews(cache.backbone, [val_paths[i] for i in val_keep.tolist()], None, cache.encode)
        else:
            val = dist.share_features(cache, val_paths, None, f"{task.name}: val")
            val_keep = cache.readable(val_paths)
            val = val[val_keep]
        val_targets = torch.from_numpy(p.kind.val_targets(task, p.kind_options, seed)[val_keep.numpy()]).long()
    return TaskData(task.name, task.classnames, p.kind, torch.from_numpy(kept).long(),
                    views.get("views", torch.empty(len(keep), 0, dim)),
                    plain[keep] if "plain" in method.uses else torch.empty(len(keep), dim),
                    val, val_targets, views.get("strong"))


def selects_on_val(p: Plan) -> bool:
    """Whether the run chooses its weights on the validation split (--select val)."""
    return p.train is not None and p.train.select == "val"


def check_val_split(p: Plan, tasks: list[Task]) -> None:
    """--select val needs validation images in every task: refuse before the run directory exists."""
    missing = [t.name for t in tasks if not t.paths("val")] if selects_on_val(p) else []
    if missing:
        raise CptError(f"--select val chooses the weights on a validation split, and task {missing[0]!r} has none. "
                       f"{p.kind.val_hint}")


def val_scorer(p: Plan, method: Method, data: list[TaskData], headline: dict[str, str]) -> Callable[[], float]:
    """Score the method's current weights on every task's validation split (the kind's selection score)."""
    def score_now() -> float:
        scored = []
        for d, clf in zip(data, method.classifiers()):
            feats = d.val.encode_all() if isinstance(d.val, EncodedViews) else d.val
            scored.append(TaskPredictions(d.name, d.classnames, d.val_targets.numpy(), clf.logits(feats).numpy(), []))
        return p.kind.selection_score(scored, headline)

    return score_now


def _skipped(tasks: list[Task], failed: dict[str, str], earlier: list[Skipped]) -> pd.DataFrame:
    """skipped.csv: what loading skipped plus the images that failed to decode, each under its own task."""
    rows = [asdict(s) for s in earlier]
    for t in tasks:
        mine = {str(p) for split in ("train", "val", "test") for p in t.paths(split)}
        rows += [{"task": t.name, "path": p, "reason": r} for p, r in failed.items() if p in mine]
    return pd.DataFrame(rows, columns=["task", "path", "reason"]).drop_duplicates(["task", "path"])


def selected_epoch(run: Path) -> dict | None:
    """The epoch whose weights the run kept and which (model or ema), with its validation scores,
    from history.csv (None for a method that does not train)."""
    path = run / "history.csv"
    if not path.exists():
        return None
    history = pd.read_csv(path)
    if "selected" not in history:
        return None
    row = history[history.selected.notna()].iloc[0]
    scores = {k: float(row[k]) for k in ("val_score", "val_score_ema") if k in history and pd.notna(row[k])}
    return {"epoch": int(row.epoch), "weights": str(row.selected), **scores}


def _train_or_restore(p: Plan, method: Method, data: list[TaskData], run: Path, checkpoint: dict | None,
                      backbone: Any, names: list[str], validate: Callable[[], float] | None) -> float | None:
    """Fit the method (checkpointing every epoch), or restore a run that finished training. Returns
    the seconds fitting took (training epochs, with those of earlier attempts; or a training-free
    fit), None when restored."""
    seconds = None
    if checkpoint and checkpoint.get("done"):
        method.load_state(checkpoint["state"])
    elif method.trains:
        @dist.on_main  # rank 0 writes; every rank learns whether it could
        def save(state: dict) -> None:  # the checkpoint last: it is what --resume trusts
            write_csv(run / "history.csv", pd.DataFrame(state["history"]))
            R.save_checkpoint(run, R.checkpoint_payload(method, names, backbone, state, done=False))

        history = train(method, data, p.train, checkpoint["train_state"] if checkpoint else None, save, validate)
        method.finish(data)
        seconds = sum(row["time_s"] for row in history)
        if dist.is_main():
            write_csv(run / "history.csv", pd.DataFrame(history))
    else:
        t0 = time.perf_counter()
        method.fit(data)
        seconds = time.perf_counter() - t0
    if method.tunes_image():
        backbone.mark_image_tuned(method.image_encoder())  # test features: the tuned encoder's, under their own key
    if dist.is_main():
        R.save_checkpoint(run, R.checkpoint_payload(method, names, backbone, None, done=True))
    return seconds


def fit(req: FitRequest, resume: bool = False, overwrite: bool = False) -> FitResult:
    """Run (or resume) a whole `cpt fit` into `req.out`.

    Under torchrun every rank runs this: each reads the inputs and loads the model, rank 0 alone
    writes the run directory, the feature cache is filled by all ranks, and training splits each
    batch (cpt.train); a failure found on any rank stops every rank (cpt.dist.agreed).
    """
    t0 = time.perf_counter()
    config = checkpoint = None
    main = dist.is_main()
    with dist.agreed():  # inputs are checked on every rank before any of them writes
        if resume:  # every file the run resumes from is checked before anything is written
            config = R.read_config(Path(req.out))
            R.check_splits(Path(req.out))
            checkpoint = R.load_checkpoint(Path(req.out))
            req = FitRequest(**{**config["request"], "out": req.out})
        p = plan(req)
        dist.check_device(req.device)
        run = Path(req.out or default_out(req, p))
        restored = p.kind.restore(run, config["tasks"]) if config else None
        if restored is not None:
            tasks, earlier, records = restored, [], config["tasks"]
        else:
            tasks, earlier = p.kind.load(p.specs, p.kind_options, req.seed)
            records = [p.kind.record(t, s, p.kind_options, req.seed) for t, s in zip(tasks, p.specs)]
        check_val_split(p, tasks)
    # rank 0 first: it may download the weights the others then read
    backbone = dist.rank0_first(lambda: load_backbone(req.backbone, req.device, req.precision, req.clip_cache,
                                                               req.pretrained))
    with dist.agreed():
        if config:  # resuming: the prompt learned so far belongs to the backbone the run started with
            R.check_backbone(backbone, config["backbone"]["sha256"], f"the run {run}")
        method = p.method(backbone, [t.classnames for t in tasks], p.method_config, [t.title for t in tasks])
        if not resume and main:
            run = R.prepare(run, overwrite=overwrite)
    handler = log_to_file(run / "fit.log") if main else None
    written = None  # this call's config.json, once written: its status says how the call ended
    try:
        log.info("%s run %s (method %s)", "resuming" if resume else "starting", run, req.method)
        config = {
            "command": "fit",
            "kind": p.kind.name,
            "request": {**asdict(req), "out": str(run)},
            "resolved": {"kind": asdict(p.kind_options), "views": asdict(p.views),
                         "train": asdict(p.train) if p.train else None, "method": asdict(p.method_config),
                         "preset": p.preset},
            "backbone": backbone.describe(),
            "tasks": records,
            "status": "running",
        }
        if dist.world_size() > 1:
            config["world_size"] = dist.world_size()
        with dist.agreed():
            if main:
                R.write_config(run, config)
                written = config
        cache = FeatureCache(backbone, Path(req.cache_dir) if req.cache_dir else None, req.encode_batch_size,
                             encoder=method.image_encoder())
        if resume and (run / SKIPPED).exists():
            earlier = [Skipped(**r) for r in pd.read_csv(run / SKIPPED, dtype=str, keep_default_na=False).to_dict("records")]
        video = p.kind.name == "retrieval"
        if video:  # videos: decoded frames and frame features instead of image features
            cache = retrieval.clip_source(backbone, p.kind_options, req.cache_dir, req.encode_batch_size)
            data = [retrieval.training_pairs(p.kind, method, t, cache, p.views.aug_views, req.seed) for t in tasks
                    ] if method.uses else []
            for t in tasks:  # every video decoded now, so skipped.csv is complete before training
                for split in ("val", "test"):
                    cache.readable(t.paths(split))
            tests = None
        else:
            data = [training_data(p, method, t, cache, run, req.seed) for t in tasks] if method.uses else []
            # the test features now, so skipped.csv is complete before training (a tuned encoder's come after it)
            tests = None if method.tunes_image() else split_features(tasks, cache)
        skipped = _skipped(tasks, cache.stats.failed, earlier)
        with dist.agreed():  # rank 0 writes; every rank learns whether it could
            if main:
                write_csv(run / SKIPPED, skipped)
                for s in skipped.itertuples():
                    log.warning("skipped %s (%s): %s", s.path, s.task, s.reason)
                p.kind.save(run, tasks, cache.stats.failed)
        names = [t.name for t in tasks]
        headline = {r["name"]: r.get("metric", "accuracy") for r in records}
        validate = None
        if selects_on_val(p):
            validate = retrieval.val_scorer(p.kind, method, tasks, cache) if video else val_scorer(p, method, data, headline)
        seconds = _train_or_restore(p, method, data, run, checkpoint, backbone, names, validate)
        # no collective from here on: the other ranks are done, rank 0 evaluates and writes
        if not main:
            return FitResult(run, pd.DataFrame(), cache.stats.encoded, cache.stats.cached, len(skipped),
                             time.perf_counter() - t0)
        config["selected"] = selected_epoch(run)
        if seconds is not None:
            config["train_seconds"] = round(seconds, 2)
        scored = retrieval.score(tasks, method, cache) if video else score(tasks, method.classifiers(), cache, features=tests)
        evaluation = p.kind.evaluate(scored, "test", headline)
        p.kind.write(run, f"cpt fit: {req.method} on {', '.join(names)}", evaluation, details(config))
        skipped = _skipped(tasks, cache.stats.failed, earlier)
        write_csv(run / SKIPPED, skipped)
        R.write_config(run, {**config, "status": "finished"})
        written = None
        log.info("finished: %s", run)
        return FitResult(run, evaluation.metrics, cache.stats.encoded, cache.stats.cached, len(skipped),
                         time.perf_counter() - t0)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM / SIGHUP raised as one by the CLI
        if handler is not None:
            handler.handle(log.makeRecord(log.name, logging.WARNING, __file__, 0, "interrupted (%s): `cpt fit --resume "
                                          "%s` continues from the last checkpoint", (str(exc) or "SIGINT", run), None))
        R.mark_status(run, written, "interrupted")
        raise
    except BaseException as exc:
        R.mark_status(run, written, "failed", f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if handler is not None:
            log.removeHandler(handler)
            handler.close()
