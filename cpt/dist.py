"""Several processes, one run: cpt under `torchrun` (or `cpt fit --devices N`).

torchrun starts one process per device and sets RANK, WORLD_SIZE, LOCAL_RANK; everything
here reads them, and is a no-op when WORLD_SIZE is unset or 1. The processes talk through
torch.distributed: gloo for CPU tensors, NCCL for CUDA ones.

How the work is split:
- training: each rank takes every world-th image of each global batch; the step's gradients
  are summed over ranks (one all_reduce), so every rank takes the single-process step;
- text: inside `sharded_classes()`, each rank encodes a block of the class prompts and the
  blocks are gathered with their gradients (`gather_encoded`), so the text encoder's time
  and memory per rank fall with the number of ranks;
- images: each rank encodes its share of the missing features into the shared feature
  cache (`share_features`), then reads them all.

Rank 0 alone writes (run directory, logs, reports, stdout). A failure on some ranks must
never leave the others waiting in a collective: work that can fail differently on
different ranks runs inside `agreed()`, which compares outcomes and raises on every rank.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from cpt.errors import CptError

T = TypeVar("T")
_state: dict[str, Any] = {"objects": None, "shard": False, "failed_together": False}
# what gloo says when a peer process died (its own message says why)
PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")


def launched() -> bool:
    """Whether this process is one of several started by torchrun (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank in the group it joined (`session`); 0 when it is alone."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this process writes: rank 0, or the only process."""
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def env_rank_world() -> tuple[int, int]:
    """This process's rank and the number of processes under torchrun ($RANK, $WORLD_SIZE); (0, 1)
    when they are not set."""
    rank, world = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
    if not (rank.isdigit() and world.isdigit() and int(rank) < int(world)):
        raise CptError(f"$RANK={rank!r} and $WORLD_SIZE={world!r} are not a rank and a world size (whole numbers, "
                       "0 <= RANK < WORLD_SIZE), as torchrun sets them; unset them to run the whole sweep here.")
    return int(rank), int(world)


def local_device(device: str) -> str:
    """`auto` under torchrun on a machine with several GPUs: the rank's own ($LOCAL_RANK's), so that
    the ranks of one machine do not all train on the first."""
    if device != "auto" or not os.environ.get("LOCAL_RANK", "").isdigit() or torch.cuda.device_count() < 2:
        return device
    return f"cuda:{local_rank() % torch.cuda.device_count()}"


TORCHRUN = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@contextmanager
def alone() -> Iterator[None]:
    """Run the block as a process of its own: torchrun's variables hidden, so that it neither waits
    for the other ranks nor leaves the writing to rank 0 (a sweep's ranks run different fits)."""
    saved = {name: os.environ.pop(name) for name in TORCHRUN if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


@contextmanager
def session(timeout_s: float = 1800) -> Iterator[None]:
    """Join the process group torchrun set up (nothing when not launched); leave it after.

    CPU tensors go through gloo; with CUDA, CUDA tensors through NCCL, each process on the GPU
    of its LOCAL_RANK. Small Python objects (outcomes, counts) always go through gloo.
    """
    if not launched() or dist.is_initialized():
        yield
        return
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank() % torch.cuda.device_count())
    try:
        dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError) as exc:
        raise CptError(f"cpt could not join the other processes of this torchrun job ({exc}). Check the rendezvous "
                       "options (--nnodes, --rdzv-endpoint, --master-addr/--master-port).") from exc
    _state["objects"] = dist.new_group(backend="gloo") if cuda else None
    try:
        yield
    finally:
        _state["objects"] = None
        dist.destroy_process_group()


def check_device(device: str) -> None:
    """Under torchrun each process takes the GPU of its LOCAL_RANK: refuse one named GPU for all,
    or more processes on this node than it has GPUs."""
    if world_size() == 1 or not torch.cuda.is_available() or device == "cpu":
        return
    if device.startswith("cuda:"):
        raise CptError(f"--device {device} names one GPU, and {world_size()} processes would share it: use --device "
                       "cuda (each process takes the GPU of its LOCAL_RANK).")
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size()))
    if local > torch.cuda.device_count():
        raise CptError(f"{local} processes on this node and {torch.cuda.device_count()} GPUs: start at most one "
                       "process per GPU (--nproc-per-node), or use --device cpu.")


def peer_lost(exc: BaseException) -> bool:
    """Whether `exc` is a collective failing because another process of the job stopped."""
    return isinstance(exc, RuntimeError) and any(s in str(exc) for s in PEER_LOST)


def _all_gather_object(obj: Any) -> list[Any]:
    found: list[Any] = [None] * world_size()
    dist.all_gather_object(found, obj, group=_state["objects"])
    return found


@contextmanager
def agreed() -> Iterator[None]:
    """Run the block on every rank, then compare outcomes: if it failed anywhere, it fails
    everywhere (and no rank is left waiting for the others in a later collective).

    A rank re-raises its own error; a rank whose block succeeded raises a CptError saying which
    rank failed and why (the message rank 0 prints). Ctrl-C is not caught: it reaches every
    rank, and a stopping process ends the collectives it leaves behind.
    """
    if world_size() == 1:
        yield
        return
    error: Exception | None = None
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - every failure is shared, then re-raised
        error = exc
    message = None if error is None else str(error) if isinstance(error, CptError) else f"{type(error).__name__}: {error}"
    outcomes = _all_gather_object(message)
    failed = [(r, m) for r, m in enumerate(outcomes) if m is not None]
    if failed:
        _state["failed_together"] = True  # every rank stops here: the others may wait for rank 0 (wait_for_main)
        raise error or CptError(f"rank {failed[0][0]} of {world_size()}: {failed[0][1]}")


def rank0_first(fn: Callable[[], T]) -> T:
    """`fn()` on rank 0, then on the other ranks: for work that may fill a shared cache (a
    backbone download), which the others then read. A failure anywhere fails every rank."""
    result = None
    with agreed():
        if is_main():
            result = fn()
    with agreed():
        if not is_main():
            result = fn()
    return result  # type: ignore[return-value]


def on_main(fn: Callable[..., T]) -> Callable[..., T | None]:
    """`fn` run by rank 0 alone (a write), its outcome shared: every rank returns or raises together."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T | None:
        result = None
        with agreed():
            if is_main():
                result = fn(*args, **kwargs)
        return result

    return wrapper


def my_share(n: int) -> Tensor:
    """Positions 0..n-1 this rank takes: every world-th, from its rank (all of them alone), as
    `FeatureCache.fill(part=(rank, world))` does."""
    return torch.arange(rank(), n, world_size())


def share_features(cache: Any, paths: Sequence[Any], aug: Any, label: str) -> Tensor:
    """`cache.features(paths, aug)` (a cpt.data.features.FeatureCache), the missing entries encoded by
    all ranks: each fills its share of the store (`cache.fill`, which all ranks must see: one machine,
    or a shared --cache-dir), they agree, and every rank reads them all — the features one process gets.

    The cache's counts (`stats.encoded`, `stats.cached`) end on rank 0 as one process's would
    be: every image looked up once, by the rank whose share it is.
    """
    if world_size() == 1:
        return cache.features(paths, aug, label)
    stats = cache.stats
    encoded, cached = stats.encoded, stats.cached
    with agreed():
        cache.fill(paths, aug, part=(rank(), world_size()), label=label)
    job = all_sum([stats.encoded - encoded, stats.cached - cached])
    filled = stats.encoded
    features = cache.features(paths, aug, label)
    again = stats.encoded - filled  # entries rank 0 could not read back (a cache the ranks do not share)
    stats.encoded, stats.cached = (encoded + job[0] + again, cached + job[1]) if is_main() else (encoded, cached)
    return features


def sum_gradients(loss: Tensor, params: list[Tensor]) -> Tensor:
    """After `loss.backward()` on each rank's share of a batch: every parameter's gradient
    becomes the sum over ranks (one all_reduce, with the loss); returns the summed loss.

    A parameter no rank used keeps no gradient, as in one process (the optimiser skips it); one
    used on some ranks only gets zeros from the others.
    """
    if world_size() == 1:
        return loss.detach()
    used = torch.tensor([p.grad is not None for p in params], dtype=loss.dtype, device=loss.device)
    grads = [(p.grad if p.grad is not None else torch.zeros_like(p)).flatten().to(loss.dtype) for p in params]
    flat = torch.cat([loss.detach().reshape(1), used, *grads])
    dist.all_reduce(flat)
    offset = 1 + len(params)
    for p, was_used in zip(params, flat[1:offset].tolist()):
        n = p.numel()
        if was_used:
            p.grad = flat[offset:offset + n].view_as(p).to(p.dtype).clone()
        offset += n
    return flat[0]


def rows_from_all(rows: Tensor, mine: Tensor) -> Tensor:
    """A (n, ...) tensor of which each rank filled the rows of its `mine` mask (the masks part the
    rows): every rank's rows, on every rank."""
    if world_size() == 1:
        return rows
    total = torch.where(mine.view(-1, *[1] * (rows.dim() - 1)), rows, torch.zeros_like(rows)).to(torch.int32)
    dist.all_reduce(total)
    return total.to(rows.dtype)


def all_sum(values: list[int]) -> list[int]:
    """Integers summed over ranks (counts for the summary)."""
    if world_size() == 1:
        return values
    return [sum(column) for column in zip(*_all_gather_object(values))]


@contextmanager
def sharded_classes(enabled: bool = True) -> Iterator[None]:
    """Within the block, class prompts are encoded by all ranks together (`gather_encoded`)."""
    before = _state["shard"]
    _state["shard"] = enabled and world_size() > 1
    try:
        yield
    finally:
        _state["shard"] = before


def sharding_classes() -> bool:
    return bool(_state["shard"])


class _GatherRows(torch.autograd.Function):
    """Every rank's (k, ...) block, concatenated in rank order (world * k, ...). Backward: each
    rank's loss differentiated the whole result, so a block's gradient is the sum over ranks of
    that block's part (reduce-scatter)."""

    @staticmethod
    def forward(ctx: Any, block: Tensor) -> Tensor:
        block = block.contiguous()
        out = block.new_empty((world_size() * block.shape[0], *block.shape[1:]))
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        gather(out, block)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        k = grad.shape[0] // world_size()
        if grad.is_cuda:  # NCCL reduce-scatters; gloo (CPU) sums everything and keeps its part
            mine = grad.new_empty((k, *grad.shape[1:]))
            scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
            scatter(mine, grad.contiguous())
            return mine
        total = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total)
        return total[rank() * k:(rank() + 1) * k]


def gather_encoded(encode: Callable[[Tensor], Tensor], rows: Tensor) -> Tensor:
    """`encode(rows)` (n, ...) computed by all ranks: each encodes a block of ceil(n / world)
    rows (the last block padded with copies of the last row, so every block has the same size
    and every rank takes part in the backward pass), gathered with gradients."""
    n, world = len(rows), world_size()
    per = math.ceil(n / world)
    padded = torch.cat([rows, rows[-1:].expand(per * world - n)])
    return _GatherRows.apply(encode(padded[rank() * per:(rank() + 1) * per]))[:n]


def launch(nproc: int, argv: list[str]) -> int:
    """`python -m torch.distributed.run --standalone --nproc-per-node NPROC -m cpt ARGV` in this
    process (`cpt fit --devices N`); returns the exit code of the first process that failed
    (0 when all finished). The processes print their own messages; torchrun's report is left out."""
    import logging

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    if "OMP_NUM_THREADS" not in os.environ:  # as torchrun would, without its warning: share this machine's cores
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        run(get_args_parser().parse_args(["--standalone", "--nproc-per-node", str(nproc), "-m", "cpt", *argv]))
    except ChildFailedError as exc:
        _, failure = exc.get_first_failure()
        return failure.exitcode if failure.exitcode > 0 else 2
    except SignalException:  # Ctrl-C or SIGTERM: torchrun passed it on, and rank 0 said what it kept
        return 2
    return 0


def wait_for_main() -> None:
    """On a rank other than 0 stopped by a failure every rank shares (`agreed`): wait until rank 0
    has said what failed and stopped, since torchrun stops the whole job when the first process
    ends. Otherwise nothing."""
    if world_size() == 1 or is_main() or not _state["failed_together"]:
        return
    try:
        dist.barrier(group=_state["objects"])  # rank 0 never joins it: gloo ends it when rank 0's process ends
    except RuntimeError:
        pass


def spawn(fn: Callable[..., T], world: int, *args: Any, threads: int | None = None,
          timeout: float | None = None) -> list[T]:
    """`fn(*args)` in `world` new processes of this machine joined as ranks 0..world-1, each with
    `threads` threads (default: its share of this process's); every rank's return value, in rank
    order. For `cpt bench --ranks` and tests: real jobs are started by torchrun. `fn` must be
    importable (module level)."""
    import socket
    import tempfile
    import time

    import torch.multiprocessing as mp

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    threads = threads or max(1, torch.get_num_threads() // world)
    with tempfile.TemporaryDirectory() as out:
        context = mp.start_processes(_spawned, args=(world, port, threads, out, fn, args), nprocs=world, join=False,
                                     start_method="spawn")
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while not context.join(timeout=1):
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"{world} ranks of {fn.__name__} still running after {timeout:g} s")
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
        return [torch.load(os.path.join(out, f"{r}.pt"), weights_only=False) for r in range(world)]


def _spawned(rank_: int, world: int, port: int, threads: int, out: str, fn: Callable[..., Any], args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank_), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank_), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(threads)
    with session():
        result = fn(*args)
    torch.save(result, os.path.join(out, f"{rank_}.pt"))


def quiet_other_ranks() -> int | None:
    """On ranks other than 0 (torchrun's RANK: called before the group is joined), send stdout and
    stderr (Python's and the C++ libraries') to the null device; returns a descriptor of the
    original stderr, for a bug's traceback."""
    if not launched() or int(os.environ.get("RANK", "0")) == 0:
        return None
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    os.close(null)
    return saved
