"""`cpt export`: write an `Artifact` as .pt, TorchScript, ONNX, or raw embeddings (.npz / CSV).

TorchScript and ONNX hold the image encoder too: image tensor (batch, 3, H, W), already
preprocessed as the metadata says, in; logits out (one output per task, or the named one).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cpt.deploy.artifact import FORMAT, Artifact
from cpt.core.backbone import Backbone
from cpt.errors import CptError
from cpt.io import atomic_path, save_torch, write_csv

FORMATS = ("pt", "torchscript", "onnx", "npz", "csv")


class ImageClassifier(nn.Module):
    """Frozen image encoder + per-task heads on normalised features: linear, plus the key-value
    cache of the classifiers that have one (Tip-Adapter)."""

    def __init__(self, backbone: Backbone, artifact: Artifact, tasks: list[int]) -> None:
        super().__init__()
        encoder = artifact.image_encoder  # the run's own (MaPLe's prompts in it), else the backbone's
        self.visual = (encoder if encoder is not None else backbone.model.visual).float()
        self.cached: list[bool] = []
        for k, t in enumerate(tasks):
            c = artifact.classifiers[t]
            bias = c.bias if c.bias is not None else torch.zeros(len(c.weight))
            self.register_buffer(f"weight{k}", (c.scale * c.weight.float()).contiguous())
            self.register_buffer(f"bias{k}", bias.float())
            self.cached.append(c.cache is not None)
            if c.cache is not None:
                self.register_buffer(f"keys{k}", c.cache.keys.float())
                self.register_buffer(f"values{k}", c.cache.alpha * c.cache.values.float())
                self.register_buffer(f"beta{k}", torch.tensor(c.cache.beta))

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        x = F.normalize(self.visual(images.float()), dim=-1)  # (batch, dim)
        return tuple(self._head(x, k) for k in range(len(self.cached)))

    def _head(self, x: Tensor, k: int) -> Tensor:
        out = x @ getattr(self, f"weight{k}").T + getattr(self, f"bias{k}")
        if self.cached[k]:
            affinity = x @ getattr(self, f"keys{k}").T
            out = out + torch.exp(getattr(self, f"beta{k}") * (affinity - 1)) @ getattr(self, f"values{k}")
        return out


def metadata(artifact: Artifact, tasks: list[int]) -> dict:
    """What a deployed model needs besides its weights: preprocessing, names, provenance."""
    return {
        "format": FORMAT,
        "inputs": {"image": "float32 (batch, 3, H, W): RGB resized (shorter side) and centre-cropped to "
                            "resolution with `interpolation`, scaled to [0, 1], normalised with mean and std"},
        "preprocess": artifact.preprocess,
        "outputs": [artifact.tasks[t] for t in tasks],
        "classnames": {artifact.tasks[t]: artifact.classnames[t] for t in tasks},
        "kind": artifact.kind,
        "method": artifact.method,
        "backbone": {k: artifact.backbone[k] for k in ("spec", "sha256")},
    }


def export(artifact: Artifact, backbone: Backbone, fmt: str, out: Path, task: str | None = None) -> Path:
    """Write `artifact` in format `fmt` to `out` (atomically); returns the path written."""
    if fmt not in FORMATS:
        raise CptError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}.")
    tasks = artifact.task_index(task)
    if artifact.image_tuned and fmt in ("pt", "npz", "csv"):
        raise CptError(f"This run trained its image encoder (or prompts inside it), which --format {fmt} does not "
                       "carry (it holds the class embeddings only). Export --format torchscript or onnx, which include "
                       "the tuned encoder, or predict with the run directory itself.")
    cached = [artifact.tasks[t] for t in tasks if artifact.classifiers[t].cache is not None]
    if cached and fmt in ("npz", "csv"):
        raise CptError(f"This {artifact.method} classifier adds a key-value cache of few-shot image features to its "
                       f"class embeddings (task {cached[0]!r}), which --format {fmt} does not carry. Export --format "
                       "pt, torchscript or onnx, which hold the cache.")
    out = Path(out)
    if fmt == "pt":
        save_torch(out, artifact.to_dict())
    elif fmt == "npz":
        arrays = {f"{artifact.tasks[t]}/weight": artifact.classifiers[t].weight.numpy() for t in tasks}
        arrays["metadata"] = np.array(json.dumps(metadata(artifact, tasks)))
        with atomic_path(out) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    elif fmt == "csv":
        frames = [
            pd.DataFrame(artifact.classifiers[t].weight.numpy()).add_prefix("e").assign(
                task=artifact.tasks[t], **{"class": artifact.classnames[t]})
            for t in tasks
        ]
        frame = pd.concat(frames, ignore_index=True)
        write_csv(out, frame[["task", "class", *[c for c in frame.columns if c.startswith("e")]]])
    else:
        _export_graph(artifact, backbone, fmt, out, tasks)
    return out


def _export_graph(artifact: Artifact, backbone: Backbone, fmt: str, out: Path, tasks: list[int]) -> None:
    model = ImageClassifier(backbone, artifact, tasks).eval()
    res = artifact.preprocess["resolution"]
    example = torch.zeros(2, 3, res, res)
    meta = json.dumps(metadata(artifact, tasks))
    with torch.no_grad(), atomic_path(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and legacy-exporter deprecation notices
        if fmt == "torchscript":
            traced = torch.jit.trace(model, example)
            torch.jit.save(traced, str(tmp), _extra_files={"cpt.json": meta})
        else:
            try:
                import onnx
            except ImportError as exc:
                raise CptError("ONNX export needs the onnx package: pip install 'cpt[onnx]'.") from exc
            names = [f"logits_{artifact.tasks[t]}" for t in tasks]
            torch.onnx.export(
                model, (example,), str(tmp), input_names=["image"], output_names=names,
                dynamic_axes={"image": {0: "batch"}, **{n: {0: "batch"} for n in names}}, dynamo=False,
            )
            proto = onnx.load(str(tmp))
            onnx.helper.set_model_props(proto, {"cpt": meta})
            onnx.save(proto, str(tmp))
