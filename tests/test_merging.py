"""Token merging (cpt.core.merging) and TempMe (cpt.methods.retrieval.tempme): a hand-checked
bipartite match, conservation of token mass, merging nothing as the identity, proportional
attention against duplicated tokens, LoRA against a merged weight, the whole merged image
encoder against a loop-by-loop re-implementation from the paper and the released code, the
released schedule's token count at ViT-B/32 (600 -> 97), and the parameter count."""

from __future__ import annotations

import copy
import math

import clip
import pytest
import torch
import torch.nn.functional as F
from clip.model import CLIP

from cpt.core.attention import LoRA, attend
from cpt.core.backbone import load_backbone
from cpt.core.merging import (
    bipartite_merge,
    encode_frames,
    frame_positions,
    parse_schedule,
    token_counts,
)
from cpt.errors import CptError
from cpt.methods.retrieval.tempme import TempMe, TempMeConfig, encode_text_lora

from conftest import TINY_VIT, make_clip


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- bipartite soft matching ---


def test_a_six_token_match_checked_by_hand():
    # tokens 0, 2, 4 are sources, 1, 3, 5 destinations. Metric directions (cosine):
    # 0 -> 3 (identical, 1.0), 2 -> 1 (cos 0.8), 4 -> 5 (cos 0.6): with r = 2, tokens 0 and 2 merge
    metric = torch.tensor([[0.0, 1.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0], [1.0, 0.0], [0.6, 0.8]])
    metric[4] = torch.tensor([0.8, -0.6])  # 4: cos with 1 = 0.28, with 3 = -0.6, with 5 = 0 -> best 1 (0.28)
    metric[2] = torch.tensor([1.0, 0.0])  # 2: cos with 1 = 0.8 (best), 3 = 0, 5 = 0.6
    x = torch.arange(6.0)[:, None] * torch.tensor([[1.0, 10.0]])  # token i = (i, 10 i)
    size = torch.tensor([1.0, 1.0, 2.0, 3.0, 1.0, 1.0])[:, None]
    out, out_size = bipartite_merge(x[None], size[None], metric[None], r=2, protected=0)
    # kept source 4, then destinations 1 (with 2), 3 (with 0), 5
    expected = torch.tensor([[4.0, 40.0],
                             [(1 * 1 + 2 * 2) / 3, (10 * 1 + 20 * 2) / 3],
                             [(3 * 3 + 0 * 1) / 4, (30 * 3 + 0 * 1) / 4],
                             [5.0, 50.0]])
    assert torch.allclose(out[0], expected) and out_size[0, :, 0].tolist() == [1.0, 3.0, 4.0, 1.0]
    # a protected (class) token stays first and untouched; the rest swap roles by position parity
    out, out_size = bipartite_merge(x[None], size[None], metric[None], r=1, protected=1)
    assert out.shape == (1, 5, 2) and out[0, 0].tolist() == [0.0, 0.0] and out_size.sum() == size.sum()


def test_merging_conserves_token_mass():
    x, metric = _randn(3, 40, 8, seed=0), _randn(3, 40, 5, seed=1)
    size = torch.ones(3, 40, 1)
    total = (x * size).sum(dim=1)
    for r in (7, 5, 3, 9):
        x, size = bipartite_merge(x, size, metric[:, :x.shape[1]], r, protected=2)
        assert torch.allclose(size.sum(dim=1), torch.full((3, 1), 40.0))  # sizes sum to the original count
        assert torch.allclose((x * size).sum(dim=1), total, atol=1e-4)  # and size-weighted features to the original sum
    assert x.shape[1] == 40 - 24


def test_merging_nothing_is_the_identity():
    backbone = make_clip({**TINY_VIT, "vision_layers": 4})
    video = _randn(2, 6, 3, 32, 32, seed=2)
    with torch.no_grad():
        plain = encode_frames(backbone.visual, video, parse_schedule("none", 4))
        zero = encode_frames(backbone.visual, video, parse_schedule("0%*2,0*2", 4))
        clip_own = backbone.encode_image(video.flatten(0, 1)).view(2, 6, -1)
    assert torch.equal(plain, zero)
    assert torch.allclose(plain, clip_own, atol=1e-5)
    logits = F.normalize(plain.mean(1), dim=-1) @ F.normalize(zero.mean(1), dim=-1).T
    assert torch.allclose(logits, F.normalize(clip_own.mean(1), dim=-1) @ F.normalize(zero.mean(1), dim=-1).T,
                          atol=1e-6)


# --- attention ---


def test_proportional_attention_counts_a_token_as_its_copies():
    block = make_clip(TINY_VIT).visual.transformer.resblocks[0]
    h = _randn(1, 4, 64, seed=3)
    size = torch.tensor([1.0, 3.0, 1.0, 2.0])[None, :, None]
    out, _ = attend(block, h, size=size)
    copies = h[:, [0, 1, 1, 1, 2, 3, 3]]  # each token repeated by its size
    full, _ = attend(block, copies)
    assert torch.allclose(out, full[:, [0, 1, 4, 5]], atol=1e-5)


def test_lora_is_a_low_rank_change_of_the_projection_weight():
    block = make_clip(TINY_VIT).visual.transformer.resblocks[1]
    lora = LoRA(2, 64, 4)
    with torch.no_grad():
        lora.b.copy_(_randn(2, 192, 4, seed=4) * 0.1)
    h = _randn(2, 5, 64, seed=5)
    out, _ = attend(block, h, lora.delta(1, h))
    changed = copy.deepcopy(block)
    with torch.no_grad():
        changed.attn.in_proj_weight += lora.b[1] @ lora.a[1]
    expected = changed.attn(h.transpose(0, 1), h.transpose(0, 1), h.transpose(0, 1), need_weights=False)[0]
    assert torch.allclose(out, expected.transpose(0, 1), atol=1e-5)


# --- the merged image encoder against a plain re-implementation ---


def _ref_attention(block, x: torch.Tensor, size: torch.Tensor, delta_w: torch.Tensor) -> tuple:
    """One sequence (T, d): per-head attention with the LoRA weight folded in and log-size logits."""
    attn = block.attn
    heads, d = attn.num_heads, x.shape[-1]
    w = attn.in_proj_weight + delta_w
    q, k, v = (x @ w.T + attn.in_proj_bias).split(d, dim=-1)
    hd = d // heads
    outs, keys = [], []
    for i in range(heads):
        qi, ki, vi = (t[:, i * hd:(i + 1) * hd] for t in (q, k, v))
        logits = qi @ ki.T / math.sqrt(hd) + torch.log(size)[None, :]
        outs.append(torch.softmax(logits, dim=-1) @ vi)
        keys.append(ki)
    return torch.cat(outs, dim=-1) @ attn.out_proj.weight.T + attn.out_proj.bias, sum(keys) / heads


def _ref_merge(x, size, metric, r, protected):
    """ToMe's matching written with loops: sources at even positions, destinations at odd ones."""
    if r <= 0:
        return x, size
    src = [i for i in range(protected, len(x)) if i % 2 == 0]
    dst = [i for i in range(protected, len(x)) if i % 2 == 1]
    unit = metric / metric.norm(dim=-1, keepdim=True)
    best = []
    for i in src:
        sims = [float(unit[i] @ unit[j]) for j in dst]
        j = max(range(len(dst)), key=lambda k: sims[k])
        best.append((sims[j], i, dst[j]))
    order = sorted(range(len(src)), key=lambda k: -best[k][0])
    acc = {j: [x[j] * size[j], size[j].clone()] for j in dst}
    for k in order[:r]:
        _, i, j = best[k]
        acc[j][0] = acc[j][0] + x[i] * size[i]
        acc[j][1] = acc[j][1] + size[i]
    kept = [src[k] for k in sorted(order[r:])]
    rows = [x[i] for i in range(protected)] + [x[i] for i in kept] + [acc[j][0] / acc[j][1] for j in dst]
    sizes = [size[i] for i in range(protected)] + [size[i] for i in kept] + [acc[j][1] for j in dst]
    return torch.stack(rows), torch.stack(sizes)


def _reference_video(model: CLIP, frames: torch.Tensor, schedule, lora: LoRA, pos: list[torch.Tensor]):
    """One video (t, 3, res, res) through the image encoder as TempMe's paper and code describe it,
    a python list of clips, each one token sequence."""
    visual = model.visual
    seqs = []
    for frame in frames:
        patches = visual.conv1(frame[None]).flatten(2)[0].T
        seqs.append(visual.ln_pre(torch.cat([visual.class_embedding[None], patches]) + visual.positional_embedding))
    sizes = [torch.ones(len(s)) for s in seqs]
    cls, joins = 1, 0
    for layer, (block, merge) in enumerate(zip(visual.transformer.resblocks, schedule)):
        if merge.clips > 1:
            k = merge.clips
            metrics = seqs
            seqs = [s + pos[joins][c] for c, s in enumerate(seqs)]
            joins += 1

            def join(parts):
                return [torch.cat([p[:cls] for p in parts[g:g + k]] + [p[cls:] for p in parts[g:g + k]])
                        for g in range(0, len(parts), k)]
            seqs, sizes, metrics = join(seqs), join(sizes), join(metrics)
            cls *= k
            r0 = min(int(len(seqs[0]) * merge.before), (len(seqs[0]) - cls) // 2)
            merged = [_ref_merge(s, z[:, None], m, r0, cls) for s, z, m in zip(seqs, sizes, metrics)]
            seqs, sizes = [m[0] for m in merged], [m[1][:, 0] for m in merged]
        new, new_sizes = [], []
        for s, z in zip(seqs, sizes):
            out, keys = _ref_attention(block, block.ln_1(s), z, lora.b[layer] @ lora.a[layer])
            s = s + out
            n = len(s)
            r = merge.after_r or int(n * merge.after)
            s, z = _ref_merge(s, z[:, None], keys, min(r, (n - cls) // 2), cls)
            new.append(s + block.mlp(block.ln_2(s)))
            new_sizes.append(z[:, 0])
        seqs, sizes = new, new_sizes
    cls_out = torch.cat([s[:cls] for s in seqs])
    return visual.ln_post(cls_out) @ visual.proj


def test_the_merged_encoder_matches_a_loop_by_loop_reimplementation():
    model = make_clip({**TINY_VIT, "vision_layers": 4, "vision_width": 64})
    schedule = parse_schedule("2,c2:30:10,c3:30:10,10%", 4)
    lora = LoRA(4, 64, 4)
    pos = frame_positions(schedule, 6, 64)
    with torch.no_grad():
        lora.b.copy_(_randn(4, 192, 4, seed=6) * 0.05)
        for i, p in enumerate(pos):
            p.copy_(_randn(*p.shape, seed=7 + i) * 0.5)
    video = _randn(2, 6, 3, 32, 32, seed=8)
    counts: list[int] = []
    with torch.no_grad():
        mine = encode_frames(model.visual, video, schedule, lora, pos, counts)
        ref = torch.stack([_reference_video(model, v, schedule, lora, list(pos)) for v in video])
    assert torch.allclose(mine, ref, atol=1e-4), float((mine - ref).abs().max())
    # by hand: 6 frames of 17 tokens; -2 a frame; 3 clips of 30 - 9 - 2; one clip of 57 - 17 - 4; - 3
    assert counts == token_counts(schedule, 6, 17) == [102, 90, 57, 36, 33]


def test_released_schedule_at_vit_b32_keeps_97_of_600_tokens():
    assert parse_schedule("tempme", 12) == parse_schedule("2*8,c2:30:10,c2:30:10,c3:30:10,10%", 12)
    model = CLIP(512, 224, 12, 768, 32, 77, 49408, 512, 8, 12).eval()
    counts: list[int] = []
    with torch.no_grad():
        encode_frames(model.visual, _randn(1, 12, 3, 224, 224, seed=9), parse_schedule("tempme", 12), counts=counts)
    assert counts == token_counts(parse_schedule("tempme", 12), 12, 50)
    assert counts[0] == 600 and counts[-1] == 97 and counts[8:] == [408, 264, 168, 107, 97]


@pytest.mark.parametrize("spec, message", [
    ("2,x", "'x' is not a layer's merge"),
    ("c2:100:0", "a share of 100 % or more"),
    ("1*5", "names 5 layers; this image encoder has 4"),
])
def test_bad_schedules_say_what_is_wrong(spec, message):
    with pytest.raises(CptError, match=message):
        parse_schedule(spec, 4)


def test_frames_that_the_schedule_cannot_group_are_refused():
    with pytest.raises(CptError, match="--frames 8 does not divide"):
        token_counts(parse_schedule("c3:30:10", 4), 8, 17)


# --- the method ---


@pytest.fixture(scope="module")
def backbone(tiny_clip):
    return load_backbone(str(tiny_clip), "cpu")


def test_tempme_starts_as_clip_on_text_and_counts_its_parameters(backbone):
    method = TempMe(backbone, [[]], TempMeConfig(merge="none"))
    tokens = clip.tokenize(["a red circle", "two squares, then one"], context_length=77)
    with torch.no_grad():
        assert torch.allclose(method.encode_text(tokens),
                              F.normalize(backbone.model.encode_text(tokens).float(), dim=-1), atol=1e-6)
        text = encode_text_lora(backbone.model, tokens, None)
    assert torch.allclose(text, backbone.model.encode_text(tokens), atol=1e-5)
    # LoRA rank 8 on 2 + 2 blocks of width 64 (A: 8 x 64, B: 192 x 8); no clip joins, no position embedding
    assert sum(p.numel() for p in method.parameters() if p.requires_grad) == 4 * (8 * 64 + 192 * 8)
    merged = TempMe(backbone, [[]], TempMeConfig())  # "c3:30:10,10%" on 2 layers: one join of 12 clips
    assert [tuple(p.shape) for p in merged.frame_pos] == [(12, 64)]


def test_released_tempme_trains_half_a_million_parameters():
    # ViT-B/32: LoRA on 12 + 12 blocks (widths 768, 512), frame positions at the joins of 12, 6 and 3 clips
    lora = 12 * (8 * 768 + 3 * 768 * 8) + 12 * (8 * 512 + 3 * 512 * 8)
    positions = (12 + 6 + 3) * 768
    schedule = parse_schedule("tempme", 12)
    assert sum(p.numel() for p in frame_positions(schedule, 12, 768)) == positions
    assert lora + positions == 507_648
