"""The prompt-learner core: layouts, context placement, gradients, any geometry."""

import pytest
import torch

from cpt.errors import CptError
from cpt.core.prompt import ClassPrompts, PromptConfig, init_context
from cpt.core.text import tokenize
from tests.conftest import TINY_RN, TINY_VIT, make_clip

NAMES = ["dog", "red car", "x-ray machine", "sea_lion"]


@pytest.mark.parametrize("geometry", [TINY_VIT, TINY_RN], ids=["vit", "rn"])
@pytest.mark.parametrize(
    "position,template",
    [("end", "a photo of a {}."), ("front", "{} a photo of a."), ("middle", "a photo {} of a.")],
)
def test_word_initialised_context_reproduces_the_written_prompt(geometry, position, template):
    """With the context set to the words' embeddings, features equal encode_text of the sentence."""
    model = make_clip(geometry)
    cfg = PromptConfig(ctx_init="a photo of a", class_token_position=position)
    prompts = ClassPrompts(model, NAMES, cfg)
    got = prompts.encode(model, init_context(prompts, cfg))
    expected = model.encode_text(tokenize([template.format(n) for n in NAMES], model))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert cfg.n_ctx == 4


def test_class_specific_context_is_per_class_and_gets_gradients():
    model = make_clip(TINY_VIT)
    cfg = PromptConfig(n_ctx=3, class_specific=True)
    prompts = ClassPrompts(model, NAMES, cfg)
    ctx = init_context(prompts, cfg, torch.Generator().manual_seed(0)).requires_grad_()
    assert ctx.shape == (len(NAMES), 3, 64)
    emb = prompts.fill(ctx)
    # the context lands in slots 1..3 of every class row, the rest is the word embeddings
    torch.testing.assert_close(emb[:, 1:4], ctx)
    torch.testing.assert_close(emb[:, 0], prompts.base[:, 0])
    prompts.encode(model, ctx)[2].sum().backward()
    per_class = ctx.grad.abs().sum(dim=(1, 2))
    assert per_class[2] > 0 and per_class[[0, 1, 3]].eq(0).all()  # only class 2's context influences class 2


def test_generic_context_is_shared_and_random_init_is_seeded():
    model = make_clip(TINY_VIT)
    cfg = PromptConfig(n_ctx=16)
    prompts = ClassPrompts(model, NAMES, cfg)
    a = init_context(prompts, cfg, torch.Generator().manual_seed(1))
    b = init_context(prompts, cfg, torch.Generator().manual_seed(1))
    assert a.shape == (16, 64) and torch.equal(a, b)
    assert abs(float(a.std()) - 0.02) < 0.005
    emb = prompts.fill(a)
    assert torch.equal(emb[0, 1:17], emb[3, 1:17])


def test_prompts_are_truncated_at_the_longest_eot():
    model = make_clip(TINY_VIT)
    prompts = ClassPrompts(model, ["a", "b c d"], PromptConfig(n_ctx=2))
    # [SOS] ctx ctx b c d . [EOS] -> 8 positions, not 77
    assert prompts.base.shape[1] == 8 and prompts.eot.tolist() == [5, 7]


def test_bad_position_is_a_user_error():
    with pytest.raises(CptError, match="end, middle, front"):
        PromptConfig(class_token_position="left")


@pytest.mark.parametrize("geometry", [TINY_VIT, TINY_RN], ids=["vit", "rn"])
@pytest.mark.parametrize("position", ["end", "middle", "front"])
@pytest.mark.parametrize("class_specific", [False, True], ids=["generic", "class-specific"])
def test_fast_paths_match_full_context_encoding_in_value_and_gradient(geometry, position, class_specific):
    """Shared-prefix / truncated encoding equals CLIP's encode_text over the full context."""
    model = make_clip(geometry)
    names = ["dog", "red sports car", "x", "sea lion of the north"]
    cfg = PromptConfig(n_ctx=5, class_token_position=position, class_specific=class_specific)
    prompts = ClassPrompts(model, names, cfg)
    ctx = init_context(prompts, cfg, torch.Generator().manual_seed(0)).requires_grad_()
    weights = torch.randn(len(names), geometry["embed_dim"])

    fast = prompts.encode(model, ctx)
    (fast * weights).sum().backward()
    fast_grad, ctx.grad = ctx.grad.clone(), None

    # plain path: the filled prompts padded to the full context and run through CLIP's code
    full = torch.zeros(len(names), model.context_length, prompts.base.shape[-1])
    full[:, : prompts.base.shape[1]] = prompts.fill(ctx)
    x = full + model.positional_embedding
    x = model.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
    plain = model.ln_final(x)[torch.arange(len(names)), prompts.eot] @ model.text_projection
    (plain * weights).sum().backward()

    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast_grad, ctx.grad, rtol=1e-3, atol=5e-5)  # fp32 sums in another order


def test_class_specific_random_context_is_drawn_per_class():
    model = make_clip(TINY_VIT)
    cfg = PromptConfig(n_ctx=3, class_specific=True)
    ctx = init_context(ClassPrompts(model, NAMES, cfg), cfg, torch.Generator().manual_seed(0))
    assert ctx.shape == (len(NAMES), 3, 64) and not torch.equal(ctx[0], ctx[1])
    words = PromptConfig(ctx_init="a photo of a", class_specific=True)
    init = init_context(ClassPrompts(model, NAMES, words), words)
    assert init.shape == (len(NAMES), 4, 64) and torch.equal(init[0], init[3])
