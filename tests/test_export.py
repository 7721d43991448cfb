"""`cpt export` in every format and `cpt predict`: the same logits as `cpt eval`, within 1e-4."""

from __future__ import annotations

import json
import shutil

import clip
import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from PIL import Image

from cpt.core.backbone import Preprocess
from cpt.data.features import eval_transform
from tests.conftest import cli, fit_json

TOL = 1e-4


@pytest.fixture(scope="module")
def run(tiny_clip, colours, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "run"
    fit_json("--method", "coop", "--tasks", f"colours={colours}", "--backbone", tiny_clip, "--shots", "4",
             "--epochs", "3", "--n-ctx", "4", "--lr", "0.05", "--out", out)
    return out


def predict_jsonl(*args) -> list[dict]:
    code, out, err = cli("predict", *args, "--jsonl", "--quiet")
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()]


def test_every_format_gives_the_logits_of_eval(run, colours, tmp_path):
    test_images = sorted((colours / "test").rglob("*.png"))
    from_run = {r["path"]: r for r in predict_jsonl(run, colours / "test", "--top-k", "4")}
    assert len(from_run) == len(test_images)

    # eval's own predictions agree with predict on the run
    evaluated = pd.read_csv(run / "predictions.csv")
    for row in evaluated.itertuples():
        record = from_run[row.path]
        assert record["classes"][0] == row.prediction and abs(record["scores"][0] - row.score) < TOL

    for fmt, name in (("pt", "c.pt"), ("torchscript", "c.ts"), ("onnx", "c.onnx"), ("npz", "c.npz"), ("csv", "c.csv")):
        code, out, err = cli("export", run, "--format", fmt, "--out", tmp_path / name, "--json", "--quiet")
        assert code == 0, err
        assert json.loads(out)["out"] == str(tmp_path / name)

    exported = {r["path"]: r for r in predict_jsonl(tmp_path / "c.pt", colours / "test", "--top-k", "4")}
    for path, record in from_run.items():
        np.testing.assert_allclose(exported[path]["logits"], record["logits"], atol=TOL)

    # the TorchScript and ONNX graphs take preprocessed tensors, as their metadata says
    files = {"cpt.json": ""}
    scripted = torch.jit.load(str(tmp_path / "c.ts"), _extra_files=files)
    meta = json.loads(files["cpt.json"])
    transform = eval_transform(Preprocess(**{**meta["preprocess"], "mean": tuple(meta["preprocess"]["mean"]),
                                             "std": tuple(meta["preprocess"]["std"])}))
    batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in test_images])
    expected = np.array([from_run[str(p)]["logits"] for p in test_images])
    np.testing.assert_allclose(scripted(batch)[0].detach().numpy(), expected, atol=TOL)
    session = ort.InferenceSession(str(tmp_path / "c.onnx"))
    (onnx_logits,) = session.run(None, {"image": batch.numpy()})
    np.testing.assert_allclose(onnx_logits, expected, atol=TOL)
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "c.onnx")).metadata_props}
    assert json.loads(props["cpt"])["classnames"]["colours"] == ["blue", "green", "red", "yellow ochre"]
    assert session.get_outputs()[0].name == "logits_colours"

    # the raw embeddings are the .pt's weight matrix
    weight = torch.load(tmp_path / "c.pt", weights_only=True)["tasks"][0]["weight"].numpy()
    np.testing.assert_allclose(np.load(tmp_path / "c.npz")["colours/weight"], weight)
    table = pd.read_csv(tmp_path / "c.csv")
    assert table["class"].tolist() == ["blue", "green", "red", "yellow ochre"]
    np.testing.assert_allclose(table.filter(like="e").to_numpy(), weight, atol=1e-6)


def test_predict_skips_a_corrupt_file_and_streams_csv(run, colours, tmp_path):
    folder = tmp_path / "photos"
    shutil.copytree(colours / "test" / "red", folder / "red")
    (folder / "broken.png").write_bytes(b"not an image at all")
    code, out, err = cli("predict", run, folder, "--top-k", "2")
    assert code == 0, err
    assert "broken.png" in err
    table = pd.read_csv(pd.io.common.StringIO(out))
    assert list(table.columns) == ["path", "task", "rank", "class", "score"]
    assert table.path.nunique() == 6 and len(table) == 12 and set(table["rank"]) == {1, 2}
    assert (table.groupby("path")["score"].apply(lambda s: s.is_monotonic_decreasing)).all()


def test_zero_shot_export_holds_clips_text_embeddings_and_matches_zero_shot_eval(tiny_clip, colours, tmp_path):
    classes = tmp_path / "colours.txt"
    classes.write_text("blue\ngreen\nred\nyellow_ochre\n")
    code, _, err = cli("export", "--backbone", tiny_clip, "--classes", classes, "--out", tmp_path / "zs.pt", "--quiet")
    assert code == 0, err

    # the class embeddings are CLIP's own normalised text features of "a photo of a {}."
    exported = torch.load(tmp_path / "zs.pt", weights_only=True)["tasks"][0]
    assert exported["classnames"] == ["blue", "green", "red", "yellow ochre"]
    model, _ = clip.load(str(tiny_clip), device="cpu", jit=False)
    with torch.no_grad():
        text = model.encode_text(clip.tokenize([f"a photo of a {c}." for c in exported["classnames"]])).float()
    torch.testing.assert_close(exported["weight"].float(), text / text.norm(dim=-1, keepdim=True), rtol=0, atol=1e-5)
    assert exported["scale"] == pytest.approx(model.logit_scale.exp().item())

    fit_json("--method", "zeroshot", "--tasks", f"colours={colours}", "--backbone", tiny_clip, "--out", tmp_path / "r")
    evaluated = pd.read_csv(tmp_path / "r" / "predictions.csv").set_index("path")
    for record in predict_jsonl(tmp_path / "zs.pt", colours / "test"):
        assert record["classes"][0] == evaluated.loc[record["path"], "prediction"]


def test_export_and_predict_bad_input(run, tmp_path):
    code, _, err = cli("export", run, "--format", "gif", "--out", tmp_path / "x")
    assert code == 2 and "--format" in err
    code, _, err = cli("export")
    assert code == 2 and "--backbone" in err
    code, _, err = cli("predict", run, tmp_path / "missing.png")
    assert code == 2 and "does not exist" in err
    code, _, err = cli("predict", run, tmp_path, "--task", "nope")
    assert code == 2
