"""`cpt export` of a retrieval run: its tuned text and video encoders as TorchScript or ONNX.

Two graphs in one folder, with the metadata a deployment needs (`cpt.json`: the frame
sampling, the preprocessing, CLIP's tokenizer settings, provenance):

- `text.<ts|onnx>`: token ids (n, context_length) int64 from CLIP's tokenizer -> normalised
  caption embeddings (n, dim);
- `video.<ts|onnx>`: frames (b, frames, 3, res, res) float32, sampled and normalised as the
  metadata says -> normalised video embeddings (b, dim).

A caption's similarity to a video is the dot product of the two.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from cpt import __version__
from cpt import run as R
from cpt.errors import CptError
from cpt.io import atomic_path, write_text
from cpt.methods.retrieval.base import RetrievalMethod

VIDEO_FORMAT = "cpt-retrieval/1"
GRAPH_FORMATS = ("torchscript", "onnx")


class TextEncoder(nn.Module):
    def __init__(self, method: RetrievalMethod) -> None:
        super().__init__()
        self.method = method

    def forward(self, tokens: Tensor) -> Tensor:
        return self.method.encode_text(tokens)


class VideoEncoder(nn.Module):
    """Frames to a video embedding: through the frozen image encoder first when the method reads
    per-frame features."""

    def __init__(self, method: RetrievalMethod) -> None:
        super().__init__()
        self.method = method

    def forward(self, frames: Tensor) -> Tensor:
        if self.method.video_input == "pixels":
            return self.method.encode_video(frames)
        b, t = frames.shape[:2]
        model = self.method.backbone.model
        feats = model.encode_image(frames.flatten(0, 1).to(model.dtype)).float()  # (b * t, dim)
        return self.method.encode_video(feats.view(b, t, -1))


def metadata(method: RetrievalMethod, config: dict) -> dict:
    options = config["resolved"]["kind"]
    pre = method.backbone.preprocess
    return {
        "format": VIDEO_FORMAT,
        "cpt_version": __version__,
        "method": config["request"]["method"],
        "backbone": {k: config["backbone"][k] for k in ("spec", "sha256")},
        "inputs": {
            "text": "int64 (n, context_length): CLIP's BPE token ids (clip.tokenize, truncate=True)",
            "video": "float32 (b, frames, 3, resolution, resolution): frames decoded at most `fps` a second, "
                     "resized (shorter side) and centre-cropped with `interpolation`, `frames` of them taken at the "
                     "centres of equal segments, scaled to [0, 1] and normalised with mean and std",
        },
        "context_length": int(method.backbone.model.context_length),
        "sampling": {"frames": options["frames"], "fps": options["fps"], "positions": "segment centres"},
        "preprocess": pre.to_dict(),
        "outputs": "normalised embeddings; similarity = text @ video.T",
    }


def is_retrieval_run(run: Path) -> bool:
    """Whether `run` is a retrieval run directory (its encoders export, not class embeddings)."""
    return (Path(run) / R.CONFIG).exists() and R.read_config(Path(run))["kind"] == "retrieval"


def export_run(run: Path, fmt: str, out: Path | None, device: str) -> Path:
    """`cpt export RUN` of a retrieval run: into `out` (default: <run>/export-<format>/)."""
    config, _, method = R.load_run(Path(run), device)
    return export_retrieval(method, config, fmt, Path(out) if out else Path(run) / f"export-{fmt}")


def export_retrieval(method: RetrievalMethod, config: dict, fmt: str, out: Path) -> Path:
    """Write text.<ext>, video.<ext> and cpt.json into the folder `out`; returns it."""
    if fmt not in GRAPH_FORMATS:
        raise CptError(f"A retrieval run exports its encoders: --format torchscript or onnx (not {fmt}).")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CptError(f"--out {out} is a file; a retrieval export is a folder (text and video encoders).")
    out.mkdir(parents=True, exist_ok=True)
    method = method.float().eval()
    tokens, video = trace_examples(method, config["resolved"]["kind"]["frames"])
    ext = "ts" if fmt == "torchscript" else "onnx"
    for name, module, example in (("text", TextEncoder(method), tokens), ("video", VideoEncoder(method), video)):
        _write_graph(module.eval(), example, fmt, out / f"{name}.{ext}", name)
    write_text(out / "cpt.json", json.dumps(metadata(method, config), indent=2) + "\n")
    return out


def trace_examples(method: RetrievalMethod, frames: int) -> tuple[Tensor, Tensor]:
    """The inputs the encoders are traced with: two captions that fill the whole context (so no
    caption is cut later) and two videos of `frames` frames; the graphs take any batch size."""
    tokens = torch.zeros(2, int(method.backbone.model.context_length), dtype=torch.long)
    tokens[:, 0], tokens[:, -1] = 49406, 49407  # start and end: the whole context is traced
    tokens[1, 1:-1] = 320
    res = method.backbone.preprocess.resolution
    return tokens, torch.zeros(2, frames, 3, res, res)


def _write_graph(module: nn.Module, example: Tensor, fmt: str, path: Path, name: str) -> None:
    with torch.no_grad(), atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notices
        if fmt == "torchscript":
            torch.jit.save(torch.jit.trace(module, example, check_trace=False), str(tmp))
        else:
            torch.onnx.export(module, (example,), str(tmp), input_names=[name], output_names=["embedding"],
                              dynamic_axes={name: {0: "batch"}, "embedding": {0: "batch"}}, dynamo=False)
