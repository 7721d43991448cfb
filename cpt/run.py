"""The run directory: one folder per run holding everything needed to understand, repeat,
resume and evaluate it (config.json, checkpoint.pt, splits.csv, CSV results, report)."""

from __future__ import annotations

import json
import platform
import shutil
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import torch

from cpt import __version__
from cpt.errors import CptError
from cpt.io import save_torch, write_json

CONFIG = "config.json"
CHECKPOINT = "checkpoint.pt"
SPLITS = "splits.csv"


def prepare(out: Path, overwrite: bool = False, resume: bool = False) -> Path:
    """Create `out`, refusing to write into an existing run unless told to resume or overwrite."""
    out = Path(out)
    if resume:
        if not (out / CONFIG).exists():
            raise CptError(f"--resume {out}: there is no cpt run there (no {CONFIG}). Check the path.")
        return out
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise CptError(
                f"The run directory {out} already exists. Use --resume {out} to continue that run, "
                "--overwrite to replace it, or choose another --out."
            )
        if not (out / CONFIG).exists():
            raise CptError(f"--overwrite refuses to delete {out}: it is not empty and holds no cpt run ({CONFIG}).")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
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


def read_config(run: Path) -> dict:
    """config.json of a run, or a clear error when `run` is not a run directory."""
    path = Path(run) / CONFIG
    if not path.exists():
        raise CptError(f"{run} is not a cpt run directory (no {CONFIG}); pass the folder `cpt fit --out` wrote.")
    return json.loads(path.read_text())


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
    """The run's checkpoint, or None if it has none yet."""
    path = Path(run) / CHECKPOINT
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)
