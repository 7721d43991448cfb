"""OpenCLIP backbones (`--backbone openclip:ARCH --pretrained FILE`): loading, exact prompt encoding
against open_clip's own `encode_text`, cache identity, refusals, and the CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cpt.core.backbone import load_backbone
from cpt.core.openclip import check_text_tower, check_tokenizer, load_openclip
from cpt.core.prompt import ClassPrompts, PromptConfig
from cpt.data.features import FeatureCache
from cpt.errors import CptError
from tests.conftest import cli, fit_json

open_clip = pytest.importorskip("open_clip")

# ViT-B-32's layout shrunk: 2 + 2 layers, width 64, 32-pixel images; GELU (not QuickGELU) and a
# layer scale on the text blocks, two things OpenAI's CLIP lacks.
TINY = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2,
                     "ls_init_value": 0.5}}
ARCH = "cpt-test-tiny"
NAMES = ["red fox", "golden retriever dog", "blue whale"]


def register(folder: Path, name: str, cfg: dict) -> str:
    """Make `name` an open_clip architecture (as a model config file open_clip reads)."""
    path = folder / f"{name}.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    return name


def variant(**text: object) -> dict:
    return {**TINY, "text_cfg": {**TINY["text_cfg"], **text}}


@pytest.fixture(scope="session")
def tiny_openclip(tmp_path_factory) -> Path:
    """The tiny OpenCLIP with random weights, saved as a state dict."""
    folder = tmp_path_factory.mktemp("openclip")
    register(folder, ARCH, TINY)
    register(folder, ARCH + "-quickgelu", {**TINY, "quick_gelu": True})
    torch.manual_seed(0)
    model = open_clip.create_model(ARCH)
    for block in model.transformer.resblocks:  # a layer scale that is not one constant per block
        block.ls_1.gamma.data.uniform_(0.2, 1.5)
        block.ls_2.gamma.data.uniform_(0.2, 1.5)
    path = folder / "tiny-openclip.pt"
    torch.save(model.state_dict(), path)
    return path


def reference(path: Path) -> torch.nn.Module:
    """open_clip's own model from the file, independent of cpt's loader."""
    model = open_clip.create_model(ARCH)
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()


def test_loads_with_its_geometry_and_preprocessing(tiny_openclip):
    backbone = load_backbone(f"openclip:{ARCH}", pretrained=str(tiny_openclip))
    d = backbone.describe()
    assert d["spec"] == f"openclip:{ARCH}" and d["pretrained"] == str(tiny_openclip)
    assert d["geometry"] == {"embed_dim": 32, "text_width": 64, "text_layers": 2, "text_heads": 2,
                             "context_length": 77, "vocab_size": 49408, "vision": "vit", "image_resolution": 32}
    assert d["preprocess"]["resolution"] == 32
    assert not any(p.requires_grad for p in backbone.model.parameters())
    ref = reference(tiny_openclip)
    images = torch.randn(3, 3, 32, 32)
    assert torch.allclose(backbone.model.encode_image(images), ref.encode_image(images), atol=1e-6)


@pytest.mark.parametrize("position", ["end", "front"])
def test_prompt_encoding_equals_encode_text_in_values_and_gradients(tiny_openclip, position):
    """The prompt core (shared prefix for `end`, truncated prompts for `front`) against open_clip's
    encode_text over the full 77 tokens, gradients taken at the context's token embeddings; in float64,
    so that 1e-5 bounds the method's error, not float32 rounding of gradients in the tens."""
    backbone = load_backbone(f"openclip:{ARCH}", pretrained=str(tiny_openclip))
    backbone.model.double()
    words = "itap of a"
    prompts = ClassPrompts(backbone.model, NAMES, PromptConfig(ctx_init=words, class_token_position=position))
    assert prompts.shared_prefix == (position == "end")
    tokenize = open_clip.get_tokenizer(ARCH)
    ids = tokenize([words])[0]
    ctx_ids = ids[1 : int(ids.argmax())]  # the context words' tokens, between SOT and EOT
    assert len(ctx_ids) == prompts.n_ctx
    table = backbone.model.token_embedding.weight.detach().clone().requires_grad_(True)
    feats = prompts.encode(backbone.model, table[ctx_ids])  # (n_cls, 32)

    ref = reference(tiny_openclip).double()
    texts = [f"{words} {n}." if position == "end" else f"{n} {words}." for n in NAMES]
    expected = ref.encode_text(tokenize(texts))
    assert torch.allclose(feats, expected, rtol=0, atol=1e-5), (feats - expected).abs().max()

    weights = torch.randn_like(expected)
    (feats * weights).sum().backward()
    (expected * weights).sum().backward()
    rows = ctx_ids.unique()  # the names, period and specials use none of the context words
    got, want = table.grad[rows], ref.token_embedding.weight.grad[rows]
    assert want.abs().max() > 1e-4
    assert torch.allclose(got, want, rtol=0, atol=1e-5), (got - want).abs().max()


def test_cache_key_tells_models_and_architectures_apart(tiny_openclip, tiny_clip, tmp_path):
    def folder(backbone) -> Path:
        return FeatureCache(backbone, tmp_path).store().folder

    ours = load_backbone(f"openclip:{ARCH}", pretrained=str(tiny_openclip))
    quick = load_backbone(f"openclip:{ARCH}-quickgelu", pretrained=str(tiny_openclip))  # same file, other activation
    openai = load_backbone(str(tiny_clip))
    keys = {folder(ours), folder(quick), folder(openai)}
    assert len(keys) == 3
    assert folder(load_backbone(f"openclip:{ARCH}", pretrained=str(tiny_openclip))) == folder(ours)
    images = torch.rand(2, 3, 32, 32)
    assert not torch.allclose(ours.model.encode_image(images), quick.model.encode_image(images))


def test_fit_and_torchscript_export(tiny_openclip, colours, tmp_path):
    run = tmp_path / "run"
    summary = fit_json("--method", "coop", "--tasks", f"colours={colours}", "--backbone", f"openclip:{ARCH}",
                       "--pretrained", tiny_openclip, "--shots", "2", "--epochs", "2", "--n-ctx", "4", "--out", run)
    assert summary["run"] == str(run)
    config = json.loads((run / "config.json").read_text())
    assert config["backbone"]["pretrained"] == str(tiny_openclip)
    out = tmp_path / "model.ts"
    code, _, err = cli("export", run, "--format", "torchscript", "--out", out)
    assert code == 0, err
    extra = {"cpt.json": ""}
    traced = torch.jit.load(str(out), _extra_files=extra)
    assert json.loads(extra["cpt.json"])["backbone"]["spec"] == f"openclip:{ARCH}"
    images = torch.rand(2, 3, 32, 32)
    logits = traced(images)[0]
    assert logits.shape == (2, 4)
    # the traced image side is open_clip's encoder: same normalised features up to the heads' linear map
    ref = torch.nn.functional.normalize(reference(tiny_openclip).encode_image(images), dim=-1)
    heads = traced.weight0
    assert torch.allclose(logits, ref @ heads.T + traced.bias0, atol=1e-4)

    # eval reloads the run through its recorded weights; a .pt export predicts the run's logits
    code, out, err = cli("eval", run, "--json", "--quiet")
    assert code == 0, err
    assert json.loads(out)["metrics"] == summary["metrics"]
    code, _, err = cli("export", run, "--format", "pt", "--out", tmp_path / "model.pt", "--quiet")
    assert code == 0, err
    runs, exported = (cli("predict", source, colours / "test", "--jsonl", "--quiet") for source in (run, tmp_path / "model.pt"))
    assert runs[0] == exported[0] == 0, runs[2] + exported[2]
    pairs = zip(map(json.loads, runs[1].splitlines()), map(json.loads, exported[1].splitlines()), strict=True)
    for a, b in pairs:
        assert a["path"] == b["path"] and torch.allclose(torch.tensor(a["logits"]), torch.tensor(b["logits"]), atol=1e-4)


def test_eval_prior_and_sweep_take_pretrained(tiny_openclip, colours, tmp_path):
    backbone = ["--backbone", f"openclip:{ARCH}", "--pretrained", tiny_openclip]
    code, out, err = cli("eval", f"openclip:{ARCH}", "--pretrained", tiny_openclip, "--data", colours / "test",
                         "--out", tmp_path / "eval", "--json", "--quiet")  # a backbone zero-shot
    assert code == 0, err
    zero_shot = fit_json("--method", "zeroshot", "--tasks", f"colours={colours}", *backbone, "--out", tmp_path / "zs")
    accuracy = {m["metric"]: m["value"] for m in json.loads(out)["metrics"]}["accuracy"]
    assert accuracy == next(m["value"] for m in zero_shot["metrics"] if m["metric"] == "accuracy")
    code, _, err = cli("eval", tmp_path / "zs", "--pretrained", tiny_openclip)
    assert code == 2 and "records its own weights" in err

    names = tmp_path / "classes.txt"
    names.write_text("\n".join(NAMES))
    code, out, err = cli("prior", *backbone, "--classes", names, "--json", "--quiet")
    assert code == 0, err
    assert len(json.loads(out)["similarity"]) == len(NAMES)

    code, _, err = cli("sweep", "--tasks", f"colours={colours}", *backbone, "--methods", "zeroshot", "--shots", "1",
                       "--seeds", "1", "--out", tmp_path / "sweep", "--quiet")
    assert code == 0, err
    config = json.loads((tmp_path / "sweep" / "zeroshot-1shot-seed1" / "config.json").read_text())
    assert config["backbone"]["pretrained"] == str(tiny_openclip)


def test_bad_backbones_exit_2_with_the_reason(tiny_openclip, colours, tmp_path):
    common = ["fit", "--method", "coop", "--tasks", f"colours={colours}", "--shots", "2", "--epochs", "1"]
    code, _, err = cli(*common, "--backbone", f"openclip:{ARCH}", "--pretrained", tmp_path / "missing.pt",
                       "--out", tmp_path / "a")
    assert code == 2 and "neither an existing checkpoint file nor a pretrained tag" in err
    code, _, err = cli(*common, "--backbone", "openclip:ViT-B-33", "--pretrained", tiny_openclip, "--out", tmp_path / "b")
    assert code == 2 and "no architecture 'ViT-B-33'" in err and "ViT-B-32" in err
    code, _, err = cli(*common, "--backbone", f"openclip:{ARCH}", "--out", tmp_path / "c")
    assert code == 2 and "--pretrained" in err
    code, _, err = cli(*common, "--backbone", f"openclip:{ARCH}-quickgelu", "--pretrained", tmp_path,
                       "--out", tmp_path / "d")
    assert code == 2
    wrong = tmp_path / "wrong.pt"
    torch.save({"visual.proj": torch.zeros(3)}, wrong)
    code, _, err = cli(*common, "--backbone", f"openclip:{ARCH}", "--pretrained", wrong, "--out", tmp_path / "e")
    assert code == 2 and f"Could not load {wrong}" in err


def test_pretrained_is_only_for_openclip(tiny_clip):
    with pytest.raises(CptError, match="is for OpenCLIP backbones"):
        load_backbone(str(tiny_clip), pretrained="laion2b_s34b_b79k")


def test_a_tag_without_network_gives_the_download_paragraph(monkeypatch, tmp_path):
    def offline(cfg, cache_dir=None):
        raise OSError("Name or service not known")

    monkeypatch.setattr(open_clip, "download_pretrained", offline)
    with pytest.raises(CptError) as err:
        load_openclip("ViT-B-32", "laion2b_s34b_b79k", "fp32", str(tmp_path))
    text = str(err.value)
    assert text.startswith("Could not download OpenCLIP ViT-B-32 weights 'laion2b_s34b_b79k': no network")
    assert str(tmp_path) in text and "--pretrained FILE" in text


@pytest.mark.parametrize("text, reason", [
    ({"no_causal_mask": True}, "no causal mask"),
    ({"pool_type": "last"}, "'last' position"),
    ({"proj_bias": True}, "a layer with a bias"),
    ({"qk_norm": True}, "custom attention blocks"),
])
def test_text_towers_cpt_cannot_encode_exactly_are_refused(text, reason):
    with pytest.raises(CptError, match=reason):
        check_text_tower(open_clip.model.CLIP(**variant(**text)), "X")


def test_custom_text_and_other_tokenizers_are_refused(tiny_openclip, tmp_path):
    with pytest.raises(CptError, match="separate module"):
        check_text_tower(open_clip.model.CustomTextCLIP(**TINY), "X")
    name = register(tmp_path, "cpt-test-whitespace", variant(tokenizer_kwargs={"clean": "whitespace"}))
    with pytest.raises(CptError, match="not with OpenAI's CLIP BPE"):
        check_tokenizer(name)
    hf = register(tmp_path, "cpt-test-hf", variant(hf_tokenizer_name="some/hub-tokenizer"))
    with pytest.raises(CptError, match="Hugging Face tokenizer some/hub-tokenizer"):  # refused without transformers
        check_tokenizer(hf)
    check_tokenizer(ARCH)  # the CLIP BPE with CLIP's cleaning passes


def test_bench_times_openclip_against_its_own_full_context_encoder(tiny_openclip):
    code, out, err = cli("bench", "--geometry", f"openclip:{ARCH}", "--classes", "3,20", "--repeats", "1", "--n-ctx",
                         "4", "--json", "--quiet")
    assert code == 0, err
    rows = json.loads(out)["rows"]
    assert [(r["classes"], r["path"]) for r in rows] == [(3, "naive"), (3, "optimised"), (20, "naive"), (20, "optimised")]
    # the optimised path (truncated, shared-prefix encoding) scores as open_clip's transformer over 77 tokens
    assert all(r["max_logit_diff"] < 1e-4 and r["step_ms"] > 0 for r in rows)
    code, _, err = cli("bench", "--geometry", "openclip:ViT-B-33", "--classes", "3", "--quiet")
    assert code == 2 and "no architecture 'ViT-B-33'" in err


def test_video_methods_that_rewrite_the_vit_refuse_openclip(tiny_openclip):
    from cpt.methods.retrieval.base import require_vit

    backbone = load_backbone(f"openclip:{ARCH}", pretrained=str(tiny_openclip))
    with pytest.raises(CptError, match="is an OpenCLIP model"):
        require_vit(backbone, "dgl needs a ViT CLIP")
