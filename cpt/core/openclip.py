"""OpenCLIP backbones: `--backbone openclip:ARCH --pretrained TAG|FILE` through the `open_clip` package.

cpt's prompt core reads a CLIP text tower as `clip.model.CLIP` has it: token and positional
embeddings, pre-norm residual blocks of torch's MultiheadAttention under a causal mask, ln_final,
and the feature at the EOT token times `text_projection`, over OpenAI's BPE vocabulary. OpenCLIP's
standard `CLIP` has that tower (its blocks batch-first and optionally layer-scaled, both of which
cpt.core.text handles); `OpenClipModel` presents it under the names cpt reads. A model whose text
side is built otherwise is refused, with the reason, rather than encoded wrongly.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cpt.core.backbone import PREFIX, Preprocess, download_error, file_sha256
from cpt.core.text import special_ids, tokenizer
from cpt.errors import CptError
from cpt.io import short_reason

POOLING = ("argmax", "eos")  # features read at the EOT token, the one place truncation keeps exact


def _open_clip() -> Any:
    """The open_clip package, or a user error saying how to install it (it is an optional extra)."""
    try:
        import open_clip
    except ImportError as exc:
        raise CptError("OpenCLIP backbones need the open_clip package: pip install 'cpt-clip[openclip]' (or "
                       "pip install open_clip_torch).") from exc
    return open_clip


class OpenClipModel(nn.Module):
    """OpenCLIP's `CLIP` with the surface cpt reads from `clip.model.CLIP`.

    Its modules keep their open_clip names, so `state_dict()` is open_clip's (less the causal
    mask, which is rebuilt); `encode_text` is open_clip's own computation.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.visual = model.visual
        self.transformer = model.transformer
        self.token_embedding = model.token_embedding
        self.positional_embedding = model.positional_embedding
        self.ln_final = model.ln_final
        self.text_projection = model.text_projection
        self.logit_scale = model.logit_scale
        self.register_buffer("attn_mask", model.attn_mask, persistent=False)
        self.context_length: int = model.context_length
        self.vocab_size: int = model.vocab_size
        self.text_pool_type: str = model.text_pool_type
        self.text_eos_id: int = model.text_eos_id

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the text blocks compute in (their matrix weights'), as clip's `CLIP.dtype`."""
        return self.transformer.get_cast_dtype()

    def encode_image(self, image: Tensor) -> Tensor:
        return self.visual(image)

    def encode_text(self, text: Tensor) -> Tensor:
        return _open_clip().model.CLIP.encode_text(self, text)


def check_text_tower(model: nn.Module, arch: str) -> None:
    """Refuse an OpenCLIP model whose text side cpt's prompt core cannot encode exactly."""
    open_clip = _open_clip()
    what = f"OpenCLIP {arch}"
    if type(model) is not open_clip.model.CLIP:  # CustomTextCLIP (HF or separate text tower), CoCa
        raise CptError(f"{what} is a {type(model).__name__}: its text tower is a separate module (a Hugging Face "
                       "or custom text model), not the CLIP text transformer whose token embeddings cpt's prompts "
                       "replace. Choose an architecture built as open_clip's standard CLIP.")
    if model.attn_mask is None:
        raise CptError(f"{what}'s text transformer has no causal mask: every token sees the padding after it, so "
                       "prompts cannot be encoded truncated or with a shared prefix as cpt does.")
    if model.text_pool_type not in POOLING:
        raise CptError(f"{what} reads its text feature at the {model.text_pool_type!r} position, not at the end-of-"
                       "text token; cpt's prompt core needs the EOT pooling of OpenAI's CLIP.")
    if model.text_pool_type == "eos" and model.text_eos_id != special_ids()[1]:
        raise CptError(f"{what} pools at token id {model.text_eos_id}, which is not the end-of-text token of "
                       "OpenAI's BPE vocabulary that cpt's prompts use.")
    if not isinstance(model.text_projection, nn.Parameter):
        raise CptError(f"{what}'s text projection is {'absent' if model.text_projection is None else 'a layer with a bias'}; "
                       "cpt needs CLIP's bias-free projection matrix.")
    plain = open_clip.transformer.ResidualAttentionBlock
    if not all(type(block) is plain for block in model.transformer.resblocks):
        raise CptError(f"{what}'s text blocks are custom attention blocks (qk-norm, cosine or scaled attention); "
                       "cpt's encoder computes CLIP's plain pre-norm blocks only.")
    if getattr(model, "logit_bias", None) is not None:
        raise CptError(f"{what} is trained with a sigmoid loss (it has a logit bias); cpt's methods score with "
                       "CLIP's softmax over cosine similarities.")


def check_tokenizer(arch: str) -> None:
    """Refuse a model whose tokenizer is not OpenAI's BPE with its cleaning: cpt builds prompts from
    those ids (cpt.core.text), and another vocabulary would give the model words it never saw."""
    open_clip = _open_clip()
    hf_name = (open_clip.get_model_config(arch) or {}).get("text_cfg", {}).get("hf_tokenizer_name")
    if hf_name:  # checked before building it: that needs the transformers package, which cpt does not
        _refuse_tokenizer(arch, f"the Hugging Face tokenizer {hf_name}")
    tok = open_clip.get_tokenizer(arch)
    same = (type(tok) is open_clip.tokenizer.SimpleTokenizer and tok.clean_fn is open_clip.tokenizer.get_clean_fn("lower")
            and tok.reduction_fn is None and tok.vocab_size == len(tokenizer().encoder)
            and (tok.sot_token_id, tok.eot_token_id) == special_ids())
    if not same:
        _refuse_tokenizer(arch, type(tok).__name__)


def _refuse_tokenizer(arch: str, what: str) -> None:
    raise CptError(f"OpenCLIP {arch} tokenizes with {what}, not with OpenAI's CLIP BPE, whose vocabulary and text "
                   "cleaning cpt's prompts are built from. Choose a model with the CLIP tokenizer (the ViT-*, RN*, "
                   "convnext_* and EVA* families).")


def check_architecture(arch: str, option: str = "--backbone") -> None:
    """Refuse an architecture open_clip does not know (naming the close ones) or whose tokenizer is not CLIP's."""
    known = _open_clip().list_models()
    if arch not in known:
        near = difflib.get_close_matches(arch, known, n=5)
        raise CptError(f"{option} {PREFIX}{arch}: open_clip has no architecture {arch!r}"
                       f"{' (close: ' + ', '.join(near) + ')' if near else ''}. `python -c \"import open_clip; "
                       "print(open_clip.list_models())\"` lists them.")
    check_tokenizer(arch)


def random_openclip(arch: str, precision: str) -> OpenClipModel:
    """OpenCLIP `arch` with random weights (what `cpt bench` times): checked as a loaded one is."""
    check_architecture(arch, "--geometry")
    model = _open_clip().create_model(arch, precision=precision)
    check_text_tower(model, arch)
    return OpenClipModel(model)


def _weights(arch: str, pretrained: str | None, cache_dir: str | None) -> Path:
    """The checkpoint file: `pretrained` itself, or the tag's download (cached by open_clip)."""
    open_clip = _open_clip()
    tags = open_clip.list_pretrained_tags_by_model(arch)
    listed = f"its tags: {', '.join(tags)}" if tags else "it has no published tags"
    if not pretrained:
        raise CptError(f"--backbone {PREFIX}{arch} needs its weights: --pretrained TAG (downloaded once; {listed}) "
                       "or --pretrained FILE (a state dict or open_clip checkpoint of that architecture).")
    path = Path(pretrained).expanduser()
    if path.is_file():
        return path
    if pretrained not in tags:
        raise CptError(f"--pretrained {pretrained} is neither an existing checkpoint file nor a pretrained tag of "
                       f"OpenCLIP {arch} ({listed}).")
    cfg = open_clip.get_pretrained_cfg(arch, pretrained)
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)  # its retry warnings, twice each offline, would bury the one message below
    try:
        return Path(open_clip.download_pretrained(cfg, cache_dir=cache_dir))
    except OSError as exc:  # URLError, connection and timeout errors, the hub's "not in the cache"
        import huggingface_hub.constants

        where = Path(cache_dir) if cache_dir else Path(huggingface_hub.constants.HF_HUB_CACHE)
        raise download_error(f"OpenCLIP {arch} weights {pretrained!r}", where, exc,
                             "pass the checkpoint file with --pretrained FILE") from exc
    finally:
        hub_log.setLevel(level)


def _preprocess(model: nn.Module, arch: str) -> Preprocess:
    """cpt's Preprocess from the one open_clip attached to the model (the tag's, else the config's)."""
    cfg = model.visual.preprocess_cfg
    size = cfg["size"]
    height, width = (size, size) if isinstance(size, int) else size
    if height != width or cfg.get("resize_mode", "shortest") != "shortest":
        raise CptError(f"OpenCLIP {arch} takes {height}x{width} images resized by {cfg.get('resize_mode')!r}; cpt's "
                       "feature cache and exports resize the shorter side and crop a square, as CLIP does.")
    return Preprocess(resolution=int(height), mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                      interpolation=str(cfg.get("interpolation", "bicubic")))


def load_openclip(arch: str, pretrained: str | None, precision: str,
                  cache_dir: str | None = None) -> tuple[OpenClipModel, str, Preprocess]:
    """An OpenCLIP model (frozen weights in `precision`, norms and embeddings kept fp32 as CLIP's own
    conversion does), its checksum and its preprocessing. The checksum hashes the architecture with
    the file, so one file read as two architectures (e.g. with and without QuickGELU) keys two caches."""
    open_clip = _open_clip()
    check_architecture(arch)
    weights = _weights(arch, pretrained, cache_dir)
    # a tag goes to open_clip as a tag: it carries the weights' preprocessing and activation (QuickGELU)
    source = str(weights) if Path(pretrained).expanduser().is_file() else pretrained
    try:
        model = open_clip.create_model(arch, pretrained=source, precision=precision, cache_dir=cache_dir)
    except Exception as exc:  # a foreign or damaged file fails in many ways (pickle, zip, shapes, missing keys)
        raise CptError(f"Could not load {weights} as weights of OpenCLIP {arch} ({short_reason(exc, 200)}). Pass a "
                       "state dict (or open_clip checkpoint) saved from that architecture.") from exc
    check_text_tower(model, arch)
    digest = hashlib.sha256(f"{PREFIX}{arch}\n{file_sha256(weights)}".encode()).hexdigest()
    return OpenClipModel(model), digest, _preprocess(model, arch)
