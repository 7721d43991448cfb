"""Backbones load through clip.load from files, in every precision, and fail clearly offline."""

import pytest
import torch
from clip.model import convert_weights

from cpt.core.backbone import file_sha256, load_backbone
from cpt.errors import CptError
from cpt.core.text import encode_tokens, tokenize
from tests.conftest import TINY_VIT, make_clip


def test_state_dict_checkpoint_loads_with_its_geometry(tiny_clip, tiny_rn_clip):
    vit = load_backbone(str(tiny_clip), "cpu")
    assert vit.geometry == {
        "embed_dim": 32, "text_width": 64, "text_layers": 2, "text_heads": 1, "context_length": 77,
        "vocab_size": 49408, "vision": "vit", "image_resolution": 32,
    }
    assert vit.checksum == file_sha256(tiny_clip)
    assert not any(p.requires_grad for p in vit.model.parameters())
    rn = load_backbone(str(tiny_rn_clip), "cpu")
    assert rn.geometry["vision"] == "resnet" and rn.geometry["context_length"] == 40
    assert rn.geometry["text_width"] == 128 and rn.preprocess.resolution == 32


def fp16_rounded(model):
    """clip.load rounds weights to fp16 (as OpenAI's checkpoints are stored), then back to fp32 on CPU."""
    convert_weights(model)
    return model.float()


def test_loaded_weights_are_the_saved_weights(tiny_clip):
    backbone = load_backbone(str(tiny_clip), "cpu")
    reference = fp16_rounded(make_clip(TINY_VIT))
    tokens = tokenize(["a photo of a dog."], reference)
    torch.testing.assert_close(encode_tokens(backbone.model, tokens), reference.encode_text(tokens))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_jit_archive_loads_too(tmp_path):
    model = fp16_rounded(make_clip(TINY_VIT))
    traced = torch.jit.trace(model, (torch.randn(1, 3, 32, 32), tokenize(["a"], model)))
    path = tmp_path / "tiny.jit.pt"
    traced.save(str(path))
    backbone = load_backbone(str(path), "cpu")
    tokens = tokenize(["a red car."], model)
    torch.testing.assert_close(encode_tokens(backbone.model, tokens), model.encode_text(tokens))


@pytest.mark.parametrize("precision,dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_half_precisions_run_and_stay_close_to_fp32(tiny_clip, tiny_rn_clip, precision, dtype):
    for path in (tiny_clip, tiny_rn_clip):
        full = load_backbone(str(path), "cpu")
        half = load_backbone(str(path), "cpu", precision)
        assert half.model.dtype == dtype
        images = torch.randn(2, 3, 32, 32)
        got = half.model.encode_image(images.to(dtype))
        assert got.dtype == dtype
        torch.testing.assert_close(got.float(), full.model.encode_image(images), rtol=0.1, atol=0.05)
        tokens = tokenize(["a photo of a dog."], full.model)
        torch.testing.assert_close(
            encode_tokens(half.model, tokens).float(), encode_tokens(full.model, tokens), rtol=0.1, atol=0.05
        )


def test_missing_download_names_the_cache_and_the_path_option(tmp_path):
    with pytest.raises(CptError) as err:
        load_backbone("RN50", "cpu", cache_dir=tmp_path / "empty")
    message = str(err.value)
    assert str(tmp_path / "empty" / "RN50.pt") in message and "--backbone PATH" in message


def test_unknown_backbone_and_corrupt_checkpoint(tmp_path):
    with pytest.raises(CptError, match="neither a known name"):
        load_backbone("no-such-model", "cpu")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CptError, match="Could not load"):
        load_backbone(str(bad), "cpu")


def test_cuda_without_gpu_is_a_user_error(tiny_clip):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(CptError, match="no CUDA GPU"):
        load_backbone(str(tiny_clip), "cuda")
