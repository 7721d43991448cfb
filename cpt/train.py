"""The one gradient train loop every prompt method shares.

Batches mix the tasks: all training images of all tasks are shuffled together, and each
batch's loss is the sum over the tasks present of that task's softmax cross-entropy over
its own classes. Every random choice of an epoch (order, which cached view) comes from a
generator seeded by (seed, epoch), and the state is saved after every epoch, so a resumed
run continues exactly as if it had never stopped.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

from cpt.console import log, track
from cpt.errors import CptError
from cpt.methods.base import PromptMethod, TaskData
from cpt.options import Options, option


TASK_SAMPLING = ("proportional", "balanced")
PANEL = "Training"


@dataclass
class TrainConfig(Options):
    """Optimisation settings; defaults follow CoOp (SGD, cosine, one constant warm-up epoch)."""

    epochs: int | None = option(None, "Training epochs [default: the method's: CoOp by shots 50/100/200; 50 for "
                                "softcpt, coop-shared, scpnet and multi-label tasks].", panel=PANEL, low=1)
    batch_size: int = option(32, "Training batch size.", panel=PANEL, low=1)
    lr: float = option(0.002, "SGD learning rate.", panel=PANEL, low=0, above=True)
    momentum: float = option(0.9, "SGD momentum.", panel=PANEL, low=0, high=1)
    weight_decay: float = option(5e-4, "SGD weight decay.", panel=PANEL, low=0)
    warmup_epochs: int = option(1, "Epochs at the constant warm-up rate 1e-5.", panel=PANEL, low=0)
    task_sampling: str = option("proportional", "Batches mix tasks in proportion to their images, or 'balanced'.",
                                panel=PANEL, choices=TASK_SAMPLING)
    class_sample_rate: float = option(0.0, "Approximate: per step, encode the batch's classes plus this share of the "
                                      "others (0 = all).", panel=PANEL, low=0, high=1)
    amp: bool = option(False, "Approximate: bf16 autocast of the training forward pass (GPU).", panel=PANEL)
    warmup_lr: float = 1e-5
    seed: int = 0


def lr_at(epoch: int, cfg: TrainConfig) -> float:
    """Learning rate of `epoch` (0-based): constant warm-up, then cosine decay."""
    if epoch < cfg.warmup_epochs:
        return cfg.warmup_lr
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * epoch / cfg.epochs))


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


def _diverged(what: str, epoch: int, cfg: TrainConfig, method: PromptMethod) -> CptError:
    """Training diverged: nothing of this epoch is saved; say how to get a run that trains."""
    fp = "" if method.backbone.precision == "fp32" else ", or --precision fp32"
    kept = (f"the checkpoint of epoch {epoch} (the last finite one) is kept" if epoch else "no checkpoint was saved")
    return CptError(
        f"{what} in epoch {epoch + 1} (--lr {cfg.lr:g}): training diverged, and {kept}. Start the run again with "
        f"a lower --lr{fp} and --overwrite (--resume would keep the same options)."
    )


def train(
    method: PromptMethod,
    data: list[TaskData],
    cfg: TrainConfig,
    state: dict | None = None,
    save: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Train `method` in place; returns the history (one dict per epoch).

    `state` (from a checkpoint) resumes after its last finished epoch; `save` is called
    with the full training state after every epoch.
    """
    optimizer = torch.optim.SGD(method.param_groups(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    history: list[dict] = []
    start = 0
    if state:
        method.load_state(state["method"])
        optimizer.load_state_dict(state["optimizer"])
        history, start = state["history"], state["epoch"]
    device = method.backbone.device
    for epoch in track(range(start, cfg.epochs), "Training", total=cfg.epochs - start):
        t0 = time.perf_counter()
        lr = lr_at(epoch, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        total, seen = 0.0, 0
        class_gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch + 7)
        for task_ids, picks in _epoch_batches(data, cfg, epoch):
            loss = torch.zeros((), device=device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp):
                for t in task_ids.unique().tolist():
                    rows = picks[task_ids == t]
                    classes = None
                    if cfg.class_sample_rate > 0:
                        labels = data[t].targets[rows[:, 0]]
                        classes = sample_classes(labels, len(data[t].classnames), cfg.class_sample_rate, class_gen)
                    # per-task parameters: each task's mean, as if trained alone; shared ones
                    # (SoftCPT, CoOp-MT): the mean over the whole mixed batch, as SoftCPT's reference
                    norm = len(rows) if method.task_mean else len(task_ids)
                    loss = loss + method.batch_loss(data[t], t, rows, classes, epoch, class_gen) / norm
            if not torch.isfinite(loss):
                raise _diverged(f"The training loss became {loss.item()}", epoch, cfg, method)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            try:
                optimizer.step()
            except RuntimeError as exc:  # SGD refuses an update that overflows float32 (--lr 1e300)
                if "overflow" not in str(exc):
                    raise
                raise _diverged("The training loss became unusable (an update overflowed float32)", epoch, cfg,
                                method) from exc
            total += loss.item() * len(task_ids)
            seen += len(task_ids)
        # a finite loss can still leave non-finite weights (the last step of an epoch): never save those
        if not all(bool(torch.isfinite(p).all()) for group in optimizer.param_groups for p in group["params"]):
            raise _diverged("The training loss became unusable (the learned weights are NaN or infinite)", epoch,
                            cfg, method)
        history.append({"epoch": epoch + 1, "loss": total / max(seen, 1), "lr": lr, "time_s": time.perf_counter() - t0})
        log.debug("epoch %d loss %.4f", epoch + 1, history[-1]["loss"])
        if save:
            save({"method": method.state(), "optimizer": optimizer.state_dict(), "history": history, "epoch": epoch + 1})
    return history
