"""DGL (cpt.methods.retrieval.dgl) on a tiny random ViT CLIP: both encoders against a plain
re-implementation from the paper's equations (one token sequence, an explicit attention mask,
hand-written multi-head attention), CLIP's own text encoder without prompts, gradients, frame
order, the global-local ablation, the parameter count, and the ResNet refusal."""

from __future__ import annotations

import copy
import math

import clip
import pytest
import torch
import torch.nn.functional as F

from cpt.core.backbone import load_backbone
from cpt.core.merging import parse_schedule, token_counts
from cpt.errors import CptError
from cpt.deploy.export_video import TextEncoder, VideoEncoder, trace_examples
from cpt.methods import build_method
from cpt.methods.retrieval.dgl import DGL, DGLConfig

CAPTIONS = ["a red circle moves to the left", "a square", "two blue triangles appear one after the other quickly"]


@pytest.fixture(scope="module")
def backbone(tiny_clip):
    return load_backbone(str(tiny_clip), "cpu")


def method(backbone, **options) -> DGL:
    return DGL(backbone, [[]], DGLConfig(**options))


def tokens() -> torch.Tensor:
    return clip.tokenize(CAPTIONS, context_length=77)


def video(b: int = 2, t: int = 3, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, 3, 32, 32, generator=gen)


# -- an independent re-implementation ----------------------------------------------------------

def mha(block, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Multi-head self-attention of one sequence x (L, D) where allowed[i, j] lets i read j."""
    attn = block.attn
    length, dim = x.shape
    heads = attn.num_heads
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (z.reshape(length, heads, dim // heads).transpose(0, 1) for z in (q, k, v))
    scores = (q @ k.transpose(1, 2) / math.sqrt(dim // heads)).masked_fill(~allowed, float("-inf"))
    out = (scores.softmax(dim=-1) @ v).transpose(0, 1).reshape(length, dim)
    return F.linear(out, attn.out_proj.weight, attn.out_proj.bias)


def layer(block, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    x = x + mha(block, block.ln_1(x), allowed)
    return x + block.mlp(block.ln_2(x))


def paper_prompts(dgl: DGL, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear shared latent space: text prompts of layer l are [W_1 z_l + b_1; W_2 z_l + b_2; ...],
    frame t's local prompts z_l + e_t."""
    z, w = dgl.latent, dgl.text_width
    weight, bias = dgl.text_proj.weight, dgl.text_proj.bias
    groups = weight.shape[0] // w
    text = torch.cat([z @ weight[g * w:(g + 1) * w].T + bias[g * w:(g + 1) * w] for g in range(groups)], dim=1)
    local = z[:, None].expand(-1, frames, -1, -1)
    if dgl.temporal is not None:
        local = local + dgl.temporal[:frames, None]
    return text, local


def reference_text(dgl: DGL, toks: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    model = dgl.backbone.model
    k, out = text.shape[1], []
    for row in toks:  # [SOT + pos_0, prompts, token_j + pos_j ...]: the whole context, no trimming
        emb = model.token_embedding(row) + model.positional_embedding
        x = torch.cat([emb[:1], text[0], emb[1:]])
        allowed = torch.ones(len(x), len(x), dtype=torch.bool).tril()
        for i, block in enumerate(model.transformer.resblocks):
            if i > 0:
                x = torch.cat([x[:1], text[i], x[1 + k:]])
            x = layer(block, x, allowed)
        out.append(model.ln_final(x[int(row.argmax()) + k]) @ model.text_projection)
    return F.normalize(torch.stack(out), dim=-1)


def reference_video(dgl: DGL, clips: torch.Tensor, local: torch.Tensor, global_local: bool = True,
                    joined: tuple[int, int] | None = None) -> torch.Tensor:
    """`joined` (layer, k): from that layer on, the frames of each k neighbouring ones read each other
    (a clip join of TempMe's that merges nothing)."""
    visual = dgl.backbone.model.visual
    g, m = dgl.n_global, dgl.n_local
    out = []
    for frames in clips:  # one sequence per video: [global prompts; frame 1 tokens; frame 2 tokens; ...]
        t = len(frames)
        patches = visual.conv1(frames).flatten(2).transpose(1, 2)  # (t, P, width)
        cls = visual.class_embedding.expand(t, 1, -1)
        emb = visual.ln_pre(torch.cat([cls, patches], dim=1) + visual.positional_embedding)
        n = emb.shape[1] + m
        seq = torch.cat([dgl.global_prompts, *[torch.cat([emb[j, :1], local[0, j], emb[j, 1:]]) for j in range(t)]])
        allowed = torch.zeros(len(seq), len(seq), dtype=torch.bool)
        cls_at = [g + j * n for j in range(t)]
        allowed[:g, :g] = True
        if global_local:
            allowed[:g] = True  # global prompts read every token
        else:
            allowed[:g, cls_at] = True  # ... or only the frames' class tokens
        for j in range(t):
            rows = slice(g + j * n, g + (j + 1) * n)
            allowed[rows, rows] = True  # a frame reads itself
            if global_local:
                allowed[rows, :g] = True  # ... and the global prompts
        for i, block in enumerate(visual.transformer.resblocks):
            if i > 0:
                for j in range(t):
                    seq = torch.cat([seq[:cls_at[j] + 1], local[i, j], seq[cls_at[j] + 1 + m:]])
            if joined is not None and i == joined[0]:
                k = joined[1]
                for j in range(t):
                    for other in range(t):
                        if j // k == other // k:
                            allowed[g + j * n:g + (j + 1) * n, g + other * n:g + (other + 1) * n] = True
            seq = layer(block, seq, allowed)
        out.append(visual.ln_post(seq[0]) @ visual.proj)
    return F.normalize(torch.stack(out), dim=-1)


# -- tests ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("global_local", [True, False])
def test_matches_the_paper_equations(backbone, global_local):
    dgl = method(backbone, dgl_no_global_local=not global_local)
    with torch.no_grad():
        torch.nn.init.normal_(dgl.global_prompts, std=0.5)  # prompts large enough to matter
        torch.nn.init.normal_(dgl.latent, std=0.5)
        clips = video()
        text, local = paper_prompts(dgl, clips.shape[1])
        ours_text, ours_local = dgl.prompts(clips.shape[1])
        assert torch.allclose(ours_text, text, atol=1e-6) and torch.allclose(ours_local, local, atol=1e-6)
        assert torch.allclose(dgl.encode_text(tokens()), reference_text(dgl, tokens(), text), atol=1e-5)
        assert torch.allclose(dgl.encode_video(clips), reference_video(dgl, clips, local, global_local), atol=1e-5)


def test_transformer_latent_matches_the_reference_loop(backbone):
    dgl = method(backbone, dgl_latent="transformer", dgl_max_frames=4)
    with torch.no_grad():
        clips = video(t=3)
        text, local = dgl.prompts(3)
        assert text.shape == (2, 8, 64) and local.shape == (2, 3, 4, 64)
        assert not torch.allclose(local[:, 0], local[:, 1])  # per-frame prompts
        # the generator: one block over each layer's latent tokens, the text part through the MLP
        out = torch.stack([layer(dgl.prompt_block, z, torch.ones(len(z), len(z), dtype=torch.bool))
                           for z in dgl.latent])
        assert torch.allclose(text, dgl.text_mlp(out[:, :8]), atol=1e-5)
        assert torch.allclose(local, out[:, 8:].reshape(2, 4, 4, 64)[:, :3] + dgl.temporal[:3, None], atol=1e-5)
        assert torch.allclose(dgl.encode_text(tokens()), reference_text(dgl, tokens(), text), atol=1e-5)
        assert torch.allclose(dgl.encode_video(clips), reference_video(dgl, clips, local), atol=1e-5)


def test_without_text_prompts_it_is_clips_text_encoder(backbone):
    dgl = method(backbone, dgl_text_prompts=0)
    with torch.no_grad():
        ours = dgl.encode_text(tokens())
        clips = F.normalize(backbone.model.encode_text(tokens()).float(), dim=-1)
    assert torch.allclose(ours, clips, atol=1e-5)
    assert ours.shape == (3, 32)


@pytest.mark.parametrize("latent", ["linear", "transformer"])
def test_gradients_reach_every_prompt_and_no_clip_weight(backbone, latent):
    dgl = method(backbone, dgl_latent=latent)
    clips = video()
    gen = torch.Generator().manual_seed(3)
    r1, r2 = torch.randn(32, generator=gen), torch.randn(32, generator=gen)
    loss = (dgl.encode_text(tokens()) @ r1).sum() + (dgl.encode_video(clips) @ r2).sum()
    loss.backward()
    names = dict(dgl.named_parameters())
    assert names, "DGL has parameters"
    for name, p in names.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(not p.requires_grad and p.grad is None for p in backbone.model.parameters())
    assert not any(k.startswith("backbone") for k in dgl.state())  # only DGL's own tensors are its state


def test_every_text_prompt_shapes_the_eot_feature(backbone):
    dgl = method(backbone)
    text, local = dgl.prompts(1)
    leaf = text.detach().requires_grad_()
    dgl.prompts = lambda frames: (leaf, local)  # the prompts as one leaf, to read each token's gradient
    (dgl.encode_text(tokens()) @ torch.ones(32)).sum().backward()
    per_token = leaf.grad.abs().sum(dim=-1)  # (layers, n_text)
    assert per_token.shape == (2, 8) and bool((per_token > 0).all())


def test_frame_order(backbone):
    clips = video()
    backwards = clips.flip(1)
    with torch.no_grad():
        for ablation in (False, True):
            dgl = method(backbone, dgl_no_global_local=ablation)
            a, b = dgl.encode_video(clips), dgl.encode_video(backwards)
            assert (a - b).abs().max() > 1e-4  # the frame-index embedding sees the order
        blind = method(backbone, dgl_temporal=False)  # the reference's linear model: order-blind
        assert torch.allclose(blind.encode_video(clips), blind.encode_video(backwards), atol=1e-5)


def test_no_global_local_cuts_the_frames_off_the_global_prompts(backbone):
    clips = video()
    with torch.no_grad():
        for ablation in (False, True):
            dgl = method(backbone, dgl_no_global_local=ablation)
            glob, frames = dgl.video_tokens(clips)
            dgl.global_prompts.add_(1.0)
            glob2, frames2 = dgl.video_tokens(clips)
            assert not torch.allclose(glob, glob2)
            # with the ablation the frames never read the global prompts
            assert torch.allclose(frames, frames2) == ablation
            # ... and each frame is encoded on its own: another frame's pixels change nothing in it
            other = clips.clone()
            other[:, 1] += 1.0
            _, frames3 = dgl.video_tokens(other)
            assert torch.allclose(frames[:, 0], frames3[:, 0]) == ablation
            dgl.global_prompts.sub_(1.0)


def test_trainable_share_by_hand(backbone):
    clip_params = sum(p.numel() for p in backbone.model.parameters())
    # linear: latent 2 layers x 4 x 64, text projection 64 -> 2 x 64, global 4 x 64, temporal 12 x 64
    linear = 2 * 4 * 64 + (64 * 128 + 128) + 4 * 64 + 12 * 64
    assert method(backbone).trainable_share() == pytest.approx(linear / clip_params)
    # transformer: latent 2 x (8 + 4 x 12) x 64, one block of width 64, MLP 64 -> 128 -> 64, global, temporal
    block = (3 * 64 * 64 + 3 * 64) + (64 * 64 + 64) + 2 * 2 * 64 + (64 * 256 + 256) + (256 * 64 + 64)
    transformer = 2 * 56 * 64 + block + (64 * 128 + 128) + (128 * 64 + 64) + 4 * 64 + 12 * 64
    assert method(backbone, dgl_latent="transformer").trainable_share() == pytest.approx(transformer / clip_params)
    assert method(backbone, dgl_temporal=False).trainable_share() == pytest.approx((linear - 12 * 64) / clip_params)


def test_refusals(backbone, tiny_rn_clip):
    with pytest.raises(CptError, match="ViT"):
        method(load_backbone(str(tiny_rn_clip), "cpu"))
    with pytest.raises(CptError, match="multiple"):
        method(backbone, dgl_text_prompts=6)
    with pytest.raises(CptError, match="at most"):
        method(backbone, dgl_max_frames=2).encode_video(video(t=3))
    with pytest.raises(CptError, match="frames"):
        DGL.check(DGLConfig(), "retrieval", {"frames": 16})


def test_half_precision_weights(backbone):
    """fp16 CLIP weights (clip's convert_weights: the token embedding stays fp32) run and agree."""
    half = copy.deepcopy(backbone)
    clip.model.convert_weights(half.model)
    ours, theirs = method(backbone), method(half)
    with torch.no_grad():
        clips = video()
        assert torch.allclose(ours.encode_text(tokens()), theirs.encode_text(tokens()), atol=5e-3)
        assert torch.allclose(ours.encode_video(clips), theirs.encode_video(clips), atol=5e-3)


@pytest.mark.parametrize("name", ["dgl", "coop-video"])
def test_traced_encoders_take_any_batch(backbone, name):
    """`cpt export` traces with two examples; the graphs must not keep that batch size."""
    m = build_method(name, backbone, [[]], {"seed": 0}).eval()
    example_tokens, example_video = trace_examples(m, 2)
    clips = video(3, 2)
    with torch.no_grad():
        text = torch.jit.trace(TextEncoder(m), example_tokens, check_trace=False)
        traced = torch.jit.trace(VideoEncoder(m), example_video, check_trace=False)
        assert torch.allclose(text(tokens()), m.encode_text(tokens()), atol=1e-5)
        assert torch.allclose(traced(clips), VideoEncoder(m)(clips), atol=1e-5)


# -- token merging (--merge) ----------------------------------------------------------------------

@pytest.mark.parametrize("global_local", [True, False])
def test_merging_nothing_and_joining_clips_match_the_paper_equations(backbone, global_local):
    """The merged path (token sizes, proportional attention) with nothing merged is DGL; a clip
    join that merges nothing lets the joined frames read each other from that layer on."""
    plain = method(backbone, dgl_no_global_local=not global_local)
    with torch.no_grad():
        torch.nn.init.normal_(plain.global_prompts, std=0.5)
        torch.nn.init.normal_(plain.latent, std=0.5)
        clips = video(t=4)
        _, local = paper_prompts(plain, 4)
        for merge, joined in (("0*2", None), ("-,c2:0:0", (1, 2)), ("c4:0:0", (0, 4))):
            merged = method(backbone, dgl_no_global_local=not global_local, merge=merge)
            merged.load_state_dict(plain.state_dict())
            expected = reference_video(plain, clips, local, global_local, joined)
            assert torch.allclose(merged.encode_video(clips), expected, atol=1e-5), merge


def test_merged_tokens_follow_the_schedule_and_train(backbone):
    dgl = method(backbone, merge="tempme")  # 2 layers: "c3:30:10,10%"
    clips = video(t=6)
    _, frames = dgl.video_tokens(clips)
    kept = 1 + dgl.n_local  # a frame's class token and local prompts are never merged
    counts = token_counts(parse_schedule("tempme", 2), 6, 17 + dgl.n_local, kept)
    # by hand: 3 frames of 21 tokens join (15 kept): 63 - 18 - 4 = 41; then 41 - 4 = 37; 2 clips
    assert frames.shape[:2] == (2, 2) and frames.shape[1] * frames.shape[2] == counts[-1] == 2 * 37
    dgl.encode_video(clips).sum().backward()
    assert dgl.latent.grad.abs().sum() > 0 and dgl.global_prompts.grad.abs().sum() > 0
    with pytest.raises(CptError, match="--frames 4 does not divide"):
        dgl.encode_video(video(t=4))
