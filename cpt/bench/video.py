"""`cpt bench --video`: what text-video retrieval costs.

step    one training step (or, for zero-shot, one encoding pass) over a batch of videos with
        their captions, per method, on a CLIP of the given geometry with random weights:
        zero-shot encodes the frames and captions; coop-video trains a caption context on
        cached frame features; clip4clip trains every weight; dgl trains its prompts with the
        frames through the prompted image encoder; tempme trains LoRA with TempMe's token
        merging. Median time and peak memory.
decode  frames per second of the frame cache on real mp4 files: decoding (a cold cache) and
        reading decoded frames back (a warm one).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cpt.bench.prompt import GEOMETRIES, build_model, time_calls, time_steps
from cpt.core.backbone import Backbone, Preprocess, input_resolution, resolve_device
from cpt.core.text import tokenize
from cpt.data.video import FrameCache, FrameSampling, write_video
from cpt.errors import CptError
from cpt.kinds import KINDS
from cpt.methods import TaskData, build_method
from cpt.methods.retrieval.base import RetrievalMethod

VIDEO_METHODS = ("zeroshot-video", "coop-video", "clip4clip", "dgl", "tempme")


@dataclass
class VideoStepRow:
    geometry: str
    method: str
    frames: int
    batch: int
    step_ms: float
    videos_per_s: float
    peak_mb: float
    trainable: int  # parameters the method trains
    trainable_share: float  # of CLIP's parameters, percent


@dataclass
class DecodeRow:
    cache: str  # cold (decode) | warm (read back)
    videos: int
    frames_per_s: float


def backbone_of(geometry: str, device: torch.device) -> Backbone:
    model = build_model(geometry, device, "fp32")
    return Backbone(model, geometry, f"bench-{geometry}", device, "fp32", Preprocess(input_resolution(model)))


def _captions(n: int) -> list[str]:
    words = ["a red circle moves left", "a blue square appears", "the green star turns yellow", "a cross slides up"]
    return [f"{words[i % 4]} {i}" for i in range(n)]


def bench_step(geometry: str, name: str, device: str = "auto", frames: int = 12, batch: int = 8,
               repeats: int = 3, options: dict | None = None) -> VideoStepRow:
    """Median time and peak memory of one step of `name` (with its `options`) on `batch` random
    videos of `frames` frames."""
    dev = resolve_device(device)
    backbone = backbone_of(geometry, dev)
    method: RetrievalMethod = build_method(name, backbone, [[]], {"seed": 0, "frames": frames, **(options or {})})
    res, dim = backbone.preprocess.resolution, backbone.geometry["embed_dim"]
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randn(batch, frames, 3, res, res, generator=gen)
    clips = pixels if method.video_input == "pixels" else torch.randn(batch, frames, dim, generator=gen)
    data = TaskData("bench", [], KINDS["retrieval"], torch.arange(batch), clips.unsqueeze(1), torch.empty(0, dim),
                    torch.empty(0, dim), torch.empty(0), tokens=tokenize(_captions(batch), backbone.model))
    rows = torch.stack([torch.arange(batch), torch.zeros(batch, dtype=torch.long)], dim=1)
    clip_params = sum(p.numel() for p in backbone.model.parameters())
    trainable = sum(p.numel() for p in method.parameters() if p.requires_grad) if method.trains else 0
    if method.trains:
        optimizer = torch.optim.SGD(method.param_groups(1e-4), lr=1e-4)
        seconds, peak = time_steps(lambda: method.batch_loss(data, 0, rows, None, 0, gen) / batch, optimizer, dev,
                                   repeats)
    else:  # zero-shot: the encoding a search pays per batch (frames through the image encoder, captions)
        seconds, peak = _time_encoding(backbone, method, pixels, data.tokens, dev, repeats)
    return VideoStepRow(geometry, name, frames, batch, 1000 * seconds, batch / seconds, peak, trainable,
                        100 * trainable / clip_params)


def _time_encoding(backbone: Backbone, method: RetrievalMethod, pixels: torch.Tensor, tokens: torch.Tensor,
                   device: torch.device, repeats: int) -> tuple[float, float]:
    b, t = pixels.shape[:2]

    @torch.no_grad()
    def encode() -> None:
        feats = backbone.model.encode_image(pixels.flatten(0, 1).to(device)).float().view(b, t, -1)
        method.encode_video(feats)
        method.encode_text(tokens.to(device))

    return time_calls(encode, device, repeats)


def _clip(i: int, size: int = 224, length: int = 48) -> list[np.ndarray]:
    """A 6-second clip at 8 fps: a square crossing a shaded background."""
    ramp = np.linspace(40, 200, size, dtype=np.uint8)
    frames = []
    for t in range(length):
        frame = np.stack([np.tile(ramp, (size, 1)), np.tile(ramp[:, None], (1, size)), np.full((size, size), 90 + i,
                                                                                                dtype=np.uint8)], -1)
        x = (t * (size - 40)) // length
        frame[80:120, x:x + 40] = (220, 40, 40)
        frames.append(frame)
    return frames


def bench_decode(n_videos: int = 8) -> list[DecodeRow]:
    """Frames per second of the frame cache on 224 x 224 mp4 clips: decoding, then reading back."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(n_videos):
            paths.append(Path(tmp) / f"{i}.mp4")
            write_video(paths[-1], _clip(i))
        rows = []
        for label in ("cold", "warm"):
            cache = FrameCache(Path(tmp) / "frames", FrameSampling(12, None, 224))
            t0 = time.perf_counter()
            total = sum(len(cache.frames(p)) for p in paths)
            rows.append(DecodeRow(label, len(paths), total / (time.perf_counter() - t0)))
    return rows


def run_video_bench(geometries: list[str], methods: list[str], device: str = "auto", frames: int = 12,
                    batch: int = 8, repeats: int = 3) -> tuple[list[VideoStepRow], list[DecodeRow]]:
    """Step figures per geometry and method, and the frame cache's decode figures."""
    unknown = [g for g in geometries if g not in GEOMETRIES] + [m for m in methods if m not in VIDEO_METHODS]
    if unknown:
        raise CptError(f"{unknown[0]!r} is not a geometry ({', '.join(GEOMETRIES)}) or a retrieval method "
                       f"({', '.join(VIDEO_METHODS)}).")
    if repeats < 1 or batch < 2 or frames < 1:
        raise CptError("--repeats and --frames take at least 1, the batch at least 2 (contrastive pairs).")
    steps = [bench_step(g, m, device, frames, batch, repeats) for g in geometries for m in methods]
    return steps, bench_decode()
