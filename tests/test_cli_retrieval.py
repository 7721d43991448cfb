"""Text-video retrieval end to end through the real CLI, on real toy-world video files: fit, eval,
predict with queries and captions, the saved index, the exported encoders, bad videos."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import av
import clip
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from cpt_datasets import toy_video

from cpt import run as R
from cpt.core.backbone import load_backbone
from cpt.data.video import FrameCache, FrameSampling, normalise
from tests.conftest import cli, fit_json, interrupt_after

SIZES = {"train": 48, "val": 8, "test": 24}


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """A small toy video world: a folder of mp4 files and captions.jsonl."""
    folder = tmp_path_factory.mktemp("video") / "toy-video"
    toy_video.build(folder, seed=3, n=SIZES)
    return folder


@pytest.fixture(scope="module")
def zeroshot(videos, tmp_path_factory) -> tuple[Path, dict]:
    run = tmp_path_factory.mktemp("runs") / "zs"
    return run, fit_json("--method", "zeroshot-video", "--tasks", f"vid={videos}", "--backbone", "toy", "--fps", "8",
                         "--out", run)


def _metric(summary: dict, name: str) -> float:
    return next(m["value"] for m in summary["metrics"] if m["metric"] == name)


def _test_pairs(run: Path) -> tuple[list[str], list[str], np.ndarray]:
    """(test videos, test captions, each caption's video) from the run's recorded splits."""
    rows = pd.read_csv(run / "retrieval_splits.csv", keep_default_na=False)
    rows = rows[rows.split == "test"]
    order = list(dict.fromkeys(rows.video))
    return order, rows.caption.tolist(), np.array([order.index(v) for v in rows.video])


def _zero_shot_similarity(run: Path, frames: int = 12) -> np.ndarray:
    """(videos, captions) cosine similarities computed here: frames decoded, 12 at segment centres,
    each through CLIP's image encoder, averaged after normalising; captions through its text encoder."""
    model = load_backbone("toy", "cpu").model
    order, captions, _ = _test_pairs(run)
    cache = FrameCache(None, FrameSampling(frames, 8.0, 32))
    pre = load_backbone("toy", "cpu").preprocess
    embeddings = []
    with torch.no_grad():
        for path in order:
            decoded = cache.frames(Path(path))
            n = len(decoded)
            picks = [int((2 * k + 1) * n / (2 * frames)) for k in range(frames)]  # segment centres
            pixels = normalise(torch.from_numpy(decoded[picks]).permute(0, 3, 1, 2), pre)
            feats = F.normalize(model.encode_image(pixels).float(), dim=-1)
            embeddings.append(F.normalize(feats.mean(0), dim=0))
        text = F.normalize(model.encode_text(clip.tokenize(captions, context_length=model.context_length)).float(), dim=-1)
    return (torch.stack(embeddings) @ text.T).numpy()


def test_zero_shot_run_writes_its_files_and_measures_both_directions(zeroshot):
    run, summary = zeroshot
    for name in ("metrics.csv", "per_query.csv", "report.md", "retrieval_splits.csv", "skipped.csv", "config.json"):
        assert (run / name).exists(), name
    metrics = pd.read_csv(run / "metrics.csv")
    names = set(metrics.metric)
    for direction in ("t2v", "v2t"):
        assert {f"{direction}_{m}" for m in ("R@1", "R@5", "R@10", "R@50", "MdR", "MnR", "RSum")} <= names
    # R@1 both ways against a similarity matrix computed independently; a tie counts against (two
    # videos may share a caption's words: their captions then score alike)
    sim = _zero_shot_similarity(run)
    _, captions, owner = _test_pairs(run)
    t2v = 100 * np.mean([sim[owner[c], c] > np.delete(sim[:, c], owner[c]).max() for c in range(len(captions))])
    v2t = 100 * np.mean([sim[v, owner == v].max() > sim[v, owner != v].max() for v in range(sim.shape[0])])
    assert _metric(summary, "t2v_R@1") == pytest.approx(t2v)
    assert _metric(summary, "v2t_R@1") == pytest.approx(v2t)
    assert _metric(summary, "n_captions") == len(captions) and _metric(summary, "n_videos") == SIZES["test"]
    # the report names the worst queries
    assert "worst" in (run / "report.md").read_text().lower()


def test_cpt_eval_reproduces_the_runs_metrics(zeroshot, tmp_path):
    run, summary = zeroshot
    code, _, err = cli("eval", run, "--out", tmp_path / "again", "--quiet")
    assert code == 0, err
    again = pd.read_csv(tmp_path / "again" / "metrics.csv")
    pd.testing.assert_frame_equal(again, pd.read_csv(run / "metrics.csv"))


def test_text_prompt_tuning_beats_zero_shot(videos, zeroshot, tmp_path):
    """Learning is tested by learning: a trained caption context retrieves better than none."""
    summary = fit_json("--method", "coop-video", "--tasks", f"vid={videos}", "--backbone", "toy", "--epochs", "15",
                       "--out", tmp_path / "coop")
    assert _metric(summary, "RSum") > _metric(zeroshot[1], "RSum") + 5



def test_tempme_learns_with_merged_frames_and_its_export_gives_the_runs_similarities(videos, zeroshot, tmp_path):
    """TempMe (LoRA + token merging: 12 frames of 17 tokens end as 49 tokens on the toy CLIP) trains
    past zero-shot, and its exported encoders, merging included, score as the run does."""
    run = tmp_path / "tempme"
    summary = fit_json("--method", "tempme", "--tasks", f"vid={videos}", "--backbone", "toy", "--fps", "8", "--epochs", "6",
                       "--optimizer", "adam", "--lr", "1e-3", "--weight-decay", "0", "--out", run)
    assert _metric(summary, "RSum") > _metric(zeroshot[1], "RSum") + 5
    code, _, err = cli("export", run, "--format", "torchscript", "--out", tmp_path / "ts", "--quiet")
    assert code == 0, err
    text, video = (torch.jit.load(str(tmp_path / "ts" / f"{n}.ts")) for n in ("text", "video"))
    config, backbone, method = R.load_run(run, "cpu")
    order, captions, _ = _test_pairs(run)
    cache = FrameCache(None, FrameSampling(12, 8.0, 32))
    clips = torch.stack([normalise(cache.clip(Path(p)), backbone.preprocess) for p in order])
    tokens = clip.tokenize(captions, context_length=backbone.model.context_length)
    with torch.no_grad():
        exported = (video(clips) @ text(tokens).T).numpy()
        own = (method.encode_video(clips) @ method.encode_text(tokens).T).numpy()
    np.testing.assert_allclose(exported, own, atol=1e-4)
    per_query = pd.read_csv(run / "per_query.csv")  # the run's own ranks come from the same similarities
    t2v = [int((own[:, c] >= own[v, c]).sum()) for c, v in enumerate(_test_pairs(run)[2])]  # ties count against
    assert per_query.t2v_rank.tolist() == t2v

def _rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def test_queries_rank_videos_as_the_run_scores_them_and_an_index_answers_the_same(zeroshot, tmp_path):
    run, _ = zeroshot
    order, captions, owner = _test_pairs(run)
    sim = _zero_shot_similarity(run)
    query = captions[0]
    code, out, err = cli("predict", run, *order, "--query", query, "--top-k", "5")
    assert code == 0, err
    rows = _rows(out)
    assert list(rows[0]) == ["query", "rank", "video", "score"] and len(rows) == 5
    expected = np.argsort(-sim[:, 0], kind="stable")[:5]
    assert [r["video"] for r in rows] == [order[i] for i in expected]
    assert float(rows[0]["score"]) == pytest.approx(float(sim[expected[0], 0]), abs=1e-5)
    index = tmp_path / "videos.index.pt"
    code, _, err = cli("index", run, *order, "--out", index, "--quiet")
    assert code == 0, err
    code, again, err = cli("predict", index, "--query", query, "--top-k", "5")
    assert code == 0 and again == out, err
    # video -> text: each video's best caption among a caption file
    file = tmp_path / "captions.txt"
    file.write_text("\n".join(captions[:6]) + "\n")
    code, out, err = cli("predict", index, "--captions", file, "--top-k", "1")
    assert code == 0, err
    rows = _rows(out)
    assert list(rows[0]) == ["video", "rank", "caption", "score"] and len(rows) == len(order)
    assert rows[0]["caption"] == captions[int(np.argmax(sim[0, :6]))]


def test_exported_encoders_give_the_runs_similarities(zeroshot, tmp_path):
    run, _ = zeroshot
    code, _, err = cli("export", run, "--format", "torchscript", "--out", tmp_path / "ts", "--quiet")
    assert code == 0, err
    meta = json.loads((tmp_path / "ts" / "cpt.json").read_text())
    assert meta["sampling"] == {"frames": 12, "fps": 8.0, "positions": "segment centres"}
    text, video = (torch.jit.load(str(tmp_path / "ts" / f"{n}.ts")) for n in ("text", "video"))
    order, captions, _ = _test_pairs(run)
    cache = FrameCache(None, FrameSampling(12, 8.0, 32))
    pre = load_backbone("toy", "cpu").preprocess
    clips = torch.stack([normalise(cache.clip(Path(p)), pre) for p in order])
    with torch.no_grad():
        sim = (video(clips) @ text(clip.tokenize(captions, context_length=meta["context_length"])).T).numpy()
    np.testing.assert_allclose(sim, _zero_shot_similarity(run), atol=1e-4)
    # ONNX: the same graphs through onnxruntime
    ort = pytest.importorskip("onnxruntime")
    code, _, err = cli("export", run, "--format", "onnx", "--out", tmp_path / "onnx", "--quiet")
    assert code == 0, err
    text_onnx, video_onnx = (ort.InferenceSession(str(tmp_path / "onnx" / f"{n}.onnx")) for n in ("text", "video"))
    tokens = clip.tokenize(captions, context_length=meta["context_length"]).numpy()
    sim_onnx = video_onnx.run(None, {"video": clips.numpy()})[0] @ text_onnx.run(None, {"text": tokens})[0].T
    np.testing.assert_allclose(sim_onnx, sim, atol=1e-4)


def _corrupt_and_empty(folder: Path) -> tuple[Path, Path]:
    corrupt = folder / "videos" / "corrupt.mp4"
    corrupt.write_bytes(b"\x00not a video" * 50)
    empty = folder / "videos" / "empty.avi"  # a video stream without a frame
    with av.open(str(empty), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
    return corrupt, empty


def test_unreadable_videos_are_skipped_and_listed(videos, tmp_path):
    rows = [json.loads(line) for line in (videos / "captions.jsonl").read_text().splitlines()]
    source = tmp_path / "vid.csv"
    folder = tmp_path / "bad"
    (folder / "videos").mkdir(parents=True)
    corrupt, empty = _corrupt_and_empty(folder)
    table = pd.DataFrame({"video": [str(videos / r["video"]) for r in rows], "caption": [r["caption"] for r in rows],
                          "split": [r["split"] for r in rows]})
    extra = pd.DataFrame({"video": [str(corrupt), str(empty)], "caption": ["noise", "nothing"], "split": "test"})
    pd.concat([table, extra]).to_csv(source, index=False)
    summary = fit_json("--method", "zeroshot-video", "--tasks", f"vid={source}", "--backbone", "toy",
                       "--out", tmp_path / "run")
    skipped = pd.read_csv(tmp_path / "run" / "skipped.csv")
    assert set(skipped.path) == {str(corrupt), str(empty)} and summary["skipped"] == 2
    assert _metric(summary, "n_videos") == SIZES["test"]


def test_retrieval_input_errors_exit_2_with_a_message(videos, tmp_path):
    code, _, err = cli("fit", "--method", "coop", "--tasks", f"vid={videos}", "--backbone", "toy", "--quiet")
    assert code == 2 and "retrieval" in err and "cpt methods" in err
    code, _, err = cli("fit", "--method", "coop-video", "--tasks", f"vid={tmp_path / 'nothing.csv'}", "--backbone",
                       "toy", "--quiet")
    assert code == 2 and "nothing.csv" in err
    code, _, err = cli("predict", tmp_path / "missing-run", "--query", "a red circle")
    assert code == 2
    for method in ("tempme", "clip4clip", "dgl"):  # a merge schedule that cannot group the frames: nothing written
        code, _, err = cli("fit", "--method", method, "--merge", "c3:30:10", "--tasks", f"vid={videos}", "--backbone",
                           "toy", "--frames", "8", "--out", tmp_path / method, "--quiet")
        assert code == 2 and "--frames 8 does not divide" in err and not (tmp_path / method).exists(), err


def test_retrieval_runs_compare_in_one_folder_and_sweep_says_what_to_do(videos, zeroshot, tmp_path):
    run, summary = zeroshot
    coop = tmp_path / "coop"
    fit_json("--method", "coop-video", "--tasks", f"vid={videos}", "--backbone", "toy", "--fps", "8", "--epochs", "2",
             "--out", coop)
    code, _, err = cli("eval", run, coop, "--out", tmp_path / "cmp", "--quiet")
    assert code == 0, err
    table = pd.read_csv(tmp_path / "cmp" / "comparison.csv")
    assert table.method.tolist() == ["zeroshot-video", "coop-video"] and set(table.metric) == {"RSum"}
    assert table.frames.tolist() == [12, 12] and table.value.iloc[0] == pytest.approx(_metric(summary, "RSum"))
    assert (tmp_path / "cmp" / "rsum_vs_frames.png").exists()
    code, _, err = cli("sweep", "--tasks", f"vid={videos}", "--backbone", "toy", "--methods", "coop-video", "--out",
                       tmp_path / "sweep", "--quiet")
    assert code == 2 and "cpt eval RUN1 RUN2" in err


def test_an_interrupted_retrieval_run_resumes_to_the_same_result(videos, tmp_path, monkeypatch):
    """Random-offset clips are drawn from (seed, video, view): a resumed run replays the rest exactly."""
    args = ["--method", "coop-video", "--tasks", f"vid={videos}", "--backbone", "toy", "--fps", "8", "--epochs", "3"]
    whole = fit_json(*args, "--out", tmp_path / "whole")
    interrupt_after(monkeypatch, 2)
    code, _, err = cli("fit", *args, "--out", tmp_path / "cut", "--quiet")
    assert code == 2 and "--resume" in err
    resumed = fit_json("--resume", tmp_path / "cut")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "cut" / "metrics.csv"),
                                  pd.read_csv(tmp_path / "whole" / "metrics.csv"))
    assert resumed["metrics"] == whole["metrics"]
