"""`cpt bench --video`, token merging: what merging saves in the image encoder of a video.

For each schedule (none, ToMe inside frames only, TempMe), on a CLIP of the given geometry with
random weights: tokens per video entering the encoder and leaving it, FLOPs of encoding one
video counted by torch's FLOP counter (torch.utils.flop_counter: every matmul, convolution and
attention product the forward runs, 2 per multiply-add), inference time per video over a batch,
and one TempMe training step (LoRA in both encoders, that schedule's merging) with its peak
memory; each against no merging.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from cpt.bench.prompt import time_calls
from cpt.bench.video import backbone_of, bench_step
from cpt.core.backbone import resolve_device
from cpt.core.merging import encode_frames, parse_schedule, token_counts

MERGES = ("none", "tome", "tempme")


@dataclass
class MergeRow:
    geometry: str
    merge: str
    frames: int
    tokens_in: int  # per video, entering the image encoder
    tokens_out: int  # per video, after its last layer
    gflops: float  # encoding one video (image encoder)
    infer_ms: float  # per video, encoding a batch without gradients
    train_ms: float  # one TempMe training step on the batch
    peak_mb: float  # of that step
    token_ratio: float = 1.0  # tokens_out / no merging's
    flop_ratio: float = 1.0
    infer_speedup: float = 1.0  # no merging's time / this one's
    train_speedup: float = 1.0
    memory_ratio: float = 1.0  # peak / no merging's


def bench_merging(geometry: str, device: str = "auto", frames: int = 12, batch: int = 8,
                  repeats: int = 3) -> list[MergeRow]:
    """One row per schedule of MERGES, ratios against the first (no merging)."""
    dev = resolve_device(device)
    visual = backbone_of(geometry, dev).model.visual
    layers = len(visual.transformer.resblocks)
    per_frame = visual.positional_embedding.shape[0]
    videos = torch.randn(batch, frames, 3, visual.input_resolution, visual.input_resolution,
                         generator=torch.Generator().manual_seed(0)).to(dev)
    rows = []
    for merge in MERGES:
        schedule = parse_schedule(merge, layers)
        counts = token_counts(schedule, frames, per_frame)
        with torch.no_grad():
            with FlopCounterMode(display=False) as counter:
                encode_frames(visual, videos[:1], schedule)
            seconds, _ = time_calls(lambda: encode_frames(visual, videos, schedule), dev, repeats)
        step = bench_step(geometry, "tempme", device, frames, batch, repeats, {"merge": merge})
        rows.append(MergeRow(geometry, merge, frames, counts[0], counts[-1], counter.get_total_flops() / 1e9,
                             1000 * seconds / batch, step.step_ms, step.peak_mb))
    base = rows[0]
    for r in rows:
        r.token_ratio, r.flop_ratio = r.tokens_out / base.tokens_out, r.gflops / base.gflops
        r.infer_speedup, r.train_speedup = base.infer_ms / r.infer_ms, base.train_ms / r.train_ms
        r.memory_ratio = r.peak_mb / base.peak_mb if base.peak_mb else float("nan")
    return rows
