"""The run directory: one folder per run holding everything needed to understand, repeat,
resume and evaluate it (config.json, checkpoint.pt, splits.csv, CSV results, report)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import warnings
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import pandas as pd
import torch

from cpt import __version__
from cpt.console import log
from cpt.core.backbone import Backbone, load_backbone
from cpt.data.tasks import read_splits
from cpt.errors import CptError
from cpt.io import save_torch, short_reason, write_json
from cpt.methods import Method, build_method

CONFIG = "config.json"
CHECKPOINT = "checkpoint.pt"
SPLITS = "splits.csv"  # single-label runs: every sampled image, its split and label


def is_run(folder: Path) -> bool:
    """Whether `folder` holds a run this cpt can read (a readable config.json of its own)."""
    try:
        read_config(folder)
    except CptError:
        return False
    return True


def prepare(out: Path, overwrite: bool = False) -> Path:
    """Create the run directory `out`. An existing run is replaced only with `overwrite`; a folder
    that is not a cpt run is never deleted; a folder holding only a log of a failed start is reused."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CptError(f"--out {out} is a file; give a folder for the run (it is created if missing).")
    leftovers = [p for p in out.iterdir() if p.name != "fit.log" and not p.name.startswith(".")] if out.exists() else []
    if leftovers:
        if not is_run(out):
            raise CptError(f"{out} is not empty and is not a cpt run: cpt does not write into it or delete it. "
                           "Choose another --out.")
        if not overwrite:
            raise CptError(
                f"The run directory {out} already exists. Use --resume {out} to continue that run, "
                "--overwrite to replace it, or choose another --out."
            )
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CptError(f"cpt cannot create the run directory {out} ({exc.strerror or exc}); choose another --out.") from exc
    return out


def versions() -> dict[str, str]:
    """Versions of cpt and of the packages that decide its numbers."""
    found = {"cpt": __version__, "python": platform.python_version(), "torch": torch.__version__}
    for name in ("torchvision", "clip-anytorch", "scikit-learn", "numpy", "pandas"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "missing"
    return found


def write_config(run: Path, config: dict) -> None:
    """Write config.json with timestamps and versions added."""
    config = {**config, "versions": versions(), "updated": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    write_json(run / CONFIG, config)


def mark_status(run: Path, config: dict | None, status: str, error: str | None = None) -> None:
    """Record how a `cpt fit` call ended ("interrupted", "failed") in the config.json it wrote
    (`config`; None: it wrote none). Best effort: never hides the error that ended the call."""
    if config is None:
        return
    try:
        write_config(run, {**config, "status": status, **({"error": error[:500]} if error else {})})
    except Exception as exc:  # a full or read-only disk: the original error matters more
        log.warning("could not record status %r in %s: %s", status, Path(run) / CONFIG, exc)


def read_config(run: Path) -> dict:
    """config.json of a run, or a clear error when `run` is not a run directory of this cpt."""
    path = Path(run) / CONFIG
    if not path.exists():
        raise CptError(f"{run} is not a cpt run directory (no {CONFIG}); pass the folder `cpt fit --out` wrote.")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CptError(f"{path} is damaged ({exc}); restore it, or re-run the fit with --overwrite.") from exc
    if not isinstance(config, dict) or not {"request", "tasks", "kind", "resolved"} <= set(config):
        raise CptError(f"{path} was not written by this version of cpt (it lacks the run's kind and resolved "
                       "options); re-run the fit to get a run this cpt can read.")
    return config


def check_splits(run: Path) -> None:
    """Refuse a run whose recorded splits (splits.csv, single-label runs) are damaged: unreadable,
    without the task, split, path or label column, or with a label that is not a class index."""
    path = Path(run) / SPLITS
    if not path.exists():
        return
    fix = "Restore the run's original splits.csv, or re-run the fit with --overwrite."
    try:
        frame = read_splits(path)
    except ValueError as exc:  # empty, truncated mid-quote, not text
        raise CptError(f"{path} is damaged ({short_reason(exc)}). {fix}") from exc
    missing = [c for c in ("task", "split", "path", "label") if c not in frame.columns]
    if missing:
        raise CptError(f"{path} is damaged: it has no {', '.join(missing)} column. {fix}")
    labels = pd.to_numeric(frame["label"], errors="coerce")
    if labels.isna().any() or (labels % 1 != 0).any():
        raise CptError(f"{path} is damaged: its label column holds something other than class numbers. {fix}")


def checkpoint_payload(method, tasks: list[str], backbone, train_state: dict | None, done: bool) -> dict:
    """What checkpoint.pt holds: the method's learned tensors and what rebuilding it needs."""
    return {
        "method": method.name,
        "state": method.state(),
        "classnames": method.classnames,
        "tasks": tasks,
        "geometry": backbone.geometry,
        "backbone_sha256": backbone.checksum,
        "train_state": train_state,
        "done": done,
    }


def save_checkpoint(run: Path, payload: dict) -> None:
    """checkpoint.pt: learned tensors plus what is needed to rebuild the method."""
    save_torch(Path(run) / CHECKPOINT, payload)


def load_checkpoint(run: Path) -> dict | None:
    """The run's checkpoint, or None if it has none yet. Loaded code-free (`weights_only=True`):
    a checkpoint.pt from someone else cannot run code."""
    path = Path(run) / CHECKPOINT
    if not path.exists():
        return None
    fix = "Re-run the fit with --overwrite, or restore the file."
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on old pickle protocols: the error says it all
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged or foreign files
        raise CptError(f"{path} is damaged or not a cpt checkpoint ({short_reason(exc)}). {fix}") from exc
    if not isinstance(payload, dict) or not {"method", "state", "done"} <= set(payload):
        raise CptError(f"{path} is not a cpt checkpoint (it lacks the method and its learned state). {fix}")
    return payload


BACKBONE_CHANGE_OK = "CPT_ACCEPT_BACKBONE_CHANGE"  # =1: use a changed backbone file anyway (a re-saved copy)


def check_backbone(backbone: Backbone, expected: str, what: str) -> None:
    """Refuse a backbone whose checksum differs from the one `what` was made with: its features,
    and so every number computed from them, would belong to another model."""
    if backbone.checksum == expected:
        return
    if os.environ.get(BACKBONE_CHANGE_OK) == "1":
        log.warning("the backbone %s (sha256 %s) is not the one %s was made with (sha256 %s); used anyway because "
                    "%s=1", backbone.spec, backbone.checksum[:12], what, expected[:12], BACKBONE_CHANGE_OK)
        return
    raise CptError(
        f"The backbone {backbone.spec} has changed since {what} was made: its file's sha256 is now "
        f"{backbone.checksum}, and {what} was made with {expected}. Results would come from another model. Restore "
        f"that file (or pass the backbone it was made with); if the file only was re-saved with the same weights, "
        f"set {BACKBONE_CHANGE_OK}=1 to use it anyway."
    )


def load_run(run: Path, device: str | None = None, precision: str | None = None, clip_cache: str | None = None,
             overrides: dict | None = None, classnames: list[list[str]] | None = None) -> tuple[dict, Backbone, Method]:
    """A finished run's config, its backbone and its method with the learned state loaded;
    `overrides` replace resolved method options (e.g. another zero-shot template); `classnames`
    replace the tasks' classes (base-to-new: classes it never saw), for a method whose state
    does not depend on them."""
    config = read_config(run)
    checkpoint = load_checkpoint(run)
    check_splits(run)
    if not checkpoint or not checkpoint.get("done"):
        raise CptError(f"The run {run} has not finished training; finish it with `cpt fit --resume {run}`.")
    request = config["request"]
    backbone = load_backbone(request["backbone"], device or request["device"], precision or request["precision"],
                             clip_cache or request.get("clip_cache"), request.get("pretrained"))
    check_backbone(backbone, config["backbone"]["sha256"], f"the run {run}")
    options = {**config["resolved"]["method"], **(overrides or {})}
    method = build_method(request["method"], backbone, classnames or [t["classnames"] for t in config["tasks"]],
                          options, [t["title"] for t in config["tasks"]])
    if classnames is not None and not method.transfers(method.cfg):
        raise CptError(f"The run {run} ({request['method']}) learned weights for each of its classes, so it cannot "
                       "classify classes it never saw. Base-to-new evaluation needs a method whose prompts do not "
                       "depend on the classes: zeroshot, coop (without --class-specific), kgcoop, maple, softcpt.")
    method.load_state(checkpoint["state"])
    return config, backbone, method
