"""What a `cpt fit` call asks for and what it returns (shared by the single- and multi-label paths)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

# Boolean options that name a run's variant (report labels, sweep methods like `scpnet+no-prior`);
# all but single_positive switch parts of SCPNet and apply to --method scpnet only.
RUN_FLAGS = ("no_prior", "no_gcn", "no_self_training", "single_positive", "finetune_image")
SCPNET_FLAGS = tuple(f for f in RUN_FLAGS if f != "single_positive")


def run_flags(request: dict) -> list[str]:
    """The variant flags a run's request switched on (runs from older versions may lack some)."""
    return [f for f in RUN_FLAGS if request.get(f)]


@dataclass
class FitRequest:
    """Every option of `cpt fit`; saved in config.json so `--resume` rebuilds the same run."""

    method: str = "coop"
    tasks: str = ""
    data_root: str | None = None  # where benchmark suites (general10, plant6, fashion20) live
    out: str = ""
    shots: int = 16
    known_ratio: float = 1.0  # multi-label: share of training label entries kept known
    labels: str | None = None  # multi-label label file (CSV, COCO JSON, VOC) instead of --tasks
    images: str | None = None  # its image root
    test_labels: str | None = None  # None: a seeded split of --labels
    unknown_value: int = -1  # wide CSV: the cell meaning unknown (-1; or 0, with -1 negative)
    mask: str | None = None  # reuse a saved known-entry mask instead of drawing one
    single_positive: bool = False  # keep one positive per training image
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
    n_ctx: int | None = None  # None: the method's (16 for CoOp, 4 for SCPNet)
    ctx_init: str | None = None  # None: the method's ("" for CoOp, "a photo of a" for SCPNet)
    class_specific: bool = False
    position: str = "end"
    templates: list[str] = field(default_factory=list)
    aug_views: int = 8
    crop_scale: float | None = None  # smallest random-resized-crop area; None: the recipe's or CoOp's 0.08
    encode_batch_size: int = 64
    # SCPNet (None: the method's default)
    no_prior: bool = False
    no_gcn: bool = False
    no_self_training: bool = False
    finetune_image: bool = False
    strong_augment: str | None = None  # None: the recipe's, else "randaugment"
    image_lr_scale: float | None = None
    logit_scale: float | None = None
    lambda_u: float | None = None
    kl_lambda: float | None = None
    p_cutoff: float | None = None
    hard_k: int | None = None
    topk: int | None = None
    reweight_p: float | None = None
    temperature: float | None = None
    prior_template: str | None = None

    def __post_init__(self) -> None:
        if self.n_ctx is not None and self.ctx_init is None:
            self.ctx_init = ""  # an explicit context length means random initialisation


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
