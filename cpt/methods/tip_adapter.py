"""Tip-Adapter and Tip-Adapter-F (Zhang, Zhang, Fang, Gao, Li, Dai, Qiao and Li, ECCV 2022;
reference code github.com/gaopengcuhk/Tip-Adapter).

Zero-shot CLIP plus a cache model of the few-shot training set: its keys are the training
images' normalised features (each the mean over augmented views, then normalised), its values
their one-hot labels. For a normalised test feature x:

    logits = scale * x @ W.T + alpha * exp(-beta * (1 - x @ keys.T)) @ values

with W the hand-crafted prompts' class embeddings. `tip-adapter` trains nothing; `tip-adapter-f`
makes the keys parameters and fine-tunes them with cross-entropy on those logits (alpha and
beta fixed at their initial values). Both then choose alpha and beta on the validation split:
a grid of `--tip-beta-steps` betas in [0.1, --tip-beta-max) by `--tip-alpha-steps` alphas in
[0.1, --tip-alpha-max), the first best accuracy in (beta, alpha) order, as the reference
searches. The classifier keeps the cache (`Classifier.cache`), so eval, export and predict apply
it.

Deviations from the reference: the logit scale is the model's own (CLIP's is 100, the
reference's constant); Tip-Adapter-F keeps the last epoch's keys (or --select val's), where the
reference keeps the epoch scoring best on the test split; its learning rate decays per epoch, not
per step; and a task without validation images keeps the initial alpha and beta (the
reference has no such case).
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cpt.core.templates import template_embeddings
from cpt.data.features import AugmentSpec, ViewOptions
from cpt.methods.base import Classifier, GradientMethod, KeyValueCache, Method, Preset, TaskData, preset_table
from cpt.methods.registry import register
from cpt.methods.zeroshot import ZeroShotConfig
from cpt.options import option

log = logging.getLogger("cpt")
PANEL = "Tip-Adapter"
SOURCE = "gaopengcuhk/Tip-Adapter: main.py, utils.py (build_cache_model, search_hp), configs/imagenet.yaml"
# The authors' cache: 10 augmented passes over the few-shot set, random resized crops of 50-100 % of the area.
PAPER_VIEWS = {"aug_views": 10, "crop_scale": 0.5}
# Tip-Adapter-F's fine-tuning (main.py): AdamW lr 0.001 (eps 1e-4, torch's weight decay 0.01), batch 256, 20
# epochs, cosine decay from the first step.
PAPER_TRAINING = {"optimizer": "adamw", "lr": 0.001, "weight_decay": 0.01, "batch_size": 256, "epochs": 20,
                  "schedule": "cosine", "warmup_epochs": 0, "select": "last"}


@dataclass
class TipAdapterConfig(ZeroShotConfig):
    """The text classifier's templates, the cache's initial alpha and beta, and their search grid
    (the reference's ImageNet config: init 1.17 and 1, grid [0.1, 3) x [0.1, 7) in 20 x 200 steps)."""

    tip_alpha: float = option(1.17, "Initial residual ratio alpha: the cache's weight against zero-shot CLIP's "
                              "logits (used as is when a task has no validation images).", panel=PANEL, low=0)
    tip_beta: float = option(1.0, "Initial sharpness beta of the cache's affinity exp(-beta (1 - cos)).", panel=PANEL,
                             low=0)
    tip_alpha_max: float = option(3.0, "Upper end of the alpha grid searched on validation.", panel=PANEL, low=0.1,
                                  above=True)
    tip_beta_max: float = option(7.0, "Upper end of the beta grid searched on validation.", panel=PANEL, low=0.1,
                                 above=True)
    tip_alpha_steps: int = option(20, "Alphas in the grid (0: no search, keep --tip-alpha and --tip-beta).",
                                  panel=PANEL, low=0)
    tip_beta_steps: int = option(200, "Betas in the grid.", panel=PANEL, low=1)


def cache_keys(views: Tensor) -> Tensor:
    """(n, dim) keys from (n, views, dim) features: the mean over views, normalised."""
    return F.normalize(views.float().mean(dim=1), dim=-1)


def grid(upper: float, steps: int) -> list[float]:
    """The reference's search grid: `steps` values from 0.1 up to (not including) `upper`."""
    return [0.1 + i * (upper - 0.1) / steps for i in range(steps)]


def search(zero_shot: Tensor, affinity: Tensor, values: Tensor, labels: Tensor, cfg: TipAdapterConfig,
           ) -> tuple[float, float, float]:
    """(alpha, beta, accuracy) of the grid's first best validation accuracy, betas outer, as the
    reference: `zero_shot` (m, n_cls) text logits, `affinity` (m, n_cache) cosine to the keys."""
    best = (cfg.tip_alpha, cfg.tip_beta, -1.0)
    for beta in grid(cfg.tip_beta_max, cfg.tip_beta_steps):
        cache = torch.exp(-beta * (1 - affinity)) @ values
        for alpha in grid(cfg.tip_alpha_max, cfg.tip_alpha_steps):
            accuracy = float(((zero_shot + alpha * cache).argmax(dim=1) == labels).float().mean())
            if accuracy > best[2]:
                best = (alpha, beta, accuracy)
    return best


class TipAdapterBase(Method):
    """What both variants share: the text classifier, the cache per task, the validation search."""

    Config = TipAdapterConfig
    kinds = ("single-label",)
    uses = ("views", "val")

    def augmentations(self, views: ViewOptions) -> dict[str, AugmentSpec]:
        return {"views": AugmentSpec(views=views.aug_views, scale=(views.crop_scale, 1.0))}

    def _setup(self) -> None:
        """Zero-shot class embeddings, and empty caches filled by `build_caches` (or a checkpoint)."""
        self.text = [template_embeddings(self.backbone, names, self.cfg.template) for names in self.classnames]
        self.values: list[Tensor] = []
        self.chosen: list[tuple[float, float]] = []

    def build_caches(self, data: list[TaskData]) -> list[Tensor]:
        """Each task's keys from its training views; the one-hot values kept."""
        self.values = [F.one_hot(d.targets, len(d.classnames)).float() for d in data]
        self.chosen = [(self.cfg.tip_alpha, self.cfg.tip_beta)] * len(data)
        return [cache_keys(d.train_views) for d in data]

    @abstractmethod
    def keys(self, task: int) -> Tensor:
        """Task `task`'s cache keys (n_cache, dim)."""

    def choose(self, data: list[TaskData]) -> None:
        """Alpha and beta per task, searched on its validation split."""
        for t, d in enumerate(data):
            if len(d.val_targets) == 0 or self.cfg.tip_alpha_steps == 0:
                if len(d.val_targets) == 0:
                    log.warning("task %s has no validation images: Tip-Adapter keeps alpha %g, beta %g", d.name,
                                *self.chosen[t])
                continue
            x = F.normalize(d.val.float(), dim=-1)
            with torch.no_grad():
                affinity = x @ self.keys(t).detach().float().cpu().T
                alpha, beta, accuracy = search(self.logit_scale() * x @ self.text[t].T, affinity, self.values[t],
                                               d.val_targets, self.cfg)
            self.chosen[t] = (alpha, beta)
            log.info("tip-adapter %s: alpha %.2f, beta %.2f (validation accuracy %.4f)", d.name, alpha, beta, accuracy)

    def classifiers(self) -> list[Classifier]:
        return [Classifier(self.text[t], self.logit_scale(),
                           cache=KeyValueCache(self.keys(t).detach().float().cpu(), self.values[t], *self.chosen[t]))
                for t in range(len(self.classnames))]

    def cache_state(self) -> dict[str, Tensor]:
        """The values and the chosen alpha, beta of each task."""
        return {**{f"values.{t}": v for t, v in enumerate(self.values)},
                **{f"chosen.{t}": torch.tensor(c) for t, c in enumerate(self.chosen)}}

    def load_cache_state(self, state: dict[str, Tensor]) -> None:
        n = len(self.classnames)
        self.values = [state[f"values.{t}"] for t in range(n)]
        self.chosen = [tuple(float(v) for v in state[f"chosen.{t}"]) for t in range(n)]


@register
class TipAdapter(TipAdapterBase):
    """Training-free: the cache is built from the cached training views, alpha and beta searched."""

    name = "tip-adapter"
    summary = ("Tip-Adapter: zero-shot CLIP plus a key-value cache of the few-shot features, training-free, alpha and "
               "beta searched on validation (Zhang et al., ECCV 2022).")
    presets = preset_table(Preset(
        "tip-adapter-paper", "Tip-Adapter's cache (ECCV 2022): 10 augmented views per image (random resized crops of "
        "50-100 % of the area, flips), the ImageNet config's alpha/beta and search grid (cpt's defaults).", SOURCE,
        PAPER_VIEWS))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._setup()
        self._keys: list[Tensor] = []

    def keys(self, task: int) -> Tensor:
        return self._keys[task]

    def fit(self, data: list[TaskData]) -> None:
        self._keys = self.build_caches(data)
        self.choose(data)

    def state(self) -> dict[str, Tensor]:
        return {**{f"keys.{t}": k for t, k in enumerate(self._keys)}, **self.cache_state()}

    def load_state(self, state: dict[str, Tensor]) -> None:
        self._keys = [state[f"keys.{t}"] for t in range(len(self.classnames))]
        self.load_cache_state(state)


@register
class TipAdapterF(TipAdapterBase, GradientMethod):
    """The cache's keys fine-tuned by cross-entropy on Tip-Adapter's logits, then alpha and beta searched."""

    name = "tip-adapter-f"
    summary = ("Tip-Adapter-F: Tip-Adapter with the cache keys fine-tuned (Zhang et al., ECCV 2022); AdamW lr 0.001, "
               "batch 256, 20 epochs unless given.")
    defaults = PAPER_TRAINING
    presets = preset_table(Preset(
        "tip-adapter-f-paper", "Tip-Adapter-F (ECCV 2022): the cache of 10 augmented views (crops of 50-100 % of the "
        "area) and the fine-tuning cpt trains with by default (AdamW lr 0.001, eps 1e-4, batch 256, 20 epochs, "
        "cosine).", SOURCE, {**PAPER_VIEWS, **PAPER_TRAINING}))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._setup()
        self.key_params = nn.ParameterList()

    def keys(self, task: int) -> Tensor:
        return self.key_params[task]

    def prepare(self, data: list[TaskData]) -> None:
        device = self.backbone.device
        self.key_params = nn.ParameterList(nn.Parameter(k.to(device)) for k in self.build_caches(data))

    def finish(self, data: list[TaskData]) -> None:
        self.choose(data)

    def batch_loss(self, data: TaskData, task: int, rows: Tensor, classes: Tensor | None, epoch: int,
                   gen: torch.Generator, share: Tensor | None = None) -> Tensor:
        feats, targets, classes = self.batch_rows(data, rows, classes, share)
        x = F.normalize(feats.float(), dim=-1)
        device = self.backbone.device
        text, values = self.text[task].to(device), self.values[task].to(device)
        if classes is not None:
            text, values = text[classes], values[:, classes]
        cache = KeyValueCache(self.key_params[task], values, self.cfg.tip_alpha, self.cfg.tip_beta)
        logits = self.logit_scale() * x @ text.T + cache.logits(x)
        return F.cross_entropy(logits, targets, reduction="sum")

    def state(self) -> dict[str, Tensor]:
        return {**{f"keys.{t}": k.detach().cpu() for t, k in enumerate(self.key_params)}, **self.cache_state()}

    def load_state(self, state: dict[str, Tensor]) -> None:
        keys = [state[f"keys.{t}"].to(self.backbone.device) for t in range(len(self.classnames))]
        if [k.shape for k in keys] == [p.shape for p in self.key_params]:  # resuming: the optimiser holds these
            with torch.no_grad():
                for p, k in zip(self.key_params, keys):
                    p.copy_(k)
        else:
            self.key_params = nn.ParameterList(nn.Parameter(k) for k in keys)
        self.load_cache_state(state)
