"""Several processes (gloo, 2 CPU ranks): class-sharded text encoding, the split training step, and
the real CLI under torchrun — every result compared with one process's."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import clip
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from cpt import dist
from cpt.core.backbone import load_backbone
from cpt.core.prompt import ClassPrompts, PromptConfig, init_context
from cpt.data.features import AugmentSpec, FeatureCache
from cpt.errors import CptError
from cpt.kinds import KINDS
from cpt.methods import build_method
from cpt.methods.base import TaskData
from cpt.train import TrainConfig, train
from tests.conftest import TINY_VIT, cli, fit_json, make_clip

NAMES = ["dog", "red sports car", "x", "sea lion of the north", "owl"]  # 5 classes: 2 ranks encode 3 + 2 (padded)
TIMEOUT = 240  # seconds a group of processes may take before the test fails instead of hanging


def spawn(fn: Callable[..., Any], world: int, *args: Any) -> list[Any]:
    """`fn(*args)` in `world` fresh processes joined by gloo (one thread each); each rank's return value."""
    return dist.spawn(_one_thread, world, fn, args, timeout=TIMEOUT)


def _one_thread(fn: Callable[..., Any], args: tuple) -> Any:
    torch.set_num_threads(1)
    return fn(*args)


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


def test_class_sharded_encoding_gives_the_logits_and_gradients_of_one_process():
    ranks = spawn(_every_case, 2)  # one group of processes for every case: each start costs seconds
    for case, alone, *sharded in zip(CASES, _every_case(), *ranks):
        for logits, grad in sharded:  # within 1e-5 of the largest value: float rounding of sums in another order
            torch.testing.assert_close(logits, alone[0], rtol=0, atol=1e-5 * float(alone[0].abs().max()), msg=str(case))
            torch.testing.assert_close(grad, alone[1], rtol=0, atol=1e-5 * float(alone[1].abs().max()), msg=str(case))
        assert torch.equal(sharded[0][1], sharded[1][1]), case  # every rank takes the same step


# --- sharded feature extraction -------------------------------------------------------------------------------

def _extract(clip: Path, paths: list[Path], root: Path) -> tuple[list[torch.Tensor], int, int, dict, int]:
    """Eval and augmented features of `paths` into an empty cache at `root`: (features, encoded, cached,
    failed, images this rank encoded itself)."""
    cache = FeatureCache(load_backbone(str(clip), "cpu"), root, batch_size=5)
    out = [dist.share_features(cache, paths, aug, "test") for aug in (None, AugmentSpec(views=2))]
    mine = FeatureCache(cache.backbone, root)  # a second pass finds everything in the store
    mine.features(paths)
    return out, cache.stats.encoded, cache.stats.cached, cache.stats.failed, mine.stats.encoded


def test_sharded_extraction_yields_the_features_of_one_process(tiny_clip, colours, tmp_path):
    paths = sorted((colours / "train").rglob("*.png"))[:13]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    paths.insert(5, broken)
    alone = _extract(tiny_clip, paths, tmp_path / "one")
    ranks = spawn(_extract, 2, tiny_clip, paths, tmp_path / "two")
    for rank, (features, encoded, cached, failed, again) in enumerate(ranks):
        for mine, one in zip(features, alone[0]):  # the same rows (NaN for the broken file) on every rank
            torch.testing.assert_close(mine, one, rtol=0, atol=1e-5 * float(one.nan_to_num().abs().max()), equal_nan=True)
        assert failed.keys() == {str(broken)} and again == 0
        # counted as one process counts it, on rank 0: every image encoded once, by one of the ranks
        assert (encoded, cached) == ((alone[1], alone[2]) if rank == 0 else (0, 0))
    assert alone[1] == 2 * 13


# --- the training loop ----------------------------------------------------------------------------------------

def _synthetic(n: int, classes: list[str], seed: int) -> TaskData:
    gen = torch.Generator().manual_seed(seed)
    dim = TINY_VIT["embed_dim"]
    return TaskData(f"t{seed}", classes, KINDS["single-label"], torch.arange(n) % len(classes),
                    torch.randn(n, 2, dim, generator=gen), torch.empty(n, dim), torch.randn(4, dim, generator=gen),
                    torch.arange(4) % len(classes))


def _partial(n: int, classes: list[str], seed: int) -> TaskData:
    """Multi-label: targets in {1, 0, -1} (about a third unknown), two weak and two strong views."""
    gen = torch.Generator().manual_seed(seed)
    dim = TINY_VIT["embed_dim"]
    shape = (n, len(classes))
    targets = (torch.rand(shape, generator=gen) < 0.4).long()
    targets[torch.rand(shape, generator=gen) < 0.3] = -1
    return TaskData(f"m{seed}", classes, KINDS["multi-label"], targets, torch.randn(n, 2, dim, generator=gen),
                    torch.empty(n, dim), torch.randn(4, dim, generator=gen), torch.ones(4, len(classes)),
                    torch.randn(n, 2, dim, generator=gen))


def _pairs(n: int, classes: list[str], seed: int) -> TaskData:
    """Retrieval: n caption-video pairs over n // 2 + 1 videos (some videos with two captions), each
    pair's clip as 3 frame features in 2 cached samplings."""
    gen = torch.Generator().manual_seed(seed)
    dim = TINY_VIT["embed_dim"]
    videos = torch.arange(n) % (n // 2 + 1)
    words = ["red", "blue", "circle", "square", "left", "right", "moves", "appears"]
    captions = [" ".join(words[(i * 3 + k) % len(words)] for k in range(1 + i % 4)) for i in range(n)]
    return TaskData(f"v{seed}", [], KINDS["retrieval"], videos, torch.randn(n, 2, 3, dim, generator=gen),
                    torch.empty(0, dim), torch.empty(0, dim), torch.empty(0), tokens=clip.tokenize(captions, context_length=77))


def _train(clip: Path, method: str, options: dict, train_options: dict) -> tuple[dict, list[dict]]:
    backbone = load_backbone(str(clip), "cpu")
    tasks = [NAMES, ["cat", "blue bus", "heron"]]
    m = build_method(method, backbone, tasks, options, ["animal", "vehicle"])
    make = {"scpnet": _partial, "coop-video": _pairs}.get(method, _synthetic)
    data = [make(11, tasks[0], 0), make(7, tasks[1], 1)]
    cfg = TrainConfig(epochs=2, batch_size=5, lr=0.05, warmup_epochs=0, seed=3, **train_options)
    validate = (lambda: float(m.classifiers()[0].logits(data[0].val).max())) if cfg.select == "val" else None
    history = train(m, data, cfg, validate=validate)
    return m.state(), [{k: v for k, v in row.items() if k != "time_s"} for row in history]


TRAINED = [("coop", {"n_ctx": 2}, {}),
           ("coop", {"n_ctx": 2, "class_specific": True, "class_token_position": "middle"}, {"ema_decay": 0.5}),
           ("coop-shared", {"n_ctx": 2}, {"class_sample_rate": 0.5, "optimizer": "adam", "schedule": "onecycle"}),
           ("softcpt", {"variant": "cata", "n_ctx": 2}, {"task_sampling": "balanced", "select": "val"}),
           # its own batch loss: random views drawn per image, pseudo-labels kept across batches
           ("scpnet", {"topk": 2, "p_cutoff": 0.5, "logit_scale": 30.0}, {}),
           ("scpnet", {"topk": 2, "p_cutoff": 0.5, "single_positive": True}, {"ema_decay": 0.5, "select": "val"}),
           # retrieval: every pair of the batch is a negative of every other, whichever rank encodes it
           ("coop-video", {"n_ctx": 2}, {})]


def _disagreement() -> str:
    """What each rank raises when a check fails on rank 1 only (a path only one machine lacks)."""
    try:
        with dist.agreed():
            if dist.rank() == 1:
                raise CptError("/data/pets does not exist")
    except CptError as exc:
        return str(exc)
    return "went on"


def _train_every_method(clip: Path) -> tuple[list[tuple[dict, list[dict]]], str]:
    if dist.world_size() == 1:
        return [_train(clip, *case) for case in TRAINED], ""
    return [_train(clip, *case) for case in TRAINED], _disagreement()


def test_two_ranks_train_as_one_process(tiny_clip):
    """Same global batch and seed: the learned tensors and the losses of one process, within float
    rounding, and bit-identical on both ranks (SCPNet's pseudo-labels too)."""
    ranks = spawn(_train_every_method, 2, tiny_clip)
    for case, (state, history), *trained in zip(TRAINED, _train_every_method(tiny_clip)[0], *(r[0] for r in ranks)):
        for key, value in state.items():
            atol = 1e-5 * float(value.abs().max())
            torch.testing.assert_close(trained[0][0][key], value, rtol=0, atol=atol, msg=f"{case} {key}")
            assert torch.equal(trained[0][0][key], trained[1][0][key]), (case, key)
        pd.testing.assert_frame_equal(pd.DataFrame(trained[0][1]), pd.DataFrame(history), rtol=1e-5)
        assert trained[0][1] == trained[1][1], case
    # a check failing on one rank stops both: rank 0 says which rank and why, rank 1 has its own error
    assert [r[1] for r in ranks] == ["rank 1 of 2: /data/pets does not exist", "/data/pets does not exist"]


# --- the CLI under torchrun (real processes) ----------------------------------------------------------------

FIT = ["--method", "coop", "--shots", "4", "--epochs", "3", "--n-ctx", "4", "--batch-size", "4"]


def torchrun(*args: Any, cwd: Path, logs: Path | None = None, timeout: int = TIMEOUT) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --nproc-per-node 2 -m cpt ARGS` (each rank's output in `logs`, if given)."""
    redirect = ["--redirects", "3", "--log-dir", str(logs)] if logs else []
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", *redirect, "-m",
                           "cpt", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def rank_output(logs: Path, rank: int) -> tuple[str, str]:
    """(stdout, stderr) rank `rank` printed under `torchrun --redirects 3 --log-dir logs`."""
    folder = next(logs.glob(f"*/attempt_0/{rank}"))
    return (folder / "stdout.log").read_text(), (folder / "stderr.log").read_text()


@pytest.fixture(scope="module")
def one_process(tiny_clip, colours, tmp_path_factory) -> tuple[Path, dict]:
    """The reference: the fit in one process (its own empty feature cache)."""
    root = tmp_path_factory.mktemp("one")
    with pytest.MonkeyPatch.context() as mp_env:
        mp_env.chdir(root)
        summary = fit_json(*FIT, "--tasks", f"colours={colours}", "--backbone", tiny_clip, "--out", root / "run",
                           "--cache-dir", root / "cache")
    return root / "run", summary


def same_run(run: Path, reference: Path) -> None:
    """The metrics, predictions and files of one process; losses and context within float rounding."""
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in reference.iterdir())
    for name in ("metrics.csv", "per_class.csv", "predictions.csv", "splits.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(run / name), pd.read_csv(reference / name), rtol=1e-5)
    pd.testing.assert_frame_equal(pd.read_csv(run / "history.csv").drop(columns="time_s"),
                                  pd.read_csv(reference / "history.csv").drop(columns="time_s"), rtol=1e-5)
    ctx, ref = (torch.load(r / "checkpoint.pt", weights_only=False)["state"]["ctx.0"] for r in (run, reference))
    torch.testing.assert_close(ctx, ref, rtol=0, atol=1e-5 * float(ref.abs().max()))


@pytest.mark.slow
def test_torchrun_fit_is_the_one_process_fit_written_by_rank_0_alone(one_process, tiny_clip, colours, tmp_path):
    reference, summary = one_process
    logs = tmp_path / "logs"
    done = torchrun("fit", *FIT, "--tasks", f"colours={colours}", "--backbone", tiny_clip, "--out", "run",
                    "--cache-dir", "cache", "--json", cwd=tmp_path, logs=logs)
    assert done.returncode == 0, done.stderr
    same_run(tmp_path / "run", reference)
    out, err = rank_output(logs, 0)
    result = json.loads(out)
    assert result["metrics"] == summary["metrics"]
    # the feature cache was filled by both ranks, and counted as one process counts it
    assert (result["images_encoded"], result["images_from_cache"]) == (summary["images_encoded"],
                                                                        summary["images_from_cache"])
    assert "starting run" in err  # rank 0 logs (not --quiet) ...
    assert rank_output(logs, 1) == ("", "")  # ... rank 1 prints nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "logs", "run"]  # and writes nowhere else
    assert json.loads((tmp_path / "run" / "config.json").read_text())["world_size"] == 2


@pytest.mark.slow
def test_devices_relaunches_through_torchrun_and_errors_end_once(one_process, tiny_clip, colours, tmp_path):
    reference, summary = one_process
    args = [sys.executable, "-m", "cpt", "fit", *FIT, "--tasks", f"colours={colours}", "--backbone", str(tiny_clip),
            "--out", "run", "--devices", "2", "--json", "--quiet"]
    done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["metrics"] == summary["metrics"]  # printed once, by rank 0
    same_run(tmp_path / "run", reference)
    # the run exists now: every rank refuses, rank 0 says so once, the exit code is the CLI's
    again = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT)
    assert again.returncode == 2 and again.stdout == ""
    assert again.stderr.count("error:") == 1 and "already exists" in again.stderr, again.stderr
    assert "Traceback" not in again.stderr and "ChildFailedError" not in again.stderr


@pytest.mark.slow
def test_eval_and_predict_under_torchrun_give_one_process_outputs(one_process, colours, tmp_path):
    """Each rank encodes a share of the images (fresh caches, so they really are encoded); rank 0 writes."""
    run, _ = one_process
    code, _, err = cli("eval", run, "--data", colours / "test", "--out", tmp_path / "one", "--cache-dir",
                       tmp_path / "cache-one", "--quiet")
    assert code == 0, err
    logs = tmp_path / "logs"
    done = torchrun("eval", run, "--data", colours / "test", "--out", "two", "--cache-dir", "cache-two",
                    cwd=tmp_path, logs=logs)
    assert done.returncode == 0, done.stderr
    for name in ("metrics.csv", "per_class.csv", "predictions.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "two" / name), pd.read_csv(tmp_path / "one" / name),
                                      rtol=1e-5)
    assert rank_output(logs, 1) == ("", "")

    code, _, err = cli("predict", run, colours / "test", "--top-k", "2", "--out", tmp_path / "one.csv")
    assert code == 0, err
    done = torchrun("predict", run, colours / "test", "--top-k", "2", "--out", "two.csv", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "two.csv"), pd.read_csv(tmp_path / "one.csv"), rtol=1e-5)
    done = torchrun("predict", run, tmp_path / "nowhere", cwd=tmp_path)  # a bad input: rank 0's message, exit 2
    assert done.returncode != 0 and done.stderr.count("error:") == 1 and "does not exist" in done.stderr


@pytest.mark.slow
def test_ctrl_c_stops_every_rank_and_keeps_the_checkpoint(tiny_clip, colours, tmp_path):
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "cpt", "fit", *FIT[:4],
            "--epochs", "500", "--batch-size", "2", "--tasks", f"colours={colours}", "--backbone", str(tiny_clip),
            "--out", "run"]
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (tmp_path / "run" / "checkpoint.pt").exists() and proc.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint yet"
            time.sleep(0.2)
        time.sleep(1)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends torchrun, which passes it on to every rank
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert err.count("interrupted: nothing already written was lost") == 1, err  # rank 0's message only
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["status"] == "interrupted"
    finished = len(pd.read_csv(tmp_path / "run" / "history.csv"))
    assert 1 <= finished < 500
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert checkpoint["train_state"]["epoch"] == finished and not checkpoint["done"]


@pytest.mark.slow
def test_bench_ranks_shards_the_class_prompts_on_identical_logits():
    code, out, err = cli("bench", "--ranks", "1,2", "--classes", "7,40", "--repeats", "1", "--device", "cpu", "--json",
                         "--quiet")
    assert code == 0, err
    rows = json.loads(out)["rows"]
    assert [(r["classes"], r["ranks"]) for r in rows] == [(7, 1), (7, 2), (40, 1), (40, 2)]
    assert all(r["max_logit_diff"] < 1e-5 and r["step_ms"] > 0 for r in rows)
    # each rank keeps the activations of its 20 of the 40 class prompts (the image side, unsharded, is a
    # visible share at 40 classes: 1.5x measured; 1.97x at 1,191)
    assert rows[3]["memory_ratio"] == pytest.approx(rows[2]["peak_mb"] / rows[3]["peak_mb"]) and rows[3]["memory_ratio"] > 1.35
    code, _, err = cli("bench", "--ranks", "0,2")
    assert code == 2 and "--ranks" in err
