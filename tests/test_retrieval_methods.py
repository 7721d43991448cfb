"""The retrieval methods' defining computations against independent ones: the symmetric InfoNCE,
the caption context of text-prompt tuning, mean pooling, and full fine-tuning's gradients."""

from __future__ import annotations

import math

import clip
import torch
import torch.nn.functional as F

from cpt.core.backbone import load_backbone
from cpt.methods import build_method
from cpt.methods.retrieval.base import info_nce
from cpt.methods.retrieval.baselines import mean_pool, with_context


def _unit(*shape: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_info_nce_is_the_symmetric_cross_entropy_written_out():
    video, text, scale = _unit(5, 8, seed=0), _unit(5, 8, seed=1), 20.0
    total = 0.0
    for i in range(5):  # every pair: -log softmax of its own entry, along its row and along its column
        row = [scale * float(video[i] @ text[j]) for j in range(5)]
        col = [scale * float(video[j] @ text[i]) for j in range(5)]
        total += 0.5 * (math.log(sum(math.exp(r) for r in row)) - row[i])
        total += 0.5 * (math.log(sum(math.exp(c) for c in col)) - col[i])
    assert abs(float(info_nce(video, text, scale)) - total) < 1e-4
    # the pairs of two ranks' blocks add up to the whole batch's loss
    halves = info_nce(video, text, scale, rows=torch.arange(3)) + info_nce(video, text, scale, rows=torch.arange(3, 5))
    assert abs(float(halves) - total) < 1e-4


def test_info_nce_leaves_other_captions_of_the_same_video_out_of_the_negatives():
    video, text, scale = _unit(4, 8, seed=2), _unit(4, 8, seed=3), 10.0
    videos = torch.tensor([0, 1, 0, 2])  # pairs 0 and 2: two captions of one video
    total = 0.0
    for i in range(4):
        keep = [j for j in range(4) if j == i or videos[j] != videos[i]]
        row = [scale * float(video[i] @ text[j]) for j in keep]
        col = [scale * float(video[j] @ text[i]) for j in keep]
        own = keep.index(i)
        total += 0.5 * (math.log(sum(math.exp(r) for r in row)) - row[own])
        total += 0.5 * (math.log(sum(math.exp(c) for c in col)) - col[own])
    assert abs(float(info_nce(video, text, scale, videos)) - total) < 1e-4


def test_mean_pool_averages_normalised_frames():
    frames = torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(4)) * 5
    expected = torch.stack([F.normalize(sum(F.normalize(f, dim=0) for f in clip_) / 3, dim=0) for clip_ in frames])
    torch.testing.assert_close(mean_pool(frames), expected)


def test_caption_context_follows_the_start_token_and_keeps_the_end_token(tiny_clip):
    model = load_backbone(str(tiny_clip), "cpu").model
    length = model.context_length
    long = " ".join(["red"] * (length - 3))  # fills the context: the context pushes its tail out
    tokens = clip.tokenize(["a red circle moves left", long], context_length=length, truncate=True)
    ctx = torch.randn(4, model.token_embedding.weight.shape[1])
    x, eot = with_context(model, tokens, ctx)
    emb = model.token_embedding(tokens)
    # short caption: [SOT] ctx words [EOT], the words shifted by 4
    n_words = int(tokens[0].argmax()) - 1
    torch.testing.assert_close(x[0, 0], emb[0, 0])
    torch.testing.assert_close(x[0, 1:5], ctx)
    torch.testing.assert_close(x[0, 5:5 + n_words + 1], emb[0, 1:n_words + 2])
    assert int(eot[0]) == n_words + 5
    # long caption: cut, its EOT kept in the last place
    assert int(eot[1]) == length - 1
    torch.testing.assert_close(x[1, length - 1], emb[1, int(tokens[1].argmax())])
    torch.testing.assert_close(x[1, 5:length - 1], emb[1, 1:length - 5])


def test_coop_video_without_context_effect_is_clip(tiny_clip):
    """With its context equal to the embeddings of real words, the prompt is CLIP's text feature of
    the caption with those words in front."""
    backbone = load_backbone(str(tiny_clip), "cpu")
    method = build_method("coop-video", backbone, [[]], {"n_ctx": 2})
    words = clip.tokenize(["a video"], context_length=backbone.model.context_length)[0, 1:3]
    with torch.no_grad():
        method.ctx.copy_(backbone.model.token_embedding(words))
    tokens = clip.tokenize(["red circle"], context_length=backbone.model.context_length)
    expected = F.normalize(backbone.model.encode_text(clip.tokenize(["a video red circle"],
                                                                    context_length=backbone.model.context_length)), dim=-1)
    torch.testing.assert_close(method.encode_text(tokens), expected, atol=1e-5, rtol=0)


def test_full_fine_tuning_trains_every_clip_weight(tiny_clip):
    backbone = load_backbone(str(tiny_clip), "cpu")
    method = build_method("clip4clip", backbone, [[]], {})
    frames = torch.randn(3, 2, 3, 32, 32)
    tokens = clip.tokenize(["a", "b", "c"], context_length=backbone.model.context_length)
    loss = info_nce(method.encode_video(frames), method.encode_text(tokens), method.logit_scale())
    loss.backward()
    unused = {"logit_scale"}  # a fixed temperature here (see README)
    missing = [n for n, p in backbone.model.named_parameters() if n not in unused and p.grad is None]
    assert not missing, missing
