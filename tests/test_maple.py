"""MaPLe: deep prompts in both encoders, the vision prompts coupled from the text prompts.

The features are checked against an implementation written here from the paper and the
authors' code (their prompt "a photo of a {}." tokenized whole, CLIP's own blocks over the full
context, prompts swapped in layer by layer); the run is checked end to end through the CLI."""

from __future__ import annotations

import json

import clip
import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cpt.core.backbone import Preprocess, load_backbone
from cpt.core.templates import template_embeddings
from cpt.data.features import eval_transform
from cpt.methods import build_method
from tests.conftest import TINY_VIT, cli, fit_json

NAMES = ["red", "green", "yellow ochre", "a very long colour name"]
TOL = 1e-5


@pytest.fixture(scope="module")
def three_layer_backbone(tmp_path_factory):
    """A tiny ViT CLIP with three layers in each encoder, so a depth of 2 leaves a layer unprompted."""
    torch.manual_seed(0)
    model = clip.model.CLIP(**{**TINY_VIT, "vision_layers": 3, "transformer_layers": 3})
    path = tmp_path_factory.mktemp("clip") / "three-layer.pt"
    torch.save(model.state_dict(), path)
    return load_backbone(str(path))


def maple(backbone, depth: int, seed: int = 0, **options):
    """A MaPLe method on NAMES whose learned tensors are all moved off their start (so every one matters)."""
    method = build_method("maple", backbone, [NAMES], {"prompt_depth": depth, "seed": seed, **options})
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in method.learner.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return method


def reference_text(model, ctx: torch.Tensor, deep: torch.Tensor, depth: int, n_ctx: int = 2) -> torch.Tensor:
    """The authors' text encoder: "a photo of a NAME." tokenized whole, its first n_ctx words replaced by
    ctx, every position through CLIP's blocks (77-token causal mask), layer i < depth reading deep[i - 1]
    at the context positions."""
    tokens = clip.tokenize([f"a photo of a {name}." for name in NAMES])
    x = model.token_embedding(tokens)
    x = torch.cat([x[:, :1], ctx.expand(len(NAMES), -1, -1), x[:, 1 + n_ctx:]], dim=1)
    x = (x + model.positional_embedding).permute(1, 0, 2)
    for i, block in enumerate(model.transformer.resblocks):
        if 1 <= i < depth:
            x = torch.cat([x[:1], deep[i - 1].unsqueeze(1).expand(-1, len(NAMES), -1), x[1 + n_ctx:]])
        x = block(x)
    x = model.ln_final(x.permute(1, 0, 2))
    return x[torch.arange(len(NAMES)), tokens.argmax(dim=-1)] @ model.text_projection


def reference_image(visual, pixels: torch.Tensor, prompts: list[torch.Tensor]) -> torch.Tensor:
    """The authors' VisionTransformer_MaPLe: layer 0's prompts appended after the patches (then ln_pre),
    layer i's replacing the last n_ctx tokens before block i, the class token's output."""
    n, k = pixels.shape[0], prompts[0].shape[0]
    x = visual.conv1(pixels)
    x = x.reshape(n, x.shape[1], -1).permute(0, 2, 1)
    x = torch.cat([visual.class_embedding + torch.zeros(n, 1, x.shape[-1]), x], dim=1) + visual.positional_embedding
    x = visual.ln_pre(torch.cat([x, prompts[0].expand(n, -1, -1)], dim=1)).permute(1, 0, 2)
    for i, block in enumerate(visual.transformer.resblocks):
        if 1 <= i < len(prompts):
            x = torch.cat([x[: x.shape[0] - k], prompts[i].expand(n, -1, -1).permute(1, 0, 2)])
        x = block(x)
    return visual.ln_post(x.permute(1, 0, 2)[:, 0]) @ visual.proj


def coupled(method, depth: int) -> list[torch.Tensor]:
    """Each prompted image layer's prompts, by hand: W_l @ text prompt of layer l + b_l."""
    learner = method.learner
    text = [learner.ctx, *learner.deep]
    return [text[i] @ learner.couple[i].weight.T + learner.couple[i].bias for i in range(depth)]


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_text_and_image_features_follow_the_prompts_layer_by_layer(three_layer_backbone, depth):
    model = three_layer_backbone.model
    method = maple(three_layer_backbone, depth)
    learner = method.learner
    assert learner.deep.shape == (depth - 1, 2, TINY_VIT["transformer_width"])
    with torch.no_grad():
        expected = F.normalize(reference_text(model, learner.ctx, learner.deep, depth), dim=-1)
        torch.testing.assert_close(method.class_weights(0), expected, atol=TOL, rtol=0)
        torch.testing.assert_close(method.class_weights(0, torch.tensor([1, 3])), expected[[1, 3]], atol=TOL, rtol=0)

        pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
        ours = method.image_encoder()(pixels)
        expected = reference_image(model.visual, pixels, coupled(method, depth))
        torch.testing.assert_close(ours, expected, atol=TOL, rtol=0)
        assert (ours - model.encode_image(pixels)).abs().max() > 1e-3  # the prompts change the features


def test_depth_is_capped_at_each_encoders_layers(three_layer_backbone):
    method = maple(three_layer_backbone, 9)  # the published depth on a 3-layer model
    assert method.learner.deep.shape[0] == 2 and len(method.learner.couple) == 3
    with torch.no_grad():
        torch.testing.assert_close(method.class_weights(0), maple(three_layer_backbone, 3).class_weights(0))


def test_at_depth_one_the_text_side_is_coops_and_starts_at_the_hand_written_prompt(three_layer_backbone):
    untrained = build_method("maple", three_layer_backbone, [NAMES], {"prompt_depth": 1})
    with torch.no_grad():
        zero_shot = template_embeddings(three_layer_backbone, NAMES, ["a photo of a {}."])
        torch.testing.assert_close(untrained.class_weights(0), zero_shot.float(), atol=TOL, rtol=0)

        method = maple(three_layer_backbone, 1)
        coop = build_method("coop", three_layer_backbone, [NAMES], {"ctx_init": "a photo of a"})
        coop.ctx[0].copy_(torch.cat([method.learner.ctx, coop.ctx[0][2:]]))  # "of a" stays the words' embeddings
        torch.testing.assert_close(method.class_weights(0), coop.class_weights(0), atol=TOL, rtol=0)


def test_image_gradients_reach_the_text_prompts_through_the_coupling(three_layer_backbone):
    method = maple(three_layer_backbone, 3)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    method.image_encoder()(pixels).square().sum().backward()  # the image side alone
    learner = method.learner
    assert learner.ctx.grad.abs().min() > 0 and learner.deep.grad.abs().min() > 0
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in learner.couple.parameters())
    assert all(p.grad is None for p in three_layer_backbone.model.parameters())  # CLIP stays frozen


def test_learned_prompts_rekey_the_feature_cache(three_layer_backbone):
    """Test features are cached under a checksum of the prompted encoder: never another run's."""
    frozen = three_layer_backbone.checksum
    sums = []
    for seed in (0, 1):
        method = maple(three_layer_backbone, 2, seed=seed)
        method.load_state(method.state())
        sums.append(three_layer_backbone.checksum)
        three_layer_backbone.checksum, three_layer_backbone.frozen_checksum = frozen, None
    assert len({frozen, *sums}) == 3


def test_bad_options_are_refused_before_anything_is_written(tiny_clip, colours, tmp_path):
    cases = [(["--n-ctx", "5"], "--n-ctx 5 is more than the 4 tokens"), (["--precision", "fp16"], "fp32")]
    for args, message in cases:
        code, _, err = cli("fit", "--method", "maple", "--tasks", f"colours={colours}", "--backbone", tiny_clip, *args,
                           "--out", tmp_path / "r")
        assert code == 2 and message in err, (args, err)
        assert not (tmp_path / "r").exists()


def test_fit_on_the_toy_tasks_trains_the_shared_prompts(tmp_path):
    summary = fit_json("--method", "maple", "--tasks", "toy", "--backbone", "toy", "--shots", "2", "--epochs", "2",
                       "--out", tmp_path / "run")
    run = tmp_path / "run"
    config = json.loads((run / "config.json").read_text())
    train = config["resolved"]["train"]
    assert (train["lr"], train["batch_size"]) == (0.0035, 4)  # the published recipe, as defaults
    history = pd.read_csv(run / "history.csv")
    assert len(history) == 2 and np.isfinite(history.loss).all()
    state = torch.load(run / "checkpoint.pt", weights_only=True)["state"]
    assert sorted(state) == ["learner.couple.0.bias", "learner.couple.0.weight", "learner.couple.1.bias",
                             "learner.couple.1.weight", "learner.couple.2.bias", "learner.couple.2.weight",
                             "learner.couple.3.bias", "learner.couple.3.weight", "learner.ctx", "learner.deep"]
    start = build_method("maple", load_backbone("toy"), [t["classnames"] for t in config["tasks"]], {}).state()
    assert all(not torch.equal(state[k], start[k]) for k in state)  # every learned tensor moved
    tasks = {m["task"] for m in summary["metrics"]} - {"mean"}
    assert tasks == {"shape", "colour", "count", "size"}


def test_eval_predict_and_exports_give_maples_logits(colours, tiny_clip, tmp_path, monkeypatch):
    run = tmp_path / "run"
    fitted = fit_json("--method", "maple", "--tasks", f"colours={colours}", "--backbone", tiny_clip, "--shots", "4",
                      "--epochs", "2", "--lr", "0.05", "--out", run)
    # cpt eval rebuilds the prompted encoder from the run (an empty cache: it encodes every image anew)
    code, out, err = cli("eval", run, "--cache-dir", tmp_path / "eval-cache", "--json", "--quiet")
    assert code == 0, err
    assert json.loads(out)["metrics"] == fitted["metrics"]
    evaluated = pd.read_csv(run / "predictions.csv")

    monkeypatch.setenv("CPT_CACHE", str(tmp_path / "predict-cache"))
    code, out, err = cli("predict", run, colours / "test", "--top-k", "4", "--jsonl", "--quiet")
    assert code == 0, err
    records = {r["path"]: r for r in map(json.loads, out.splitlines())}
    for row in evaluated.itertuples():
        record = records[row.path]
        assert record["classes"][0] == row.prediction and abs(record["scores"][0] - row.score) < 1e-4

    paths = sorted(records)
    batch = torch.stack([eval_transform(Preprocess(resolution=32))(Image.open(p).convert("RGB")) for p in paths])
    expected = np.array([records[p]["logits"] for p in paths])
    for fmt in ("torchscript", "onnx"):
        code, _, err = cli("export", run, "--format", fmt, "--out", tmp_path / f"c.{fmt}", "--quiet")
        assert code == 0, err
    scripted = torch.jit.load(str(tmp_path / "c.torchscript"))
    np.testing.assert_allclose(scripted(batch)[0].detach().numpy(), expected, atol=1e-4)
    (onnx_logits,) = ort.InferenceSession(str(tmp_path / "c.onnx")).run(None, {"image": batch.numpy()})
    np.testing.assert_allclose(onnx_logits, expected, atol=1e-4)

    # the same heads on the frozen encoder's features give other logits: the prompts are in the export
    with torch.no_grad():
        frozen = F.normalize(load_backbone(str(tiny_clip)).model.encode_image(batch), dim=-1) @ scripted.weight0.T
    assert np.abs(frozen.numpy() - expected).max() > 1e-2


@pytest.mark.slow
def test_16_shot_maple_beats_zero_shot_on_the_toy_suite(tmp_path):
    zs = fit_json("--method", "zeroshot", "--tasks", "toy", "--backbone", "toy", "--out", tmp_path / "zs")
    tuned = fit_json("--method", "maple", "--tasks", "toy", "--backbone", "toy", "--shots", "16", "--out",
                     tmp_path / "maple")

    def accuracies(summary: dict) -> dict[str, float]:
        return {m["task"]: m["value"] for m in summary["metrics"] if m["metric"] == "accuracy" and m["task"] != "mean"}

    zero, learned = accuracies(zs), accuracies(tuned)
    gain = np.mean([learned[t] - zero[t] for t in zero])  # the published 5 epochs: 6.7 points here
    assert gain >= 5, (zero, learned)
