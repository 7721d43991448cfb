"""What a `cpt fit` call asks for and what it returns (shared by the single- and multi-label paths)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd


@dataclass
class FitRequest:
    """Every option of `cpt fit`; saved in config.json so `--resume` rebuilds the same run."""

    method: str = "coop"
    tasks: str = ""
    data_root: str | None = None  # where benchmark suites (general10, plant6, fashion20) live
    out: str = ""
    shots: int = 16
    known_ratio: float = 1.0  # multi-label: share of training label entries kept known
    seed: int = 1
    backbone: str = "RN50"
    device: str = "auto"
    precision: str = "fp32"
    cache_dir: str | None = None
    clip_cache: str | None = None
    epochs: int | None = None  # None: CoOp's budget for the number of shots (50 for softcpt, coop-shared)
    batch_size: int = 32
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    task_sampling: str = "proportional"
    variant: str = "nata"  # SoftCPT
    task_n_ctx: int = 4  # SoftCPT
    class_n_ctx: int = 4  # SoftCPT class-feature variants
    class_sample_rate: float = 0.0
    amp: bool = False
    grad_checkpoint: bool = False
    n_ctx: int = 16
    ctx_init: str = ""
    class_specific: bool = False
    position: str = "end"
    templates: list[str] = field(default_factory=list)
    aug_views: int = 8
    crop_scale: float | None = None  # smallest random-resized-crop area; None: the recipe's or CoOp's 0.08
    encode_batch_size: int = 64


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
