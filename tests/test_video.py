"""Video decoding, frame sampling and the frame cache on real files, and the toy video world."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torchvision.transforms as T
from cpt_datasets import toy_video as V
from cpt_datasets import toy_world as W

from cpt.core.backbone import Preprocess
from cpt.data import video
from cpt.data.images import Unreadable
from cpt.data.video import FrameCache, FrameSampling, check_video, decode, normalise, sample_indices, write_video


def _moving(n: int = 16) -> list[np.ndarray]:
    """n rendered toy frames, (32, 32, 3) uint8: a red square crossing a plain background."""
    scenes = [W.Scene((W.Object("square", "red", (6 + i, 16), 6),), "plain", 90) for i in range(n)]
    return V.render_clip(scenes, noise=3)


@pytest.fixture
def clip_file(tmp_path: Path) -> tuple[Path, np.ndarray]:
    frames = _moving()
    path = tmp_path / "moving.mp4"
    write_video(path, frames)
    return path, np.stack(frames)


def _zero_frames(path: Path) -> Path:
    """A container with a video stream and no frames (AVI keeps such a stream's header)."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width = stream.height = 32
        container.start_encoding()
    return path


def _corrupt(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(0).bytes(4000))
    return path


def test_decode_every_frame_matches_the_rendered_ones(clip_file):
    path, rendered = clip_file
    frames = decode(path, None, 32)
    assert frames.shape == (16, 32, 32, 3) and frames.dtype == np.uint8
    assert np.abs(frames.astype(int) - rendered).mean() < 6  # colours survive mpeg4 + yuv420p
    assert check_video(path) is None


def test_fps_cap_keeps_the_frames_nearest_the_grid(clip_file):
    path, _ = clip_file
    every = decode(path, None, 32)  # 8 fps: frame i at i/8 s
    np.testing.assert_array_equal(decode(path, 4, 32), every[::2])
    # grid k/3 s: nearest frames round(8k/3) = 0, 3, 5, 8, 11, 13 (2 s lies past the last frame)
    np.testing.assert_array_equal(decode(path, 3, 32), every[[0, 3, 5, 8, 11, 13]])
    np.testing.assert_array_equal(decode(path, 100, 32), every)  # a cap above the rate keeps all, once


def test_decode_resizes_and_centre_crops_like_clip(tmp_path):
    wide = [np.concatenate([f, f[:, :16]], axis=1) for f in _moving(4)]  # (32, 48, 3)
    path = tmp_path / "wide.mp4"
    write_video(path, wide)
    with av.open(str(path)) as container:
        raw = [f.to_image() for f in container.decode(video=0)]
    np.testing.assert_array_equal(decode(path, None, 32), np.stack([np.asarray(im)[:, 8:40] for im in raw]))
    clip_pre = T.Compose([T.Resize(16, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(16)])
    np.testing.assert_array_equal(decode(path, None, 16), np.stack([np.asarray(clip_pre(im)) for im in raw]))


def test_sample_indices_uniform_centres():
    assert sample_indices(10, 4).tolist() == [1, 3, 6, 8]  # segments of 2.5: centres 1.25, 3.75, 6.25, 8.75
    assert sample_indices(12, 3).tolist() == [2, 6, 10]
    assert sample_indices(3, 5).tolist() == [0, 0, 1, 2, 2]  # fewer frames than asked: repeats
    assert sample_indices(1, 4).tolist() == [0, 0, 0, 0]
    assert sample_indices(10, 4).dtype == torch.long
    with pytest.raises(ValueError):
        sample_indices(0, 4)


def test_sample_indices_random_offsets_stay_in_their_segments():
    for seed in range(20):
        idx = sample_indices(100, 8, torch.Generator().manual_seed(seed))
        k = torch.arange(8)
        assert ((k * 100 / 8).floor() <= idx).all() and (idx < ((k + 1) * 100 / 8).ceil()).all()
        assert (idx.diff() >= 0).all()
    draws = {tuple(sample_indices(100, 8, torch.Generator().manual_seed(s)).tolist()) for s in range(5)}
    assert len(draws) > 1
    same = [sample_indices(100, 8, torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(*same)
    short = sample_indices(3, 8, torch.Generator().manual_seed(0))
    assert short.min() >= 0 and short.max() <= 2 and (short.diff() >= 0).all()


def test_unusable_videos_are_reported_and_excluded(tmp_path, clip_file):
    good, _ = clip_file
    corrupt = _corrupt(tmp_path / "corrupt.mp4")
    empty = _zero_frames(tmp_path / "empty.avi")
    missing = tmp_path / "missing.mp4"
    assert check_video(corrupt).startswith("cannot decode video")
    assert check_video(empty) == "the video has no frames"
    assert check_video(missing) == "file not found"
    assert check_video(tmp_path) == "not a regular file (a folder)"
    with pytest.raises(Unreadable, match="no frames"):
        decode(empty, None, 32)
    cache = FrameCache(tmp_path / "cache", FrameSampling(frames=4, size=32))
    assert cache.readable([corrupt, good, empty, missing]).tolist() == [1]
    assert set(cache.stats.failed) == {str(corrupt), str(empty), str(missing)}
    assert cache.stats.failed[str(empty)] == "the video has no frames"
    with pytest.raises(Unreadable):
        cache.clip(corrupt)


def test_frame_cache_decodes_once_across_instances(tmp_path, clip_file, monkeypatch):
    path, _ = clip_file
    sampling = FrameSampling(frames=4, fps=None, size=32)
    first = FrameCache(tmp_path / "cache", sampling)
    frames = first.frames(path)
    assert (first.stats.decoded, first.stats.cached) == (1, 0)
    np.testing.assert_array_equal(frames, decode(path, None, 32))
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 1

    monkeypatch.setattr(video, "_decode", lambda *a: pytest.fail("decoded again"))
    second = FrameCache(tmp_path / "cache", FrameSampling(frames=7, fps=None, size=32))  # clip length: same entry
    np.testing.assert_array_equal(second.frames(path), frames)
    assert (second.stats.decoded, second.stats.cached) == (0, 1)

    clip = first.clip(path)
    assert clip.shape == (4, 3, 32, 32) and clip.dtype == torch.uint8
    assert torch.equal(clip, torch.from_numpy(frames[[2, 6, 10, 14]]).permute(0, 3, 1, 2))


def test_frame_cache_keys_on_fps_and_size(tmp_path, clip_file):
    path, _ = clip_file
    FrameCache(tmp_path, FrameSampling(size=32)).frames(path)
    capped = FrameCache(tmp_path, FrameSampling(fps=4, size=32))
    assert len(capped.frames(path)) == 8 and capped.stats.decoded == 1
    assert len(list(tmp_path.rglob("*.npy"))) == 2


@pytest.mark.parametrize("bad", [dict(frames=0), dict(fps=0.0), dict(fps=float("inf")), dict(size=0)])
def test_frame_sampling_rejects_impossible_settings(bad):
    with pytest.raises(ValueError):
        FrameSampling(**bad)


def test_normalise_matches_clip_normalisation():
    pre = Preprocess(resolution=8)
    clip = torch.randint(0, 256, (2, 5, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    expected = T.Normalize(pre.mean, pre.std)(T.ConvertImageDtype(torch.float32)(clip.view(-1, 3, 8, 8)))
    out = normalise(clip, pre)
    assert out.dtype == torch.float32 and out.shape == clip.shape
    torch.testing.assert_close(out.view(-1, 3, 8, 8), expected)


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("recipes")
    [(name, folder)] = V.materialize_toy_video(root, seed=0, n={"train": 10, "val": 2, "test": 2})
    assert name == "toy-video" and folder == root / "toy-video"
    return folder, [json.loads(line) for line in (folder / "captions.jsonl").read_text().splitlines()]


def test_toy_video_layout_and_captions(toy):
    folder, rows = toy
    assert all(set(row) == {"video", "caption", "split"} for row in rows)
    per_video: dict[str, list[dict]] = {}
    for row in rows:
        per_video.setdefault(row["video"], []).append(row)
    assert sorted(per_video) == [f"videos/{i:04d}.mp4" for i in range(14)]
    assert sorted(p.name for p in (folder / "videos").iterdir()) == [f"{i:04d}.mp4" for i in range(14)]
    assert all(2 <= len(r) <= 3 and len({x["split"] for x in r}) == 1 for r in per_video.values())
    splits = [per_video[f"videos/{i:04d}.mp4"][0]["split"] for i in range(14)]
    assert splits == ["train"] * 10 + ["val"] * 2 + ["test"] * 2
    assert all(len({x["caption"] for x in r}) == len(r) for r in per_video.values())
    text = " | ".join(row["caption"] for row in rows)
    for word in ("left", "right", "up", "down", "appear", "then"):
        assert word in text


def test_toy_video_twins_share_frame_means_not_captions(toy):
    folder, rows = toy
    captions: dict[str, set[str]] = {}
    for row in rows:
        captions.setdefault(row["video"], set()).add(row["caption"])
    cache = FrameCache(folder.parent / "frames", FrameSampling(size=W.SIZE))
    videos = [folder / f"videos/{i:04d}.mp4" for i in range(14)]
    assert cache.readable(videos).tolist() == list(range(14)) and not cache.stats.failed
    for a, b in zip(videos[::2], videos[1::2]):
        fa, fb = cache.frames(a).astype(float), cache.frames(b).astype(float)
        assert fa.shape == fb.shape == (V.LENGTH, W.SIZE, W.SIZE, 3)
        assert np.abs(fa.mean(0) - fb.mean(0)).mean() < 2.5  # mean pooling cannot tell twins apart
        assert np.abs(fa - fb[::-1]).mean() < 5  # each is the other played backwards
        assert np.abs(fa - fb).mean() > 2 * np.abs(fa.mean(0) - fb.mean(0)).mean()  # frame by frame, they differ
        assert not captions[f"videos/{a.name}"] & captions[f"videos/{b.name}"]


def test_toy_video_is_deterministic_and_checks_sizes(tmp_path, toy):
    folder, _ = toy
    V.build(tmp_path / "again", seed=0, n={"train": 10, "val": 2, "test": 2})
    assert (tmp_path / "again" / "captions.jsonl").read_text() == (folder / "captions.jsonl").read_text()
    with pytest.raises(ValueError, match="even"):
        V.build(tmp_path / "odd", n={"train": 3})
