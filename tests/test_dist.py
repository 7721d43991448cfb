"""Several processes (gloo, 2 CPU ranks): class-sharded text encoding, the split training step, and
the real CLI under torchrun — every result compared with one process's."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from cpt import dist
from cpt.core.backbone import load_backbone
from cpt.core.prompt import ClassPrompts, PromptConfig, init_context
from cpt.errors import CptError
from cpt.kinds import KINDS
from cpt.methods import build_method
from cpt.methods.base import TaskData
from cpt.train import TrainConfig, train
from tests.conftest import TINY_VIT, make_clip

NAMES = ["dog", "red sports car", "x", "sea lion of the north", "owl"]  # 5 classes: 2 ranks encode 3 + 2 (padded)
TIMEOUT = 240  # seconds a group of processes may take before the test fails instead of hanging


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, out: Path, fn: Callable[..., Any], args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    with dist.session(timeout_s=TIMEOUT):
        result = fn(*args)
    torch.save(result, out / f"{rank}.pt")


def spawn(fn: Callable[..., Any], world: int, tmp: Path, *args: Any) -> list[Any]:
    """`fn(*args)` in `world` fresh processes joined by gloo; each rank's return value, in rank order."""
    context = mp.start_processes(_rank_main, args=(world, _free_port(), tmp, fn, args), nprocs=world, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + TIMEOUT
    try:
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{world} ranks still running after {TIMEOUT} s")
    finally:
        for p in context.processes:
            if p.is_alive():
                p.kill()
    return [torch.load(tmp / f"{r}.pt", weights_only=False) for r in range(world)]


# --- class-sharded text encoding ------------------------------------------------------------------------------

CASES = [("end", False, None), ("middle", False, None), ("end", True, None), ("end", False, [0, 2, 4]),
         ("front", False, [3])]


def _logits_and_grad(position: str, class_specific: bool, rows: list[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of 6 images against the classes and the gradient of their summed cross-entropy on the
    context; under several ranks each takes its share of the images, as training does."""
    model = make_clip(TINY_VIT)
    cfg = PromptConfig(n_ctx=4, class_token_position=position, class_specific=class_specific)
    prompts = ClassPrompts(model, NAMES, cfg)
    ctx = init_context(prompts, cfg, torch.Generator().manual_seed(0)).requires_grad_()
    images = torch.randn(6, TINY_VIT["embed_dim"], generator=torch.Generator().manual_seed(1))
    picked = None if rows is None else torch.tensor(rows)
    targets = torch.arange(6) % (len(rows) if rows else len(NAMES))
    with dist.sharded_classes():
        weight = F.normalize(prompts.encode(model, ctx, picked).float(), dim=-1)
    logits = 50 * F.normalize(images, dim=-1) @ weight.T
    mine = dist.my_share(6)
    loss = F.cross_entropy(logits[mine], targets[mine], reduction="sum")
    loss.backward()
    dist.sum_gradients(loss, [ctx])
    return logits.detach(), ctx.grad


def _every_case() -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [_logits_and_grad(*case) for case in CASES]


def test_class_sharded_encoding_gives_the_logits_and_gradients_of_one_process(tmp_path):
    ranks = spawn(_every_case, 2, tmp_path)  # one group of processes for every case: each start costs seconds
    for case, alone, *sharded in zip(CASES, _every_case(), *ranks):
        for logits, grad in sharded:  # within 1e-5 of the largest value: float rounding of sums in another order
            torch.testing.assert_close(logits, alone[0], rtol=0, atol=1e-5 * float(alone[0].abs().max()), msg=str(case))
            torch.testing.assert_close(grad, alone[1], rtol=0, atol=1e-5 * float(alone[1].abs().max()), msg=str(case))
        assert torch.equal(sharded[0][1], sharded[1][1]), case  # every rank takes the same step


# --- the training loop ----------------------------------------------------------------------------------------

def _synthetic(n: int, classes: list[str], seed: int) -> TaskData:
    gen = torch.Generator().manual_seed(seed)
    dim = TINY_VIT["embed_dim"]
    return TaskData(f"t{seed}", classes, KINDS["single-label"], torch.arange(n) % len(classes),
                    torch.randn(n, 2, dim, generator=gen), torch.empty(n, dim), torch.randn(4, dim, generator=gen),
                    torch.arange(4) % len(classes))


def _train(clip: Path, method: str, options: dict, train_options: dict) -> tuple[dict, list[dict]]:
    backbone = load_backbone(str(clip), "cpu")
    tasks = [NAMES, ["cat", "blue bus", "heron"]]
    m = build_method(method, backbone, tasks, options, ["animal", "vehicle"])
    data = [_synthetic(11, tasks[0], 0), _synthetic(7, tasks[1], 1)]
    cfg = TrainConfig(epochs=3, batch_size=5, lr=0.05, warmup_epochs=0, seed=3, **train_options)
    validate = (lambda: float(m.classifiers()[0].logits(data[0].val).max())) if cfg.select == "val" else None
    history = train(m, data, cfg, validate=validate)
    return m.state(), [{k: v for k, v in row.items() if k != "time_s"} for row in history]


TRAINED = [("coop", {"n_ctx": 2}, {}),
           ("coop", {"n_ctx": 2, "class_specific": True, "class_token_position": "middle"}, {"ema_decay": 0.5}),
           ("coop-shared", {"n_ctx": 2}, {"class_sample_rate": 0.5, "optimizer": "adam", "schedule": "onecycle"}),
           ("softcpt", {"variant": "cata", "n_ctx": 2}, {"task_sampling": "balanced", "select": "val"})]


def _refused(clip: Path) -> str:
    """What training SCPNet (its own batch loss) across ranks says."""
    method = build_method("scpnet", load_backbone(str(clip), "cpu"), [NAMES], {"topk": 2})
    try:
        train(method, [_synthetic(4, NAMES, 0)], TrainConfig(epochs=1))
    except CptError as exc:
        return str(exc)
    return "trained"


def _train_every_method(clip: Path) -> tuple[list[tuple[dict, list[dict]]], str]:
    return [_train(clip, *case) for case in TRAINED], _refused(clip) if dist.world_size() > 1 else ""


def test_two_ranks_train_as_one_process(tiny_clip, tmp_path):
    """Same global batch and seed: the learned tensors and the losses of one process, within float
    rounding, and bit-identical on both ranks; a method whose loss is not a sum over images is refused."""
    ranks = spawn(_train_every_method, 2, tmp_path, tiny_clip)
    for case, (state, history), *trained in zip(TRAINED, _train_every_method(tiny_clip)[0], *(r[0] for r in ranks)):
        for key, value in state.items():
            atol = 1e-5 * float(value.abs().max())
            torch.testing.assert_close(trained[0][0][key], value, rtol=0, atol=atol, msg=f"{case} {key}")
            assert torch.equal(trained[0][0][key], trained[1][0][key]), (case, key)
        pd.testing.assert_frame_equal(pd.DataFrame(trained[0][1]), pd.DataFrame(history), rtol=1e-5)
        assert trained[0][1] == trained[1][1], case
    assert all(r[1].startswith("--method scpnet trains in one process") for r in ranks), [r[1] for r in ranks]
