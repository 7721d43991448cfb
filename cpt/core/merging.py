"""Token merging in CLIP's image encoder for video: ToMe's bipartite soft matching inside each
frame (Bolya et al., ICLR 2023) and TempMe's progressive merging across neighbouring clips
(Shen et al., ICLR 2025; reference code github.com/LunarShen/TempMe).

A schedule says, for each layer of the image encoder, what is merged there (`LayerMerge`):

- `clips` > 1: that many neighbouring clips of a video become one before attention (their
  class tokens first, in frame order, then their other tokens), after which `before` of the
  joined tokens are merged (matched on the hidden states);
- after attention, `after_r` tokens, or the share `after`, are merged (matched on the keys,
  averaged over heads).

Merged tokens are size-weighted averages and keep their size (how many patches they stand
for), which proportional attention counts (`cpt.core.attention.attend`). Class tokens are
never merged; a video's embedding reads one class token per sampled frame. Counts follow the
reference: a share is taken of all tokens (class tokens included), rounded down, and never
more than half of the mergeable ones.

Schedules are named (`SCHEDULES`) or written out, one item a layer, `*N` repeating one:
`2` merges 2 tokens after attention, `10%` a tenth of them, `c2:30:10` joins 2 clips and merges
30 % before attention and 10 % after, `-` nothing. TempMe's released schedule at ViT-B/32
(12 layers) is "2*8,c2:30:10,c2:30:10,c3:30:10,10%": 12 clips become 6, 3, then 1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from cpt.core.attention import LoRA, attend
from cpt.errors import CptError
from cpt.options import option


@dataclass(frozen=True)
class LayerMerge:
    """What one layer merges (see the module docstring)."""

    clips: int = 1
    before: float = 0.0
    after_r: int = 0
    after: float = 0.0


NONE = LayerMerge()
ITEM = re.compile(r"^(?:(?P<none>-)|(?P<r>\d+)|(?P<share>\d+(?:\.\d+)?)%|c(?P<clips>\d+):(?P<before>\d+(?:\.\d+)?)"
                  r":(?P<after>\d+(?:\.\d+)?))(?:\*(?P<times>\d+))?$")


def _tempme(layers: int) -> str:
    """TempMe's released schedule fitted to `layers`: 2 tokens a frame in every early layer, the
    cross-clip stages 2, 2, 3 (30 % before attention, 10 % after) in the layers before the last,
    10 % in the last; fewer layers drop the first cross-clip stages."""
    cross = ["c2:30:10", "c2:30:10", "c3:30:10"][-min(3, max(layers - 1, 0)):] if layers > 1 else []
    early = layers - 1 - len(cross)
    return ",".join(([f"2*{early}"] if early else []) + cross + ["10%"])


SCHEDULES: dict[str, Callable[[int], str]] = {
    "none": lambda layers: "",
    "tome": lambda layers: f"2*{layers}",  # ToMe inside each frame only, r = 2 in every layer
    "tempme": _tempme,
}


def parse_schedule(spec: str, layers: int) -> tuple[LayerMerge, ...]:
    """The per-layer merges of a named schedule or a written-out one, for an encoder of `layers`
    blocks (layers past the list merge nothing)."""
    text = SCHEDULES[spec](layers) if spec in SCHEDULES else spec
    out: list[LayerMerge] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        m = ITEM.match(item)
        if not m:
            raise CptError(f"Merge schedule {spec!r}: {item!r} is not a layer's merge. Write one item a layer: "
                           f"'2' (tokens merged after attention), '10%' (their share), 'c2:30:10' (join 2 clips, "
                           f"merge 30 % before and 10 % after attention) or '-', each optionally '*N' for N layers; "
                           f"or a name: {', '.join(SCHEDULES)}.")
        if m["none"]:
            merge = NONE
        elif m["r"] is not None:
            merge = LayerMerge(after_r=int(m["r"]))
        elif m["share"] is not None:
            merge = LayerMerge(after=float(m["share"]) / 100)
        else:
            merge = LayerMerge(int(m["clips"]), float(m["before"]) / 100, after=float(m["after"]) / 100)
        if merge.clips < 1 or merge.before >= 1 or merge.after >= 1:
            raise CptError(f"Merge schedule {spec!r}: {item!r} joins no clip or merges a share of 100 % or more.")
        out += [merge] * int(m["times"] or 1)
    if len(out) > layers:
        raise CptError(f"Merge schedule {spec!r} names {len(out)} layers; this image encoder has {layers}.")
    return tuple(out) + (NONE,) * (layers - len(out))


def clips_after(schedule: tuple[LayerMerge, ...], frames: int) -> int:
    """Clips a video of `frames` frames ends as; refuses a schedule that cannot group them."""
    clips = frames
    for layer, merge in enumerate(schedule):
        if clips % merge.clips:
            raise CptError(f"The merge schedule joins {merge.clips} clips in layer {layer}, where a video has "
                           f"{clips}: --frames {frames} does not divide. Choose --frames as a multiple of the "
                           "schedule's groupings (12 for TempMe's 2, 2, 3), or another schedule.")
        clips = clips // merge.clips  # not in place: under tracing, sizes are tensors
    return clips


def merged_count(count: int, share: float, tokens: int, protected: int) -> int:
    """Tokens a merge takes: `count`, or (count 0) the `share` of all `tokens` rounded down; at most
    half of those that are not `protected`."""
    r = count if count else int(tokens * share)
    return min(r, (tokens - protected) // 2)


def token_counts(schedule: tuple[LayerMerge, ...], frames: int, tokens_per_frame: int, kept: int = 1) -> list[int]:
    """Tokens per video entering the encoder and after each layer, by the schedule's rules (the
    encoder's own forward records the same; tests compare them); `kept` tokens of each frame are
    never merged (its class token, and DGL's local prompts)."""
    clips_after(schedule, frames)
    clips, tokens, cls = frames, tokens_per_frame, kept
    counts = [clips * tokens]
    for merge in schedule:
        if merge.clips > 1:
            clips, tokens, cls = clips // merge.clips, tokens * merge.clips, cls * merge.clips
            tokens -= merged_count(0, merge.before, tokens, cls)
        tokens -= merged_count(merge.after_r, merge.after, tokens, cls)
        counts.append(clips * tokens)
    return counts


def bipartite_merge(x: Tensor, size: Tensor, metric: Tensor, r: int, protected: int) -> tuple[Tensor, Tensor]:
    """Merge `r` tokens of each sequence into others (ToMe's bipartite soft matching).

    x (n, T, d) tokens, size (n, T, 1) the patches each stands for, metric (n, T, m) what is
    matched (cosine). The first `protected` tokens (class tokens) are kept as they are. Of the
    rest, those at even positions of the sequence are sources, those at odd positions
    destinations; each source's best destination is its most similar one, and the r sources
    with the most similar best destinations are averaged into them, weighted by size. Returns
    (n, T - r, d) tokens and their sizes: the protected tokens, the unmerged sources in their
    order, then the destinations.
    """
    if r <= 0:
        return x, size
    at = torch.arange(protected, x.shape[1], device=x.device)
    src_at, dst_at = at[at % 2 == 0], at[at % 2 == 1]
    with torch.no_grad():
        unit = metric / metric.norm(dim=-1, keepdim=True)
        scores = unit[:, src_at] @ unit[:, dst_at].transpose(1, 2)  # (n, sources, destinations)
        best, best_dst = scores.max(dim=-1)
        ranked = best.argsort(dim=-1, descending=True, stable=True)
        merged, kept = ranked[:, :r], ranked[:, r:].sort(dim=-1).values
        into = best_dst.gather(1, merged)
    d = x.shape[-1]
    weighted = x * size

    def pick(t: Tensor, at: Tensor, index: Tensor) -> Tensor:
        return t[:, at].gather(1, index[..., None].expand(-1, -1, t.shape[-1]))

    dst_x = weighted[:, dst_at].scatter_add(1, into[..., None].expand(-1, -1, d), pick(weighted, src_at, merged))
    dst_size = size[:, dst_at].scatter_add(1, into[..., None], pick(size, src_at, merged))
    out_size = torch.cat([size[:, :protected], pick(size, src_at, kept), dst_size], dim=1)
    out_x = torch.cat([weighted[:, :protected], pick(weighted, src_at, kept), dst_x], dim=1)
    return out_x / out_size, out_size


def join_clips(x: Tensor, k: int, cls: int) -> Tensor:
    """Every k neighbouring sequences (n, T, d) as one (n / k, k T, d): their `cls` leading tokens
    first, in order, then the rest of each, in order."""
    n, length, d = x.shape
    x = x.view(n // k, k, length, d)
    return torch.cat([x[:, :, :cls].reshape(n // k, k * cls, d), x[:, :, cls:].reshape(n // k, -1, d)], dim=1)



def join_and_merge(x: Tensor, size: Tensor, metric: Tensor, merge: LayerMerge, kept: int) -> tuple[Tensor, Tensor, int]:
    """A layer's cross-clip step: every `merge.clips` neighbouring sequences joined (tokens, sizes
    and the match `metric`, each with `kept` leading tokens never merged), then `merge.before` of
    the joined tokens merged. Returns the tokens, their sizes and the joined sequences' kept count."""
    x, size, metric = (join_clips(z, merge.clips, kept) for z in (x, size, metric))
    kept *= merge.clips
    x, size = bipartite_merge(x, size, metric, merged_count(0, merge.before, x.shape[1], kept), kept)
    return x, size, kept


def merge_after_attention(x: Tensor, size: Tensor, keys: Tensor, merge: LayerMerge, kept: int) -> tuple[Tensor, Tensor]:
    """A layer's merge after attention, matched on the keys."""
    return bipartite_merge(x, size, keys, merged_count(merge.after_r, merge.after, x.shape[1], kept), kept)

def encode_frames(visual: nn.Module, video: Tensor, schedule: tuple[LayerMerge, ...], lora: LoRA | None = None,
                  frame_pos: Sequence[Tensor] | None = None, counts: list[int] | None = None) -> Tensor:
    """Per-frame features (b, t, dim) of `video` (b, t, 3, res, res) through CLIP's image encoder
    with the schedule's merging: each frame's class token through ln_post and proj.

    lora: updates of the q/k/v projections; frame_pos: one (clips, width) embedding per layer that
    joins clips, added to every token of a clip just before the join (TempMe's frame position
    embedding); counts, when given, receives the tokens per video entering and after each layer.
    """
    dtype = visual.conv1.weight.dtype
    b, t = video.shape[:2]
    clips_after(schedule, t)
    x = visual.conv1(video.flatten(0, 1).to(dtype)).flatten(2).transpose(1, 2)
    cls_token = visual.class_embedding.to(dtype).expand(x.shape[0], 1, -1)  # x.shape: traced exports take any batch
    x = visual.ln_pre(torch.cat([cls_token, x], dim=1) + visual.positional_embedding.to(dtype))
    size = torch.ones_like(x[..., :1])
    cls, joins = 1, 0
    if counts is not None:
        counts.append(x.shape[0] * x.shape[1] // b)
    for layer, (block, merge) in enumerate(zip(visual.transformer.resblocks, schedule)):
        if merge.clips > 1:
            metric = x.detach()  # matched without the position embedding
            if frame_pos is not None:
                pos = frame_pos[joins].to(dtype)  # (clips now, width)
                x = (x.view(b, -1, *x.shape[1:]) + pos[None, :, None]).flatten(0, 1)
            joins += 1
            x, size, cls = join_and_merge(x, size, metric, merge, cls)
        h = block.ln_1(x)
        out, keys = attend(block, h, lora.delta(layer, h) if lora is not None else None, size)
        x, size = merge_after_attention(x + out, size, keys, merge, cls)
        x = x + block.mlp(block.ln_2(x))
        if counts is not None:
            counts.append(x.shape[0] * x.shape[1] // b)
    frames = x[:, :cls].reshape(b, t, -1)
    return visual.ln_post(frames) @ visual.proj


def join_counts(schedule: tuple[LayerMerge, ...], frames: int) -> list[int]:
    """Clips a video of `frames` frames has at each layer that joins clips, in layer order."""
    counts, clips = [], frames
    for merge in schedule:
        if merge.clips > 1:
            counts.append(clips)
            clips = clips // merge.clips
    return counts


def frame_positions(schedule: tuple[LayerMerge, ...], frames: int, width: int) -> nn.ParameterList:
    """Zero-initialised frame position embeddings, one (clips, width) per layer that joins clips."""
    return nn.ParameterList([nn.Parameter(torch.zeros(n, width)) for n in join_counts(schedule, frames)])


def merge_option(default: str) -> Any:
    """The `--merge` option (one declaration; methods differ only in its default)."""
    return option(default, "Token merging in the image encoder: none, tome (2 tokens a frame in every layer), tempme "
                  "(TempMe's schedule) or one item a layer, e.g. '2*8,c2:30:10,c2:30:10,c3:30:10,10%' (see README).",
                  panel="Token merging")

