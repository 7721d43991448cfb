"""The one gradient train loop every prompt method shares.

Batches mix the tasks: all training images of all tasks are shuffled together, and each
batch's loss is the sum over the tasks present of that task's softmax cross-entropy over
its own classes. Every random choice of an epoch (order, which cached view) comes from a
generator seeded by (seed, epoch), and the state (weights, optimiser, schedule, EMA, the
best epoch so far) is saved after every epoch, so a resumed run continues exactly as if it
had never stopped.

Optimisers and schedules: CoOp's SGD with a constant warm-up and cosine decay per epoch, or
Adam with torch's OneCycleLR stepped per batch (SCPNet's reference); optionally an EMA of the
learned weights; and which weights the run keeps: the last, or the best on the validation split.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch.optim.lr_scheduler import OneCycleLR

from cpt import dist
from cpt.console import log, track
from cpt.errors import CptError
from cpt.methods.base import GradientMethod, TaskData
from cpt.options import Options, option


TASK_SAMPLING = ("proportional", "balanced")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "onecycle")
SELECTIONS = ("last", "val")
PANEL = "Training"


@dataclass
class TrainConfig(Options):
    """Optimisation settings; defaults follow CoOp (SGD, cosine, one constant warm-up epoch)."""

    epochs: int | None = option(None, "Training epochs [default: the method's: CoOp by shots 50/100/200; 50 for "
                                "softcpt, coop-shared, scpnet and multi-label tasks; kgcoop 100, tip-adapter-f 20, maple 5].", panel=PANEL, low=1)
    batch_size: int = option(32, "Training batch size.", panel=PANEL, low=1)
    optimizer: str = option("sgd", "sgd: SGD with --momentum (CoOp); adam: Adam, --weight-decay as an L2 term on "
                            "weight matrices only, not on biases and norms (SCPNet's reference); adamw: AdamW, "
                            "decoupled --weight-decay, eps 1e-4 (Tip-Adapter-F's reference).", panel=PANEL,
                            choices=OPTIMIZERS)
    lr: float = option(0.002, "Peak learning rate.", panel=PANEL, low=0, above=True)
    momentum: float = option(0.9, "SGD momentum (onecycle cycles it between 0.95 and 0.85, as torch's OneCycleLR).",
                             panel=PANEL, low=0, high=1)
    weight_decay: float = option(5e-4, "Weight decay.", panel=PANEL, low=0)
    schedule: str = option("cosine", "cosine: --warmup-epochs at 1e-5, then cosine decay per epoch (CoOp); onecycle: "
                           "torch's OneCycleLR per step, rising from --lr/25 for 20% of the schedule, then cosine "
                           "decay (SCPNet's reference).", panel=PANEL, choices=SCHEDULES)
    schedule_epochs: int | None = option(None, "Length of the learning-rate schedule in epochs [default: --epochs]; "
                                         "training stops after --epochs (SCPNet's COCO run: 60 of 80).", panel=PANEL,
                                         low=1)
    warmup_epochs: int = option(1, "cosine: epochs at the constant warm-up rate 1e-5.", panel=PANEL, low=0)
    ema_decay: float = option(0.0, "Keep an exponential moving average of the learned weights, updated after every "
                              "step with this decay (0 = off).", panel=PANEL, low=0, high=1)
    select: str = option("last", "The weights tested and exported: last (the final ones; the EMA's with --ema-decay) "
                         "or val (the epoch, and model or EMA weights, scoring best on the validation split; never "
                         "the test split).", panel=PANEL, choices=SELECTIONS)
    task_sampling: str = option("proportional", "Batches mix tasks in proportion to their images, or 'balanced'.",
                                panel=PANEL, choices=TASK_SAMPLING)
    class_sample_rate: float = option(0.0, "Approximate: per step, encode the batch's classes plus this share of the "
                                      "others (0 = all).", panel=PANEL, low=0, high=1)
    amp: bool = option(False, "Approximate: bf16 autocast of the training forward pass (GPU).", panel=PANEL)
    warmup_lr: float = 1e-5
    pct_start: float = 0.2  # onecycle: share of the steps spent rising (SCPNet's train.py)
    seed: int = 0

    def schedule_length(self) -> int:
        """Epochs the learning-rate schedule spans."""
        return self.schedule_epochs or self.epochs


def lr_at(epoch: int, cfg: TrainConfig) -> float:
    """Learning rate of `epoch` (0-based) under the cosine schedule: constant warm-up, then cosine decay."""
    if epoch < cfg.warmup_epochs:
        return cfg.warmup_lr
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * epoch / cfg.schedule_length()))


def _epoch_batches(data: list[TaskData], cfg: TrainConfig, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(task index, sample index) pairs of each batch of one epoch, shuffled under (seed, epoch)."""
    gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    sizes = torch.tensor([len(d.targets) for d in data])
    if cfg.task_sampling == "balanced":  # as many draws as images, each task equally likely
        task_ids = torch.randint(0, len(data), (int(sizes.sum()),), generator=gen)
        sample_ids = (torch.rand(len(task_ids), generator=gen) * sizes[task_ids]).long()
    else:
        task_ids = torch.cat([torch.full((int(n),), t) for t, n in enumerate(sizes)])
        sample_ids = torch.cat([torch.arange(int(n)) for n in sizes])
    order = torch.randperm(len(task_ids), generator=gen)
    views = torch.randint(0, data[0].train_views.shape[1], (len(order),), generator=gen)
    batches = []
    for chunk in order.split(cfg.batch_size):
        batches.append((task_ids[chunk], torch.stack([sample_ids[chunk], views[chunk]], dim=1)))
    return batches


def sample_classes(labels: torch.Tensor, n_classes: int, rate: float, gen: torch.Generator) -> torch.Tensor:
    """Sorted class ids: those in `labels` plus ceil(rate x the others), drawn with `gen`."""
    present = torch.zeros(n_classes, dtype=torch.bool)
    present[labels.cpu()] = True
    others = (~present).nonzero().flatten()
    k = math.ceil(rate * len(others))
    chosen = others[torch.randperm(len(others), generator=gen)[:k]]
    return torch.cat([present.nonzero().flatten(), chosen]).sort().values


def _diverged(what: str, epoch: int, cfg: TrainConfig, method: GradientMethod) -> CptError:
    """Training diverged: nothing of this epoch is saved; say how to get a run that trains."""
    fp = "" if method.backbone.precision == "fp32" else ", or --precision fp32"
    kept = (f"the checkpoint of epoch {epoch} (the last finite one) is kept" if epoch else "no checkpoint was saved")
    return CptError(
        f"{what} in epoch {epoch + 1} (--lr {cfg.lr:g}): training diverged, and {kept}. Start the run again with "
        f"a lower --lr{fp} and --overwrite (--resume would keep the same options)."
    )


def make_optimizer(method: GradientMethod, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser over the method's parameter groups; each group keeps its peak rate as `peak_lr`."""
    groups = []
    for group in method.param_groups(cfg.lr):
        if cfg.optimizer == "adam":  # as ASL's add_weight_decay, which SCPNet's reference uses
            groups += [{**group, "params": [p for p in group["params"] if p.ndim != 1]},
                       {**group, "params": [p for p in group["params"] if p.ndim == 1], "weight_decay": 0.0}]
        else:
            groups.append(group)
    groups = [{**g, "peak_lr": g["lr"]} for g in groups if g["params"]]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=1e-4)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def one_cycle(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> OneCycleLR | None:
    """torch's OneCycleLR over every group's peak rate (None for the cosine schedule, set per epoch)."""
    if cfg.schedule != "onecycle":
        return None
    return OneCycleLR(optimizer, max_lr=[g["peak_lr"] for g in optimizer.param_groups],
                      epochs=cfg.schedule_length(), steps_per_epoch=steps_per_epoch, pct_start=cfg.pct_start)


class EMA:
    """An exponential moving average of the learned parameters (ASL's ModelEma, kept by SCPNet's
    reference): after every step, ema = decay * ema + (1 - decay) * weights; it starts as the
    initial weights."""

    def __init__(self, method: GradientMethod, decay: float) -> None:
        self.decay = decay
        self.params = {name: p for name, p in method.named_parameters() if p.requires_grad}
        self.weights = {name: p.detach().clone() for name, p in self.params.items()}

    @torch.no_grad()
    def update(self) -> None:
        for name, p in self.params.items():
            self.weights[name].mul_(self.decay).add_(p.detach(), alpha=1 - self.decay)

    def load(self, weights: dict[str, torch.Tensor]) -> None:
        """Continue from saved EMA weights."""
        self.weights = {name: weights[name].to(p.device) for name, p in self.params.items()}

    def copy_to(self) -> dict[str, torch.Tensor]:
        """Put the EMA weights into the method's parameters; returns the weights they held."""
        kept = {name: p.detach().clone() for name, p in self.params.items()}
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(self.weights[name])
        return kept

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The method's parameters hold the EMA weights inside the block."""
        kept = self.copy_to()
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in self.params.items():
                    p.copy_(kept[name])


def _validate(method: GradientMethod, ema: EMA | None, validate: Callable[[], float], epoch: int, row: dict,
              best: dict | None) -> dict | None:
    """Score the epoch's weights (and the EMA's) on the validation split into `row`; the best so
    far (the earlier epoch on ties; the EMA on a tie within an epoch, as the reference)."""
    def snapshot() -> dict[str, torch.Tensor]:  # copies: the parameters go on changing in place
        return {k: v.clone() for k, v in method.state().items()}

    row["val_score"] = score = validate()
    weights, state = "model", None
    if ema:
        with ema.applied():
            row["val_score_ema"] = validate()
            if row["val_score_ema"] >= score:
                score, weights, state = row["val_score_ema"], "ema", snapshot()
    if best is not None and score <= best["score"]:
        return best
    return {"epoch": epoch + 1, "weights": weights, "score": score, "state": state or snapshot()}


def _keep_selected(method: GradientMethod, cfg: TrainConfig, ema: EMA | None, best: dict | None,
                   history: list[dict]) -> None:
    """Load the weights the run keeps and mark their epoch in the history (`selected`: model or ema)."""
    if cfg.select == "val" and best is not None:
        method.load_state(best["state"])
        history[best["epoch"] - 1]["selected"] = best["weights"]
        return
    if ema:
        ema.copy_to()
    if history:
        history[-1]["selected"] = "ema" if ema else "model"


def train(
    method: GradientMethod,
    data: list[TaskData],
    cfg: TrainConfig,
    state: dict | None = None,
    save: Callable[[dict], None] | None = None,
    validate: Callable[[], float] | None = None,
) -> list[dict]:
    """Train `method` in place; returns the history (one dict per epoch).

    `state` (from a checkpoint) resumes after its last finished epoch; `save` is called
    with the full training state after every epoch. With `--select val`, `validate` scores
    the method's current weights on the validation split (higher is better).
    """
    method.prepare(data)
    optimizer = make_optimizer(method, cfg)
    steps = math.ceil(sum(len(d.targets) for d in data) / cfg.batch_size)  # the same every epoch
    scheduler = one_cycle(optimizer, cfg, steps)
    ema = EMA(method, cfg.ema_decay) if cfg.ema_decay > 0 else None
    history: list[dict] = []
    start, best = 0, None
    if state:
        method.load_state(state["method"])
        peaks = [g["peak_lr"] for g in optimizer.param_groups]
        optimizer.load_state_dict(state["optimizer"])
        for group, peak in zip(optimizer.param_groups, peaks):  # checkpoints written before --optimizer existed lack it
            group.setdefault("peak_lr", peak)
        if scheduler:
            scheduler.load_state_dict(state["scheduler"])
        if ema:
            ema.load(state["ema"])
        history, start, best = state["history"], state["epoch"], state.get("best")
    device = method.backbone.device
    world = dist.world_size()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for epoch in track(range(start, cfg.epochs), "Training", total=cfg.epochs - start):
        t0 = time.perf_counter()
        if scheduler is None:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(epoch, cfg) * (group["peak_lr"] / cfg.lr)
        lr = optimizer.param_groups[0]["lr"]
        total, seen = 0.0, 0
        class_gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch + 7)
        for task_ids, picks in _epoch_batches(data, cfg, epoch):
            loss = torch.zeros((), device=device)
            # several ranks: each takes its share of the batch (the classes, norms and random draws
            # stay the batch's) and encodes its block of each task's classes
            if world > 1:
                mine = torch.zeros(len(task_ids), dtype=torch.bool).index_fill_(0, dist.my_share(len(task_ids)), True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp), dist.sharded_classes():
                for t in task_ids.unique().tolist():
                    rows = picks[task_ids == t]
                    classes = None
                    if cfg.class_sample_rate > 0:
                        labels = data[t].targets[rows[:, 0]]
                        classes = sample_classes(labels, len(data[t].classnames), cfg.class_sample_rate, class_gen)
                    # per-task parameters: each task's mean, as if trained alone; shared ones
                    # (SoftCPT, CoOp-MT): the mean over the whole mixed batch, as SoftCPT's reference
                    norm = len(rows) if method.task_mean else len(task_ids)
                    share = mine[task_ids == t] if world > 1 else None
                    loss = loss + method.batch_loss(data[t], t, rows, classes, epoch, class_gen, share) / norm
            if world == 1 and not torch.isfinite(loss):
                raise _diverged(f"The training loss became {loss.item()}", epoch, cfg, method)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if world > 1:  # the batch's loss and gradients: the sums over ranks
                loss = dist.sum_gradients(loss, params)
                if not torch.isfinite(loss):
                    raise _diverged(f"The training loss became {loss.item()}", epoch, cfg, method)
            try:
                optimizer.step()
            except RuntimeError as exc:  # SGD refuses an update that overflows float32 (--lr 1e300)
                if "overflow" not in str(exc):
                    raise
                raise _diverged("The training loss became unusable (an update overflowed float32)", epoch, cfg,
                                method) from exc
            if scheduler:
                scheduler.step()
            if ema:
                ema.update()
            total += loss.item() * len(task_ids)
            seen += len(task_ids)
        # a finite loss can still leave non-finite weights (the last step of an epoch): never save those
        if not all(bool(torch.isfinite(p).all()) for group in optimizer.param_groups for p in group["params"]):
            raise _diverged("The training loss became unusable (the learned weights are NaN or infinite)", epoch,
                            cfg, method)
        row = {"epoch": epoch + 1, "loss": total / max(seen, 1), "lr": lr, "time_s": time.perf_counter() - t0}
        if validate is not None and cfg.select == "val":
            best = _validate(method, ema, validate, epoch, row, best)
        history.append(row)
        log.debug("epoch %d loss %.4f", epoch + 1, row["loss"])
        if save:
            save({"method": method.state(), "optimizer": optimizer.state_dict(), "history": history, "epoch": epoch + 1,
                  "scheduler": scheduler.state_dict() if scheduler else None, "ema": ema.weights if ema else None,
                  "best": best})
    _keep_selected(method, cfg, ema, best, history)
    return history
