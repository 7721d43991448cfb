"""`cpt bench`: the optimised training step against a naive CoOp-style step, same model and data.

naive      every step encodes the batch's images and runs the text encoder over the full
           context (77 tokens) for every class, as the reference implementations do;
optimised  cached image features, and class prompts encoded once per shared prefix, each
           class only up to its EOT (`ClassPrompts.encode`).

Both compute the same logits (the largest difference is reported) and one SGD step on the
context. Reported per (geometry, classes): median step time, steps/s, peak memory (max
allocated on CUDA; on CPU the activations saved for backward) and naive/optimised.

With `--ranks`, the optimised step instead runs on several processes with class-sharded text
encoding (cpt.dist): per rank count, the slowest rank's step and the largest rank's memory.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from clip.model import CLIP

from cpt import dist
from cpt.core.backbone import PREFIX, cast_weights, input_resolution, load_backbone, resolve_device
from cpt.errors import CptError
from cpt.core.prompt import ClassPrompts, PromptConfig, init_context

if TYPE_CHECKING:
    from cpt.core.openclip import OpenClipModel

_TEXT = dict(context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8, transformer_layers=12)
GEOMETRIES: dict[str, dict | None] = {
    "tiny": dict(embed_dim=32, image_resolution=32, vision_layers=2, vision_width=64, vision_patch_size=8,
                 context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1, transformer_layers=2),
    "toy": None,  # the shipped toy CLIP
    "rn50": dict(embed_dim=1024, image_resolution=224, vision_layers=(3, 4, 6, 3), vision_width=64,
                 vision_patch_size=None, **_TEXT),
    "vit-b32": dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=32, **_TEXT),
    "vit-b16": dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=16, **_TEXT),
}
WORDS = ["red", "small", "spotted", "northern", "great", "common", "sea", "garden", "wild", "giant", "snow", "river"]
NOUNS = ["owl", "orchid", "terrier", "beetle", "sedan", "maple", "trout", "lily", "heron", "fern", "lynx", "moth"]


@dataclass
class BenchRow:
    geometry: str
    classes: int
    path: str  # naive | optimised
    step_ms: float
    steps_per_s: float
    peak_mb: float
    speedup: float  # naive step time / this path's (1 for naive)
    memory_ratio: float  # naive peak / this path's peak
    max_logit_diff: float


def class_names(n: int) -> list[str]:
    """n distinct two- or three-word class names."""
    return [f"{WORDS[i % 12]} {NOUNS[(i // 12) % 12]}" + (f" {i // 144}" if i >= 144 else "") for i in range(n)]


def build_model(geometry: str, device: torch.device, precision: str) -> CLIP | OpenClipModel:
    """The model of a geometry: CLIP's (random weights), the shipped toy CLIP, or openclip:ARCH (random weights)."""
    if geometry.startswith(PREFIX):
        from cpt.core.openclip import random_openclip  # open_clip is an optional extra

        return random_openclip(geometry.removeprefix(PREFIX), precision).to(device).eval().requires_grad_(False)
    if geometry not in GEOMETRIES:
        raise CptError(f"--geometry {geometry!r} is not one of {', '.join(GEOMETRIES)}.")
    if GEOMETRIES[geometry] is None:
        return load_backbone(geometry, str(device), precision).model
    torch.manual_seed(0)
    model = CLIP(**GEOMETRIES[geometry]).eval().requires_grad_(False)
    return cast_weights(model, {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]).to(device)


class PeakMemory:
    """Peak memory of a training step: CUDA's max allocated; on CPU, where the allocator hides
    the peak, the bytes of the distinct tensors autograd saves for the backward pass (the
    activations, which dominate and which both paths trade in), each as much memory as it spans."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0.0
        self._seen: dict[tuple[int, int], int] = {}

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        # a saved tensor counts the memory it spans: an expanded (stride 0) dim adds nothing
        span = (1 + sum((n - 1) * abs(st) for n, st in zip(t.shape, t.stride()))) * t.element_size() if t.numel() else 0
        self._seen[(t.data_ptr(), t.numel())] = span
        return t

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
            self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = (torch.cuda.max_memory_allocated() - self._base) / 2**20
        else:
            self._hooks.__exit__(*exc)
            self.peak = sum(self._seen.values()) / 2**20


def _naive_logits(model: CLIP, prompts: ClassPrompts, ctx: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        feats = model.encode_image(images)
    emb = torch.zeros(prompts.n_cls, model.context_length, prompts.base.shape[-1], dtype=prompts.base.dtype,
                      device=prompts.base.device)
    emb[:, : prompts.base.shape[1]] = prompts.fill(ctx)  # the full 77-token context
    x = emb.to(model.dtype) + model.positional_embedding.to(model.dtype)
    if model.transformer.resblocks[0].attn.batch_first:  # OpenCLIP: batch-first blocks, the mask passed in
        x = model.transformer(x, attn_mask=model.attn_mask)
    else:
        x = model.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
    text = model.ln_final(x).to(model.dtype)[torch.arange(prompts.n_cls), prompts.eot] @ model.text_projection
    return model.logit_scale.exp() * F.normalize(feats.float(), dim=-1) @ F.normalize(text.float(), dim=-1).T


def _fast_logits(model: CLIP, prompts: ClassPrompts, ctx: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    text = prompts.encode(model, ctx)
    return model.logit_scale.exp() * F.normalize(feats.float(), dim=-1) @ F.normalize(text.float(), dim=-1).T


def bench_one(geometry: str, n_classes: int, device: torch.device, precision: str = "fp32", batch: int = 32,
              repeats: int = 5, n_ctx: int = 16) -> list[BenchRow]:
    """Time both paths on one model and class count."""
    model = build_model(geometry, device, precision)
    prompts = ClassPrompts(model, class_names(n_classes), PromptConfig(n_ctx=n_ctx))
    res = input_resolution(model)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, res, res, generator=gen).to(device, model.dtype)
    labels = torch.randint(0, n_classes, (batch,), generator=gen).to(device)
    with torch.no_grad():
        cached = model.encode_image(images)  # what the feature cache would hold
    results = {}
    for path in ("naive", "optimised"):
        torch.manual_seed(0)
        ctx = torch.nn.Parameter(init_context(prompts, PromptConfig(n_ctx=n_ctx), torch.Generator().manual_seed(1)).float())
        opt = torch.optim.SGD([ctx], lr=0.002, momentum=0.9)
        first: list[torch.Tensor] = []

        def step(path: str = path, ctx: torch.Tensor = ctx) -> torch.Tensor:
            out = _naive_logits(model, prompts, ctx, images) if path == "naive" else _fast_logits(model, prompts, ctx, cached)
            first.append(out.detach())
            return F.cross_entropy(out, labels)

        results[path] = (*time_steps(step, opt, device, repeats), first[0])
    naive_t, naive_m, naive_logits = results["naive"]
    rows = []
    for path, (t, m, logits) in results.items():
        rows.append(BenchRow(geometry, n_classes, path, 1000 * t, 1 / t, m, naive_t / t, naive_m / max(m, 1e-6),
                             float((logits - naive_logits).abs().max())))
    return rows


def time_calls(call: Callable[[], object], device: torch.device, repeats: int) -> tuple[float, float]:
    """Median seconds and peak memory (MB) of `repeats` calls of `call`, after one warm-up."""
    times, peak = [], 0.0
    for i in range(repeats + 1):
        with PeakMemory(device) as mem:
            t0 = time.perf_counter()
            call()
            if device.type == "cuda":
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - t0
        if i:
            times.append(elapsed)
            peak = max(peak, mem.peak)
    return statistics.median(times), peak


def time_steps(step: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer, device: torch.device,
               repeats: int, after_backward: Callable[[torch.Tensor], object] | None = None) -> tuple[float, float]:
    """Median seconds and peak memory (MB) of `repeats` optimiser steps on `step()`'s loss, after one
    warm-up; `after_backward(loss)` runs before each update (the gradient all-reduce of several ranks)."""
    def one_step() -> None:
        loss = step()
        loss.backward()
        if after_backward is not None:
            after_backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return time_calls(one_step, device, repeats)


PRECISIONS = ("fp32", "fp16", "bf16")


def check_bench(geometries: list[str], classes: list[int], repeats: int, precision: str = "fp32",
                n_ctx: int = 1) -> None:
    """Refuse a bench that would crash half-way or time nothing, before any model is built."""
    unknown = [g for g in geometries if g not in GEOMETRIES and not g.startswith(PREFIX)]
    if not geometries or unknown:
        raise CptError(f"--geometry {unknown[0] if unknown else ''!r} is not one of {', '.join(GEOMETRIES)}.")
    if not classes or min(classes) < 1:
        raise CptError(f"--classes needs class counts of at least 1 (got {', '.join(map(str, classes)) or 'none'}).")
    if repeats < 1:
        raise CptError(f"--repeats {repeats} must be at least 1 (timed steps per path, median reported).")
    if precision not in PRECISIONS:
        raise CptError(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}.")
    if n_ctx < 1:
        raise CptError(f"--n-ctx {n_ctx} must be at least 1.")


def run_bench(geometries: list[str], classes: list[int], device: str = "auto", precision: str = "fp32",
              repeats: int = 5, n_ctx: int = 16) -> list[BenchRow]:
    check_bench(geometries, classes, repeats, precision, n_ctx)
    dev = resolve_device(device)
    rows = []
    for geometry in geometries:
        for n in classes:
            rows += bench_one(geometry, n, dev, precision, repeats=repeats, n_ctx=n_ctx)
    return rows


@dataclass
class RankRow:
    geometry: str
    classes: int
    ranks: int
    step_ms: float  # median step time of the slowest rank
    steps_per_s: float
    peak_mb: float  # the largest rank's peak memory
    speedup: float  # the first --ranks value's step time / this one's
    memory_ratio: float  # the first --ranks value's peak / this one's
    max_logit_diff: float  # against the first --ranks value's logits


def sharded_steps(geometry: str, counts: list[int], device: str, precision: str, repeats: int,
                  n_ctx: int) -> list[dict]:
    """On each rank (cpt.dist.spawn): the optimised CoOp step on cached features, with its share of a
    32-image batch and its block of the class prompts (cpt.dist.sharded_classes), gradients summed
    over ranks; per class count its median step, peak memory and first logits (all 32 images)."""
    dev = torch.device(device)
    model = build_model(geometry, dev, precision)
    out = []
    for n in counts:
        cfg = PromptConfig(n_ctx=n_ctx)
        prompts = ClassPrompts(model, class_names(n), cfg)
        gen = torch.Generator().manual_seed(0)
        feats = torch.randn(32, model.text_projection.shape[1], generator=gen).to(dev)  # what the cache would hold
        labels = torch.randint(0, n, (32,), generator=gen).to(dev)
        mine = dist.my_share(32).to(dev)
        ctx = torch.nn.Parameter(init_context(prompts, cfg, torch.Generator().manual_seed(1)).float())
        opt = torch.optim.SGD([ctx], lr=0.002, momentum=0.9)
        first: list[torch.Tensor] = []

        def step(prompts: ClassPrompts = prompts, ctx: torch.Tensor = ctx, labels: torch.Tensor = labels,
                 feats: torch.Tensor = feats, mine: torch.Tensor = mine, first: list = first) -> torch.Tensor:
            with dist.sharded_classes():
                logits = _fast_logits(model, prompts, ctx, feats)  # (32, n): every rank holds every class
            first.append(logits.detach().cpu())
            return F.cross_entropy(logits[mine], labels[mine], reduction="sum") / len(labels)

        seconds, peak = time_steps(step, opt, dev, repeats, lambda loss, ctx=ctx: dist.sum_gradients(loss, [ctx]))
        out.append({"classes": n, "seconds": seconds, "peak_mb": peak, "logits": first[0]})
    return out


def rank_threads(ranks: list[int]) -> int:
    """Threads of each rank in `run_rank_bench`."""
    return max(1, torch.get_num_threads() // max(ranks))


def run_rank_bench(geometries: list[str], classes: list[int], ranks: list[int], device: str = "auto",
                   precision: str = "fp32", repeats: int = 5, n_ctx: int = 16) -> list[RankRow]:
    """The class-sharded step on each number of ranks (processes of this machine; one GPU each with
    CUDA), against the first number's. Every rank of every count gets the same threads, this
    process's divided by the largest count, so the figures compare the work per rank."""
    check_bench(geometries, classes, repeats, precision, n_ctx)
    if not ranks or min(ranks) < 1:
        raise CptError(f"--ranks needs process counts of at least 1 (got {', '.join(map(str, ranks)) or 'none'}).")
    dev = resolve_device(device)
    if dev.type == "cuda" and max(ranks) > torch.cuda.device_count():
        raise CptError(f"--ranks {max(ranks)} needs one GPU per rank and this machine has {torch.cuda.device_count()}.")
    rows = []
    for geometry in geometries:
        runs = {r: dist.spawn(sharded_steps, r, geometry, classes, dev.type, precision, repeats, n_ctx,
                              threads=rank_threads(ranks)) for r in ranks}
        for i, n in enumerate(classes):
            base = runs[ranks[0]]
            base_t, base_m = max(rank[i]["seconds"] for rank in base), max(rank[i]["peak_mb"] for rank in base)
            for r in ranks:
                t = max(rank[i]["seconds"] for rank in runs[r])
                m = max(rank[i]["peak_mb"] for rank in runs[r])
                diff = float((runs[r][0][i]["logits"] - base[0][i]["logits"]).abs().max())
                rows.append(RankRow(geometry, n, r, 1000 * t, 1 / t, m, base_t / t, base_m / max(m, 1e-6), diff))
    return rows


def machine() -> str:
    """A one-line description of where the figures come from."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "CPU")
    return f"{cpu}, {torch.get_num_threads()} threads"


def as_dicts(rows: list) -> list[dict]:
    return [asdict(r) for r in rows]
