"""Retrieval sources: CSV, captions.jsonl folders and MSR-VTT (tests/data/msrvtt: the real annotation
layout, no videos), their seeded video splits, skipped videos and the errors users can cause."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cpt.data.retrieval import (
    RetrievalTask,
    is_retrieval_source,
    load_csv,
    load_folder,
    load_msrvtt,
    load_retrieval,
    split_videos,
)
from cpt.errors import CptError

MSRVTT = Path(__file__).parent / "data" / "msrvtt"
TRAIN_9K = [f"video{i}" for i in range(6)]
TEST_1KA = ["video7", "video8", "video9"]


def touch(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"placeholder")


def write_csv(folder: Path, rows: list[str], header: str = "video,caption") -> Path:
    path = folder / "captions.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def pairs(task: RetrievalTask, split: str) -> set[tuple[str, str]]:
    """(video file name, caption) of every caption of a split."""
    videos = task.paths(split)
    return {(videos[v].name, c) for c, v in zip(task.captions(split), task.targets(split).tolist())}


def video_names(task: RetrievalTask, split: str) -> set[str]:
    return {p.name for p in task.paths(split)}


def many_videos(tmp_path: Path, n: int = 20) -> Path:
    """A CSV of n videos with two captions each, no split column."""
    touch(tmp_path / "videos", [f"v{i}.mp4" for i in range(n)])
    return write_csv(tmp_path, [f"videos/v{i}.mp4,clip {i} caption {k}" for i in range(n) for k in range(2)])


# --- CSV ---


def test_csv_with_split_column(tmp_path):
    touch(tmp_path / "videos", ["a.mp4", "b.mp4", "c.mp4"])
    absolute = (tmp_path / "videos" / "c.mp4").resolve()
    csv = write_csv(tmp_path, ["videos/a.mp4,a dog runs,train", "videos/a.mp4,a puppy plays,train",
                               "videos/b.mp4,a cat sleeps,TRAIN", f"{absolute},a car drives,test"],
                    "video,caption,split")
    task, skipped = load_csv(csv, "clips", seed=0)
    assert skipped == [] and task.title == "clips" and task.classnames == []
    assert pairs(task, "train") == {("a.mp4", "a dog runs"), ("a.mp4", "a puppy plays"), ("b.mp4", "a cat sleeps")}
    assert task.paths("train") == [(tmp_path / "videos" / n).resolve() for n in ("a.mp4", "b.mp4")]
    assert task.targets("train").tolist() == [0, 0, 1] and task.targets("train").dtype == np.int64
    assert pairs(task, "test") == {("c.mp4", "a car drives")}
    assert task.paths("val") == [] and task.captions("val") == [] and len(task.targets("val")) == 0


def test_csv_seeded_split_keeps_videos_whole(tmp_path):
    csv = many_videos(tmp_path)
    task, _ = load_csv(csv, "clips", seed=3)
    sizes = {s: len(task.paths(s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 14, "val": 2, "test": 4}  # defaults: val 0.1, test 0.2 of 20 videos
    assert all(len(task.captions(s)) == 2 * n for s, n in sizes.items())
    splits = [video_names(task, s) for s in ("train", "val", "test")]
    assert not (splits[0] & splits[1] or splits[0] & splits[2] or splits[1] & splits[2])
    for split in ("train", "val", "test"):  # both captions of a video in its split
        assert all(c.startswith(f"clip {Path(v).stem[1:]} ") for v, c in pairs(task, split))
    again, _ = load_csv(csv, "clips", seed=3)
    assert [video_names(again, s) for s in ("train", "val", "test")] == splits
    other, _ = load_csv(csv, "clips", seed=4, val_ratio=0.0, test_ratio=0.5)
    assert len(other.paths("val")) == 0 and len(other.paths("test")) == 10


def test_split_draw_ignores_listing_order():
    videos = [Path(f"/v/{i}.mp4") for i in range(30)]
    assert split_videos(videos, 1, 0.1, 0.2) == split_videos(videos[::-1], 1, 0.1, 0.2)
    assert split_videos(videos, 1, 0.1, 0.2) != split_videos(videos, 2, 0.1, 0.2)


def test_csv_missing_video_is_skipped_with_its_captions(tmp_path):
    touch(tmp_path / "videos", ["a.mp4", "c.mp4"])
    csv = write_csv(tmp_path, ["videos/a.mp4,one,train", "videos/gone.mp4,two,train", "videos/gone.mp4,three,train",
                               "videos/c.mp4,four,test"], "video,caption,split")
    task, skipped = load_csv(csv, "clips", seed=0)
    assert [(s.task, Path(s.path).name, s.reason) for s in skipped] == [("clips", "gone.mp4", "file not found")]
    assert task.captions("train") == ["one"]


@pytest.mark.parametrize("rows, header, message", [
    (["videos/a.mp4,a dog"], "video,text", "no caption column"),
    (["videos/a.mp4,   ,train", "videos/b.mp4,x,test"], "video,caption,split", "row 2 has an empty caption"),
    (["videos/a.mp4,x,training", "videos/b.mp4,y,test"], "video,caption,split", "split 'training'"),
    (["videos/a.mp4,x,train", "videos/b.mp4,y,"], "video,caption,split", "but not for row 3"),
    (["videos/a.mp4,x,train", "videos/a.mp4,y,test"], "video,caption,split",
     r"in train \(row 2\) and in test \(row 3\)"),
    (["videos/a.mp4,x,train", "videos/b.mp4,y,train"], "video,caption,split", "has no test video"),
    (["videos/a.mp4,x,test", "videos/b.mp4,y,test"], "video,caption,split", "has no train video"),
    (["videos/a.mp4,x,train", "videos/missing.mp4,y,test"], "video,caption,split", "not files, e.g."),
    ([",x,train"], "video,caption,split", "row 2 has no video"),
    ([], "video,caption", "lists no caption"),
])
def test_csv_errors(tmp_path, rows, header, message):
    touch(tmp_path / "videos", ["a.mp4", "b.mp4"])
    with pytest.raises(CptError, match=message):
        load_csv(write_csv(tmp_path, rows, header), "clips", seed=0)


def test_csv_too_few_videos_for_the_ratios(tmp_path):
    touch(tmp_path / "videos", ["a.mp4", "b.mp4"])
    csv = write_csv(tmp_path, ["videos/a.mp4,x", "videos/b.mp4,y"])
    with pytest.raises(CptError, match="no train video.*--test-ratio"):
        load_csv(csv, "clips", seed=0, val_ratio=0.5, test_ratio=0.5)


def test_missing_csv(tmp_path):
    with pytest.raises(CptError, match="could not be read"):
        load_csv(tmp_path / "nope.csv", "clips", seed=0)


# --- captions.jsonl ---


def test_folder_both_line_forms(tmp_path):
    touch(tmp_path / "videos", ["a.mp4", "b.mp4", "c.mp4"])
    lines = [{"video": "videos/a.mp4", "caption": "a dog runs", "split": "train"},
             {"video": "videos/b.mp4", "captions": ["a cat", "a sleeping cat"], "split": "train"},
             {"video": "videos/c.mp4", "captions": ["a car"], "split": "test"}]
    (tmp_path / "captions.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\n\n")
    task, skipped = load_folder(tmp_path, "clips", seed=0)
    assert skipped == []
    assert pairs(task, "train") == {("a.mp4", "a dog runs"), ("b.mp4", "a cat"), ("b.mp4", "a sleeping cat")}
    assert task.targets("train").tolist() == [0, 1, 1]
    assert pairs(task, "test") == {("c.mp4", "a car")}


def test_folder_without_splits_is_split_by_seed(tmp_path):
    touch(tmp_path / "videos", [f"v{i}.mp4" for i in range(10)])
    lines = [{"video": f"videos/v{i}.mp4", "captions": [f"clip {i}", f"clip {i} again"]} for i in range(10)]
    (tmp_path / "captions.jsonl").write_text("\n".join(map(json.dumps, lines)))
    task, _ = load_folder(tmp_path, "clips", seed=0)
    assert [len(task.paths(s)) for s in ("train", "val", "test")] == [7, 1, 2]


@pytest.mark.parametrize("line, message", [
    ("{not json", "line 1 is not valid JSON"),
    (json.dumps({"video": "videos/a.mp4"}), "line 1 is not an object with a \"video\""),
    (json.dumps({"video": "videos/a.mp4", "captions": []}), "non-empty \"captions\" list"),
    (json.dumps(["videos/a.mp4", "x"]), "line 1 is not an object"),
    (json.dumps({"video": "videos/a.mp4", "caption": ""}), "line 1 has an empty caption"),
])
def test_folder_errors(tmp_path, line, message):
    touch(tmp_path / "videos", ["a.mp4"])
    (tmp_path / "captions.jsonl").write_text(line + "\n")
    with pytest.raises(CptError, match=message):
        load_folder(tmp_path, "clips", seed=0)


# --- MSR-VTT ---


@pytest.fixture
def msrvtt(tmp_path) -> Path:
    """A copy of the fixture's annotations with a placeholder file for each of its ten videos."""
    root = tmp_path / "msrvtt"
    shutil.copytree(MSRVTT, root)
    touch(root / "videos", [f"video{i}.mp4" for i in range(10)])
    return root


def test_msrvtt_protocol(msrvtt):
    task, skipped = load_msrvtt(msrvtt, "msrvtt", seed=0, val_ratio=0.2)
    assert skipped == []
    train, val, test = (video_names(task, s) for s in ("train", "val", "test"))
    assert len(val) == 1 and len(train) == 5 and train | val == {f"{v}.mp4" for v in TRAIN_9K}
    assert test == {f"{v}.mp4" for v in TEST_1KA}  # video6 (test in the json, not in 1k-A) is in no split
    assert len(task.captions("train")) == 10 and len(task.captions("val")) == 2  # every json caption
    assert pairs(task, "test") == {("video7.mp4", "a man is slicing onions in a kitchen"),
                                   ("video8.mp4", "a cartoon cat chases a mouse around a house"),
                                   ("video9.mp4", "two people play tennis on a clay court")}  # one JSFUSION caption
    assert ("video0.mp4", "a red car speeds along the road") in pairs(task, "train") | pairs(task, "val")


def test_msrvtt_default_val_ratio(msrvtt):
    task, _ = load_retrieval(msrvtt, "msrvtt", seed=0, test_ratio=0.5)  # MSR-VTT's test split is fixed
    assert task.paths("val") == [] and len(task.paths("train")) == 6  # 0.05 of 6 videos rounds to none
    assert len(task.paths("test")) == 3
    task, _ = load_retrieval(msrvtt, "msrvtt", seed=0, val_ratio=0.1)
    assert len(task.paths("val")) == 1


@pytest.mark.parametrize("folder", ["MSRVTT_Videos", "videos/all"])
def test_msrvtt_other_video_folders(msrvtt, folder):
    shutil.rmtree(msrvtt / "videos")
    touch(msrvtt / folder, [f"video{i}.mp4" for i in range(10)])
    task, skipped = load_msrvtt(msrvtt, "msrvtt", seed=0)
    assert skipped == [] and task.paths("test")[0].parent == (msrvtt / folder).resolve()


def test_msrvtt_missing_videos_are_skipped(msrvtt):
    for name in ("video1.mp4", "video8.mp4"):
        (msrvtt / "videos" / name).unlink()
    task, skipped = load_msrvtt(msrvtt, "msrvtt", seed=0)
    assert sorted(Path(s.path).name for s in skipped) == ["video1.mp4", "video8.mp4"]
    assert "video1.mp4" not in video_names(task, "train") | video_names(task, "val")
    assert len(task.captions("train")) + len(task.captions("val")) == 10
    assert video_names(task, "test") == {"video7.mp4", "video9.mp4"}


def test_msrvtt_without_videos(tmp_path):
    root = tmp_path / "msrvtt"
    shutil.copytree(MSRVTT, root)
    with pytest.raises(CptError, match="has no video folder"):
        load_msrvtt(root, "msrvtt", seed=0)
    (root / "videos").mkdir()
    with pytest.raises(CptError, match="has no train video .*9 listed videos are not files"):
        load_msrvtt(root, "msrvtt", seed=0)


@pytest.mark.parametrize("file, what", [
    ("MSRVTT_data.json", "20 captions"),
    ("MSRVTT_train.9k.csv", "9,000 training videos"),
    ("MSRVTT_JSFUSION_test.csv", "1k-A test split"),
])
def test_msrvtt_missing_annotation_file(msrvtt, file, what):
    (msrvtt / file).unlink()
    with pytest.raises(CptError, match=f"has no {file} \\(.*{what}.*msrvtt_data.zip"):
        load_retrieval(msrvtt, "msrvtt", seed=0)


@pytest.mark.parametrize("file, text, message", [
    ("MSRVTT_train.9k.csv", "id\nvideo0\n", "has no video_id column"),
    ("MSRVTT_JSFUSION_test.csv", "key,vid_key,video_id\nret0,msr7,video7\n", "has no sentence column"),
    ("MSRVTT_JSFUSION_test.csv", "key,vid_key,video_id,sentence\nret0,msr7,video7,\n", "row 2 has an empty"),
    ("MSRVTT_JSFUSION_test.csv", "key,vid_key,video_id,sentence\nret0,msr0,video0,a car\n", "share 1 videos"),
    ("MSRVTT_train.9k.csv", "video_id\nvideo0\nvideo42\n", "no caption for 1 of the training videos"),
    ("MSRVTT_data.json", json.dumps({"videos": []}), "no \"sentences\" list"),
    ("MSRVTT_data.json", json.dumps({"sentences": [{"video_id": "video0"}]}), "sentence 0 is not an object"),
    ("MSRVTT_data.json", "{", "is not valid JSON"),
])
def test_msrvtt_bad_annotations(msrvtt, file, text, message):
    (msrvtt / file).write_text(text)
    with pytest.raises(CptError, match=message):
        load_msrvtt(msrvtt, "msrvtt", seed=0)


# --- detection ---


def test_detection(tmp_path, msrvtt):
    folder = tmp_path / "clips"
    folder.mkdir()
    (folder / "captions.jsonl").write_text("{}\n")
    retrieval_csv = write_csv(tmp_path, ["a.mp4,x"])
    classes_csv = tmp_path / "labels.csv"
    classes_csv.write_text("path,label\na.jpg,cat\n")
    binary_csv = tmp_path / "binary.csv"
    binary_csv.write_bytes(b"\xff\xfe\x00\x01")
    assert is_retrieval_source(msrvtt) and is_retrieval_source(str(folder)) and is_retrieval_source(retrieval_csv)
    (msrvtt / "MSRVTT_data.json").unlink()
    assert is_retrieval_source(msrvtt)  # still MSR-VTT, so loading names the missing file
    assert not is_retrieval_source(classes_csv)
    assert not is_retrieval_source(binary_csv)
    assert not is_retrieval_source(tmp_path / "nope")
    assert not is_retrieval_source(tmp_path / "videos")


def test_load_retrieval_dispatch_and_errors(tmp_path, msrvtt):
    assert load_retrieval(str(msrvtt), "m", seed=0)[0].source == str(msrvtt)
    with pytest.raises(CptError, match="does not exist"):
        load_retrieval(tmp_path / "nope", "x", seed=0)
    (tmp_path / "images").mkdir()
    with pytest.raises(CptError, match="is not a retrieval source.*captions.jsonl"):
        load_retrieval(tmp_path / "images", "x", seed=0)
    classes_csv = tmp_path / "labels.csv"
    classes_csv.write_text("path,label\na.jpg,cat\n")
    with pytest.raises(CptError, match="no video and no caption column"):
        load_retrieval(classes_csv, "x", seed=0)


def test_source_is_the_path_given(tmp_path):
    touch(tmp_path / "videos", ["a.mp4", "b.mp4"])
    (tmp_path / "captions.jsonl").write_text('{"video": "videos/a.mp4", "caption": "x", "split": "train"}\n'
                                             '{"video": "videos/b.mp4", "caption": "y", "split": "test"}\n')
    task, _ = load_retrieval(str(tmp_path), "clips", seed=0)
    assert task.source == str(tmp_path) and task.title == "clips"
