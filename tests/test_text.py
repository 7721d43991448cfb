"""Truncated text encoding equals CLIP's own encode_text."""

import torch

from cpt.core.text import encode_tokens, tokenize
from tests.conftest import TINY_RN, TINY_VIT, make_clip


def test_truncated_encoding_matches_encode_text_for_each_geometry():
    texts = ["a photo of a dog.", "a very long description of a small red car parked outside", "x"]
    for geometry in (TINY_VIT, TINY_RN):
        model = make_clip(geometry)
        tokens = tokenize(texts, model)
        assert tokens.shape[1] == geometry["context_length"]
        expected = model.encode_text(tokens)  # full context, CLIP's code
        got = encode_tokens(model, tokens)  # only up to the longest EOT
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_truncation_is_independent_of_batch_companions():
    model = make_clip(TINY_VIT)
    short = tokenize(["a cat."], model)
    both = tokenize(["a cat.", "a photo of a cat sitting on a very long wall in the sun"], model)
    torch.testing.assert_close(encode_tokens(model, short)[0], encode_tokens(model, both)[0], rtol=1e-5, atol=1e-5)
