"""`cpt bench --scpnet`: what SCPNet costs on cached features.

extraction  images/s of the feature cache on real PNG files (decode, transform, encode, write),
            for the evaluation view and for augmented (weak, strong) views;
cache       bytes on disk per image (feature rows + index records): one evaluation view plus
            the weak and strong views;
step        one SCPNet training step on cached features (prompt through the text encoder,
            graph module, weak + weak + strong logits, supervised + self-training loss,
            backward, SGD) by number of classes: median time and peak memory.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cpt.core.backbone import Backbone, Preprocess, input_resolution, resolve_device
from cpt.bench.prompt import build_model, check_bench, class_names, time_steps
from cpt.data.features import AugmentSpec, FeatureCache
from cpt.data.store import INDEX, ROWS
from cpt.kinds import KINDS
from cpt.methods import TaskData, build_method


@dataclass
class ExtractionRow:
    geometry: str
    view: str  # eval | weak | strong
    views_per_image: int
    images_per_s: float
    bytes_per_image: float  # on disk, this view kind


@dataclass
class StepRow:
    geometry: str
    classes: int
    step_ms: float
    steps_per_s: float
    peak_mb: float


def _backbone(geometry: str, device: torch.device) -> Backbone:
    model = build_model(geometry, device, "fp32")
    return Backbone(model, geometry, f"bench-{geometry}", device, "fp32", Preprocess(input_resolution(model)))


def _folder_bytes(folder: Path) -> int:
    """The feature store's rows and index records (its meta.json is a constant per cache key)."""
    return sum(f.stat().st_size for f in folder.rglob("*") if f.suffix in (ROWS, INDEX))


def bench_extraction(geometry: str, device: str = "auto", n_images: int = 64, views: int = 8) -> list[ExtractionRow]:
    """Feature-cache throughput and size on `n_images` random PNGs (fresh cache, nothing reused)."""
    backbone = _backbone(geometry, resolve_device(device))
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(n_images):
            path = Path(tmp) / "images" / f"{i}.png"
            path.parent.mkdir(exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(path)
            paths.append(path)
        for view, aug in (("eval", None), ("weak", AugmentSpec(views=views)), ("strong", AugmentSpec(views=views, strong="randaugment"))):
            root = Path(tmp) / f"cache-{view}"
            cache = FeatureCache(backbone, root)
            t0 = time.perf_counter()
            cache.features(paths, aug, f"bench: {view} views")
            seconds = time.perf_counter() - t0
            rows.append(ExtractionRow(geometry, view, 1 if aug is None else views, n_images / seconds,
                                      _folder_bytes(root) / n_images))
    return rows


def bench_step(geometry: str, n_classes: int, device: str = "auto", batch: int = 32, views: int = 8,
               repeats: int = 5) -> StepRow:
    """Median time and peak memory of SCPNet's training step on cached features."""
    dev = resolve_device(device)
    backbone = _backbone(geometry, dev)
    names = class_names(n_classes)
    method = build_method("scpnet", backbone, [names], {"seed": 0})
    dim = backbone.geometry["embed_dim"]
    gen = torch.Generator().manual_seed(0)
    n = 4 * batch
    targets = torch.randint(-1, 2, (n, n_classes), generator=gen)
    data = TaskData("bench", names, KINDS["multi-label"], targets, train_views=torch.randn(n, views, dim, generator=gen),
                    train_plain=torch.empty(0, dim), val=torch.empty(0, dim), val_targets=torch.empty(0),
                    train_strong=torch.randn(n, views, dim, generator=gen))
    optimizer = torch.optim.SGD(method.param_groups(0.002), lr=0.002, momentum=0.9)

    def step() -> torch.Tensor:
        rows = torch.stack([torch.randperm(n, generator=gen)[:batch], torch.randint(0, views, (batch,), generator=gen)], 1)
        return method.batch_loss(data, 0, rows, None, 1, gen) / batch

    t, peak = time_steps(step, optimizer, dev, repeats)
    return StepRow(geometry, n_classes, 1000 * t, 1 / t, peak)


def run_scpnet_bench(geometries: list[str], classes: list[int], device: str = "auto",
                     repeats: int = 5) -> tuple[list[ExtractionRow], list[StepRow]]:
    """Extraction figures per geometry, step figures per geometry and class count."""
    check_bench(geometries, classes, repeats)
    resolve_device(device)
    extraction = [row for g in geometries for row in bench_extraction(g, device)]
    steps = [bench_step(g, n, device, repeats=repeats) for g in geometries for n in classes]
    return extraction, steps
