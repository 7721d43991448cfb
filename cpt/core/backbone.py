"""Backbones: turn `--backbone NAME|PATH` into a frozen CLIP model plus what identifies it.

Every OpenAI backbone, named or local, becomes `clip.model.CLIP` built from the checkpoint's state
dict (as `clip.load(jit=False)` does), read code-free unless the file is a TorchScript archive;
`--backbone openclip:ARCH --pretrained TAG|FILE` becomes OpenCLIP's model with the same surface
(cpt.core.openclip). Geometry (widths, layers, context length, RN or ViT) is read from the loaded
model, never assumed.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import urllib.error
import warnings
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import clip
import clip.model
import torch
from clip.model import CLIP
from torch import nn

from cpt.errors import CptError
from cpt.io import atomic_path, cache_root, short_reason

if TYPE_CHECKING:
    from cpt.core.openclip import OpenClipModel

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PREFIX = "openclip:"  # --backbone openclip:ARCH names an OpenCLIP architecture


@dataclass(frozen=True)
class Preprocess:
    """How images become model input; part of the feature-cache key and of exports."""

    resolution: int
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    interpolation: str = "bicubic"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Backbone:
    """A loaded, frozen CLIP model and its identity."""

    model: CLIP | OpenClipModel
    spec: str  # what the user asked for: an OpenAI name, a path, or openclip:ARCH
    checksum: str  # sha256 of the checkpoint file (OpenCLIP: with the architecture; and of the tuned image encoder, once fine-tuned)
    device: torch.device
    precision: str
    preprocess: Preprocess
    frozen_checksum: str | None = None  # the checkpoint's, kept once the image encoder is fine-tuned
    pretrained: str | None = None  # OpenCLIP's --pretrained: a tag or a checkpoint path

    def mark_image_tuned(self, encoder: nn.Module | None = None) -> None:
        """Re-key the backbone after its image encoder was trained (or loaded from a run that
        trained it), so cached features of the frozen encoder are never served for it; `encoder`:
        the method's image encoder when it is not `model.visual` (learned prompts inside it)."""
        digest = hashlib.sha256()
        for name, tensor in sorted((encoder if encoder is not None else self.model.visual).state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
        self.frozen_checksum = self.frozen_checksum or self.checksum
        self.checksum = hashlib.sha256(f"{self.frozen_checksum}+{digest.hexdigest()}".encode()).hexdigest()

    @property
    def dtype(self) -> torch.dtype:
        return PRECISIONS[self.precision]

    @property
    def geometry(self) -> dict:
        """The model's shape, read from the loaded weights."""
        m = self.model
        vision = "vit" if hasattr(m.visual, "transformer") else "resnet" if hasattr(m.visual, "layer1") else "timm"
        return {
            "embed_dim": m.text_projection.shape[1],
            "text_width": m.transformer.width,
            "text_layers": m.transformer.layers,
            "text_heads": m.transformer.resblocks[0].attn.num_heads,
            "context_length": m.context_length,
            "vocab_size": m.vocab_size,
            "vision": vision,
            "image_resolution": self.preprocess.resolution,
        }

    def describe(self) -> dict:
        """What config.json records about the backbone (`pretrained` for OpenCLIP only)."""
        return {
            "spec": self.spec,
            **({"pretrained": self.pretrained} if self.pretrained else {}),
            "sha256": self.checksum,
            "device": str(self.device),
            "precision": self.precision,
            "geometry": self.geometry,
            "preprocess": self.preprocess.to_dict(),
        }


def clip_cache_dir() -> Path:
    """Where OpenAI CLIP weights are downloaded (clip's own default)."""
    return Path(os.environ.get("CPT_CLIP_CACHE", Path.home() / ".cache" / "clip"))


def resolve_device(device: str) -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA without one is a user error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CptError(
            f"--device {device} was asked for, but PyTorch sees no CUDA GPU on this machine. "
            "Use --device cpu (or auto)."
        )
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise CptError(f"--device {device!r} is not a device PyTorch knows; use cpu, cuda or auto.") from exc


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


ASSETS = Path(__file__).parent.parent / "assets"
# checkpoints shipped with cpt (gzipped state dicts; scripts/pretrain_toy_clip.py --world plain | themed)
BUILTIN = {"toy": ASSETS / "toy-clip.pt.gz", "toy-themed": ASSETS / "toy-themed-clip.pt.gz"}


def _unpack_builtin(name: str) -> Path:
    """Gunzip a shipped checkpoint once into the cache; clip.load then opens it like any file."""
    packed = BUILTIN[name]
    target = cache_root() / "backbones" / f"{name}-{file_sha256(packed)[:16]}.pt"
    if not target.exists():
        with gzip.open(packed, "rb") as src, atomic_path(target) as tmp:
            tmp.write_bytes(src.read())
    return target


def input_resolution(model: CLIP | OpenClipModel) -> int:
    """The image side length the model's image encoder takes (clip: input_resolution; OpenCLIP: image_size)."""
    visual = model.visual
    if hasattr(visual, "input_resolution"):
        return visual.input_resolution
    size = visual.image_size
    return int(size if isinstance(size, int) else size[0])


def download_error(what: str, where: Path, exc: BaseException, instead: str) -> CptError:
    """The one-paragraph error for weights that could not be downloaded."""
    return CptError(
        f"Could not download {what}: no network ({exc}). cpt looks for its weights in {where}; copy the file "
        f"there (or point --clip-cache at it), or {instead}."
    )


def _checkpoint_path(spec: str) -> tuple[str, str | None]:
    """Return (what clip.load should open, the known sha256 if the name carries one)."""
    if spec in BUILTIN:
        return str(_unpack_builtin(spec)), None
    if spec in clip.available_models():
        url = clip.clip._MODELS[spec]
        return spec, url.split("/")[-2]  # OpenAI's URLs embed the file's sha256
    path = Path(spec).expanduser()
    if path.is_file():
        return str(path), None
    raise CptError(
        f"--backbone {spec!r} is neither a known name nor an existing checkpoint file. "
        f"Names: {', '.join([*BUILTIN, *clip.available_models()])}; or pass --backbone PATH to a CLIP "
        f"checkpoint (OpenAI JIT archive or state dict), or --backbone {PREFIX}ARCH --pretrained TAG|FILE for OpenCLIP."
    )


def cast_weights(model: CLIP, dtype: torch.dtype) -> CLIP:
    """Cast the matrix weights to `dtype` and keep norms and embeddings in fp32, as CLIP's
    own fp16 conversion does (its LayerNorm computes in fp32 and needs fp32 parameters)."""
    if dtype == torch.float32:
        return model

    def cast(module: nn.Module) -> None:
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            module.weight.data = module.weight.data.to(dtype)
            if module.bias is not None:
                module.bias.data = module.bias.data.to(dtype)
        if isinstance(module, nn.MultiheadAttention):
            for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight", "in_proj_bias", "bias_k", "bias_v"):
                tensor = getattr(module, name)
                if tensor is not None:
                    tensor.data = tensor.data.to(dtype)
        for name in ("text_projection", "proj"):
            tensor = getattr(module, name, None)
            if isinstance(tensor, torch.Tensor):
                tensor.data = tensor.data.to(dtype)

    model.apply(cast)
    return model


def is_torchscript(path: str | Path) -> bool:
    """Whether `path` is a TorchScript archive (as OpenAI's CLIP downloads are): a zip holding code."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist())


def read_clip(path: str | Path) -> CLIP:
    """clip.model.CLIP from a checkpoint file. A state dict is read code-free
    (`torch.load(weights_only=True)`), so a checkpoint from someone else cannot run code. An
    OpenAI JIT archive is TorchScript, which is code: it is the one file cpt opens with
    `torch.jit.load`, and only its weights are kept (rebuilt into clip.model.CLIP)."""
    if is_torchscript(path):
        state = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise TypeError(f"it holds a {type(state).__name__}, not a state dict")
    return clip.model.build_model(state)


def _frozen(model: CLIP | OpenClipModel, device: torch.device) -> CLIP | OpenClipModel:
    model = model.to(device).eval()
    model.requires_grad_(False)
    return model


def load_backbone(
    spec: str, device: str = "cpu", precision: str = "fp32", cache_dir: str | Path | None = None,
    pretrained: str | None = None,
) -> Backbone:
    """Load a frozen CLIP model by OpenAI name (downloaded once into `cache_dir`) or from a file;
    or the OpenCLIP architecture `openclip:ARCH` with the weights `pretrained` (a tag or a file)."""
    if precision not in PRECISIONS:
        raise CptError(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}.")
    if spec.startswith(PREFIX):
        from cpt.core.openclip import load_openclip  # open_clip is an optional extra: imported when asked for

        dev = resolve_device(device)
        model, sha, preprocess = load_openclip(spec.removeprefix(PREFIX), pretrained, precision,
                                               str(cache_dir) if cache_dir else None)
        return Backbone(_frozen(model, dev), spec, sha, dev, precision, preprocess, pretrained=pretrained)
    if pretrained:
        raise CptError(f"--pretrained {pretrained} is for OpenCLIP backbones (--backbone {PREFIX}ARCH); "
                       f"--backbone {spec} names its weights itself.")
    cache = Path(cache_dir) if cache_dir else clip_cache_dir()
    target, known_sha = _checkpoint_path(spec)
    dev = resolve_device(device)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if known_sha:  # an OpenAI name: downloaded once, its sha256 checked by clip
                target = clip.clip._download(clip.clip._MODELS[spec], str(cache))
            model = read_clip(target)
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        raise download_error(f"CLIP {spec!r}", cache / Path(clip.clip._MODELS[spec]).name, exc,
                             "pass a local checkpoint with --backbone PATH") from exc
    except Exception as exc:  # a corrupt file can fail in many ways (pickle, zip, shapes, missing keys)
        if isinstance(exc, pickle.UnpicklingError) and "weights only" in str(exc).lower():
            raise CptError(
                f"Could not load {target} as a CLIP checkpoint: it holds Python objects besides tensors, which "
                "cpt does not unpickle (that could run code). Save the model's state_dict() instead, or pass "
                "an OpenAI CLIP JIT archive."
            ) from exc
        raise CptError(
            f"Could not load {target} as a CLIP checkpoint ({short_reason(exc, 200)}). "
            "Pass an OpenAI CLIP JIT archive or a state dict of clip.model.CLIP."
        ) from exc
    sha = known_sha or file_sha256(Path(target))
    model = _frozen(cast_weights(model.float(), PRECISIONS[precision]), dev)
    return Backbone(
        model=model,
        spec=spec,
        checksum=sha,
        device=dev,
        precision=precision,
        preprocess=Preprocess(resolution=input_resolution(model)),
    )
