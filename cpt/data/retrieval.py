"""Text-video retrieval tasks: videos with captions, from a CSV, a captions.jsonl folder or MSR-VTT.

A split holds its distinct videos and every caption of them; `caption_video` ties each caption
to its video. Splits are drawn over videos, never captions, so no video's captions are seen in
training and tested at once. A listed video that is not a file is left out with its captions and
reported as `Skipped`; everything else wrong with a source is a `CptError` raised while loading.
MSR-VTT follows the literature's 1k-A protocol (CLIP4Clip's annotation files), except that the
validation videos are held out of the 9k training videos instead of reusing the test split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from cpt.data.files import read_csv_file, read_json_file, read_text_file
from cpt.data.images import file_problem
from cpt.data.tasks import Skipped
from cpt.errors import CptError

SPLITS = ("train", "val", "test")
VAL_RATIO, TEST_RATIO, MSRVTT_VAL_RATIO = 0.1, 0.2, 0.05
CAPTIONS_FILE = "captions.jsonl"
MSRVTT_DATA, MSRVTT_TRAIN, MSRVTT_TEST = "MSRVTT_data.json", "MSRVTT_train.9k.csv", "MSRVTT_JSFUSION_test.csv"
MSRVTT_VIDEO_DIRS = ("videos/all", "videos", "MSRVTT_Videos")  # the first that exists holds them
CLIP4CLIP_ZIP = "CLIP4Clip's msrvtt_data.zip (github.com/ArrowLuo/CLIP4Clip, 'Data Preparation')"
MSRVTT_FILES = {  # file -> what it holds, for the message when it is missing
    MSRVTT_DATA: "every MSR-VTT video and its 20 captions, the training captions",
    MSRVTT_TRAIN: "the 9,000 training videos of the 1k-A protocol, one video_id a row",
    MSRVTT_TEST: "the 1k-A test split: 1,000 videos with one caption each, columns key,vid_key,video_id,sentence",
}
CSV_FIX = ("A retrieval CSV is UTF-8 text with a header row video,caption[,split] and one row per caption (several "
           "rows per video for several captions), video paths relative to the CSV's folder.")
JSONL_FIX = (f"{CAPTIONS_FILE} holds one JSON object per line: {{\"video\": \"videos/a.mp4\", \"caption\": \"...\"}} "
             "or {\"video\": ..., \"captions\": [...]}, optionally with \"split\": train, val or test; video paths "
             "relative to its folder.")


@dataclass
class RetrievalSplit:
    videos: list[Path]  # the split's distinct videos, in first-listed order
    captions: list[str]  # every caption of the split
    caption_video: np.ndarray  # (n_captions,) int64: index into `videos` of each caption's video


@dataclass
class RetrievalTask:
    name: str
    source: str  # the path the user gave
    splits: dict[str, RetrievalSplit]  # "train", "val", "test" (val may be empty)
    title: str = ""  # natural-language name; empty: the task name

    def __post_init__(self) -> None:
        self.title = self.title or self.name

    @property
    def classnames(self) -> list[str]:
        """No classes: retrieval has none (the pipeline's Task protocol asks for the attribute)."""
        return []

    def paths(self, split: str) -> list[Path]:
        """The split's videos."""
        return list(self.splits[split].videos)

    def targets(self, split: str) -> np.ndarray:
        """The (n_captions,) index of each caption's video in `paths(split)`."""
        return self.splits[split].caption_video

    def captions(self, split: str) -> list[str]:
        """The split's captions, in the order of `targets(split)`."""
        return list(self.splits[split].captions)


class Pair(NamedTuple):
    """One caption of one video as a source lists it."""

    video: Path  # absolute
    caption: str
    split: str  # "" when the source does not say
    where: str  # e.g. "row 3" or "line 7", for messages


def make_split(pairs: list[tuple[Path, str]]) -> RetrievalSplit:
    """A split from (video, caption) pairs: videos in first-listed order, captions in the given order."""
    videos = list(dict.fromkeys(video for video, _ in pairs))
    index = {video: i for i, video in enumerate(videos)}
    owners = np.array([index[video] for video, _ in pairs], dtype=np.int64)
    return RetrievalSplit(videos, [caption for _, caption in pairs], owners)


def split_videos(videos: list[Path], seed: int, val_ratio: float, test_ratio: float) -> dict[Path, str]:
    """Each video's split under `seed`: round(test_ratio * n) test videos (at least one when test_ratio > 0),
    round(val_ratio * n) validation videos, the rest training. The draw depends only on the set of
    videos, not on the order a source lists them."""
    ordered = sorted(set(videos), key=str)
    n_test = max(1, round(test_ratio * len(ordered))) if test_ratio > 0 else 0
    n_held = n_test + round(val_ratio * len(ordered))
    order = np.random.default_rng([seed, 23]).permutation(len(ordered))
    return {ordered[i]: "test" if k < n_test else "val" if k < n_held else "train" for k, i in enumerate(order)}


def _resolve(base: Path, video: str) -> Path:
    return (base / video).resolve()


def _check_pairs(name: str, file: Path, pairs: list[Pair]) -> None:
    """Refuse empty captions, unknown split names, a split given for some entries only, and a video
    given two splits (its captions would be tested on a video seen in training)."""
    if not pairs:
        raise CptError(f"Retrieval task {name!r}: {file} lists no caption. Add one entry per caption.")
    for pair in pairs:
        if not pair.caption.strip():
            raise CptError(f"Retrieval task {name!r}: {file} {pair.where} has an empty caption (video "
                           f"{pair.video}). Write the caption, or delete the entry.")
        if pair.split not in ("", *SPLITS):
            raise CptError(f"Retrieval task {name!r}: {file} {pair.where} has split {pair.split!r}; a split may "
                           "only be train, val or test. Fix the entry.")
    given = [pair for pair in pairs if pair.split]
    if given and len(given) < len(pairs):
        bare = next(pair for pair in pairs if not pair.split)
        raise CptError(f"Retrieval task {name!r}: {file} gives a split for some entries but not for {bare.where}. "
                       "Give every entry a split (train, val or test), or none, to let cpt split the videos "
                       "under --seed.")
    first: dict[Path, Pair] = {}
    for pair in given:
        other = first.setdefault(pair.video, pair)
        if other.split != pair.split:
            raise CptError(f"Retrieval task {name!r}: {file} puts the video {pair.video} in {other.split} "
                           f"({other.where}) and in {pair.split} ({pair.where}). Give all captions of a video one "
                           "split, so that no test video is seen in training.")


def _assemble(name: str, source: str, pairs: list[tuple[Path, str, str]], origin: str,
              fix: str) -> tuple[RetrievalTask, list[Skipped]]:
    """The task of (video, caption, split) triples, videos that are not files left out (as Skipped) with
    their captions; a split without a video is refused (`origin` names the files, `fix` says what to do)."""
    problems = {video: file_problem(video) for video in dict.fromkeys(video for video, _, _ in pairs)}
    skipped = [Skipped(name, str(video), reason) for video, reason in problems.items() if reason]
    splits = {split: make_split([(v, c) for v, c, s in pairs if s == split and not problems[v]]) for split in SPLITS}
    for split in ("train", "test"):
        if not splits[split].videos:
            missing = f" ({len(skipped)} listed videos are not files, e.g. {skipped[0].path})" if skipped else ""
            raise CptError(f"Retrieval task {name!r} has no {split} video{missing} ({origin}). {fix}")
    return RetrievalTask(name, source, splits), skipped


def _from_listed(name: str, source: str | Path, file: Path, pairs: list[Pair], seed: int, val_ratio: float | None,
                 test_ratio: float | None) -> tuple[RetrievalTask, list[Skipped]]:
    """The task of a CSV's or captions.jsonl's `pairs`: the listed splits, or a seeded split of the videos."""
    _check_pairs(name, file, pairs)
    drawn = {} if pairs[0].split else split_videos(
        [pair.video for pair in pairs], seed,
        VAL_RATIO if val_ratio is None else val_ratio, TEST_RATIO if test_ratio is None else test_ratio)
    triples = [(pair.video, pair.caption, pair.split or drawn[pair.video]) for pair in pairs]
    fix = ("Check the video paths (relative to the file's folder), give the split more videos, or, without a "
           "split column, lower --val-ratio / --test-ratio.")
    return _assemble(name, str(source), triples, str(file), fix)


def load_csv(path: str | Path, name: str, seed: int, val_ratio: float | None = None,
             test_ratio: float | None = None) -> tuple[RetrievalTask, list[Skipped]]:
    """A CSV of `video,caption[,split]` rows, one per caption, videos relative to its folder (or absolute);
    without a split column the videos are split under `seed` (val_ratio 0.1, test_ratio 0.2 by default)."""
    file = Path(path)
    frame = read_csv_file(file, f"Retrieval task {name!r}: the CSV", CSV_FIX, dtype=str, keep_default_na=False)
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    missing = [c for c in ("video", "caption") if c not in frame.columns]
    if missing:
        raise CptError(f"Retrieval task {name!r}: {file} has columns {', '.join(frame.columns) or '(none)'} but no "
                       f"{' and no '.join(missing)} column. {CSV_FIX} Rename the header row.")
    splits = frame["split"].str.strip().str.lower() if "split" in frame.columns else pd.Series("", index=frame.index)
    base = file.resolve().parent
    pairs = []
    for i, (video, caption, split) in enumerate(zip(frame["video"].str.strip(), frame["caption"], splits)):
        if not video:
            raise CptError(f"Retrieval task {name!r}: {file} row {i + 2} has no video. Fill it in or delete the row.")
        pairs.append(Pair(_resolve(base, video), caption.strip(), split, f"row {i + 2}"))
    return _from_listed(name, path, file, pairs, seed, val_ratio, test_ratio)


def _jsonl_pairs(name: str, file: Path) -> list[Pair]:
    """The captions of a captions.jsonl, one Pair per caption."""
    base = file.resolve().parent
    pairs = []
    text = read_text_file(file, f"Retrieval task {name!r}: the file", JSONL_FIX)
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CptError(f"Retrieval task {name!r}: {file} line {number} is not valid JSON ({exc}). "
                           f"{JSONL_FIX}") from None
        captions = entry.get("captions", [entry.get("caption")]) if isinstance(entry, dict) else None
        split = entry.get("split", "") if isinstance(entry, dict) else ""
        if (not isinstance(entry, dict) or not isinstance(entry.get("video"), str) or not entry["video"].strip()
                or not isinstance(captions, list) or not captions or not isinstance(split, str)
                or not all(isinstance(c, str) for c in captions)):
            raise CptError(f"Retrieval task {name!r}: {file} line {number} is not an object with a \"video\" path "
                           f"and a \"caption\" text (or a non-empty \"captions\" list of texts). {JSONL_FIX}")
        video = _resolve(base, entry["video"].strip())
        pairs += [Pair(video, caption.strip(), split.strip().lower(), f"line {number}") for caption in captions]
    return pairs


def load_folder(folder: str | Path, name: str, seed: int, val_ratio: float | None = None,
                test_ratio: float | None = None) -> tuple[RetrievalTask, list[Skipped]]:
    """A folder with captions.jsonl (one video with a caption or a list of captions a line, videos relative
    to the folder); without splits the videos are split under `seed` as by `load_csv`."""
    file = Path(folder) / CAPTIONS_FILE
    return _from_listed(name, folder, file, _jsonl_pairs(name, file), seed, val_ratio, test_ratio)


def _msrvtt_file(root: Path, file: str) -> Path:
    """`root/file`, or the error saying what it holds and where it comes from."""
    path = root / file
    if not path.is_file():
        raise CptError(f"MSR-VTT folder {root} has no {file} ({MSRVTT_FILES[file]}). It comes in "
                       f"{CLIP4CLIP_ZIP}; put it in {root}, beside the videos folder.")
    return path


def _msrvtt_captions(root: Path) -> dict[str, list[str]]:
    """Every caption of MSRVTT_data.json, by video_id, in file order."""
    file = _msrvtt_file(root, MSRVTT_DATA)
    fix = (f"It should be MSR-VTT's {MSRVTT_DATA}: an object whose \"sentences\" list holds {{\"video_id\", "
           f"\"caption\", \"sen_id\"}} objects; get it again from {CLIP4CLIP_ZIP}.")
    data = read_json_file(file, "The MSR-VTT annotation file", fix)
    sentences = data.get("sentences") if isinstance(data, dict) else None
    if not isinstance(sentences, list):
        raise CptError(f"The MSR-VTT annotation file {file} has no \"sentences\" list. {fix}")
    captions: dict[str, list[str]] = {}
    for i, sentence in enumerate(sentences):
        if not (isinstance(sentence, dict) and isinstance(sentence.get("video_id"), str)
                and isinstance(sentence.get("caption"), str) and sentence["caption"].strip()):
            raise CptError(f"The MSR-VTT annotation file {file}: sentence {i} is not an object with a video_id "
                           f"and a non-empty caption. {fix}")
        captions.setdefault(sentence["video_id"].strip(), []).append(sentence["caption"].strip())
    return captions


def _msrvtt_table(root: Path, file: str, columns: tuple[str, ...]) -> pd.DataFrame:
    """One of MSR-VTT's CSV files, its `columns` checked and stripped."""
    path = _msrvtt_file(root, file)
    fix = f"It should hold {MSRVTT_FILES[file]}; get it again from {CLIP4CLIP_ZIP}."
    frame = read_csv_file(path, "The MSR-VTT annotation file", fix, dtype=str, keep_default_na=False)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise CptError(f"The MSR-VTT annotation file {path} has no {', '.join(missing)} column (its columns: "
                       f"{', '.join(map(str, frame.columns))}). {fix}")
    frame = frame[list(columns)].apply(lambda col: col.str.strip())
    empty = frame[(frame == "").any(axis=1)]
    if len(empty):
        raise CptError(f"The MSR-VTT annotation file {path} row {empty.index[0] + 2} has an empty "
                       f"{' or '.join(columns)}. {fix}")
    return frame


def _msrvtt_videos(root: Path) -> Path:
    """The folder of MSR-VTT's <video_id>.mp4 files: the first of MSRVTT_VIDEO_DIRS that exists."""
    for folder in MSRVTT_VIDEO_DIRS:
        if (root / folder).is_dir():
            return (root / folder).resolve()
    raise CptError(f"MSR-VTT folder {root} has no video folder: cpt reads {root}/videos/<video_id>.mp4 (or "
                   "videos/all/, where MSR-VTT's zip unpacks them, or MSRVTT_Videos/). Unpack the MSR-VTT videos "
                   "(video0.mp4 ... video9999.mp4) there.")


def load_msrvtt(root: str | Path, name: str, seed: int,
                val_ratio: float | None = None) -> tuple[RetrievalTask, list[Skipped]]:
    """MSR-VTT, 1k-A protocol: the 9k training videos with all their captions from MSRVTT_data.json, the
    1k-A test videos with their JSFUSION caption, and a seeded `val_ratio` share (default 0.05) of the
    training videos held out for validation (never the test split, which the reference code selects on)."""
    folder = Path(root)
    captions = _msrvtt_captions(folder)
    train = list(dict.fromkeys(_msrvtt_table(folder, MSRVTT_TRAIN, ("video_id",))["video_id"]))
    test = _msrvtt_table(folder, MSRVTT_TEST, ("video_id", "sentence"))
    uncaptioned = [video for video in train if video not in captions]
    if uncaptioned:
        raise CptError(f"MSR-VTT: {MSRVTT_DATA} has no caption for {len(uncaptioned)} of the training videos of "
                       f"{MSRVTT_TRAIN} (e.g. {uncaptioned[0]}) in {folder}. The two files do not belong together; "
                       f"take both from {CLIP4CLIP_ZIP}.")
    shared = sorted(set(train) & set(test["video_id"]))
    if shared:
        raise CptError(f"MSR-VTT: {MSRVTT_TRAIN} and {MSRVTT_TEST} in {folder} share {len(shared)} videos (e.g. "
                       f"{shared[0]}): test videos would be trained on. Take both files from {CLIP4CLIP_ZIP}.")
    videos = _msrvtt_videos(folder)
    path = {video: videos / f"{video}.mp4" for video in [*train, *test["video_id"]]}
    drawn = split_videos([path[v] for v in train], seed, MSRVTT_VAL_RATIO if val_ratio is None else val_ratio, 0)
    triples = [(path[v], caption, drawn[path[v]]) for v in train for caption in captions[v]]
    triples += [(path[v], caption, "test") for v, caption in zip(test["video_id"], test["sentence"])]
    fix = f"Check that the videos are in {videos} as <video_id>.mp4."
    return _assemble(name, str(root), triples, f"MSR-VTT in {folder}", fix)


def _layout(path: Path) -> str | None:
    """"msrvtt", "folder" or "csv" by the files at `path` (any CSV file), or None."""
    if path.is_dir():
        if any((path / file).is_file() for file in MSRVTT_FILES):
            return "msrvtt"
        return "folder" if (path / CAPTIONS_FILE).is_file() else None
    return "csv" if path.suffix.lower() == ".csv" and path.is_file() else None


def _has_caption_columns(csv: Path) -> bool:
    """Whether the CSV's header names video and caption columns (False if it cannot be read)."""
    try:
        header = pd.read_csv(csv, nrows=0, encoding="utf-8-sig").columns
    except (OSError, ValueError):  # unreadable, not UTF-8, not a table: the loader of its kind says so
        return False
    return {"video", "caption"} <= {str(c).strip().lower() for c in header}


def is_retrieval_source(path: str | Path) -> bool:
    """Whether `path` holds retrieval data: an MSR-VTT folder, a folder with captions.jsonl, or a CSV with
    video and caption columns (a CSV without them is a classification task's)."""
    layout = _layout(Path(path))
    return layout in ("msrvtt", "folder") or (layout == "csv" and _has_caption_columns(Path(path)))


def load_retrieval(path: str | Path, name: str, seed: int, val_ratio: float | None = None,
                   test_ratio: float | None = None) -> tuple[RetrievalTask, list[Skipped]]:
    """The retrieval task at `path`, in whichever layout it has (MSR-VTT folder, captions.jsonl folder,
    CSV); `test_ratio` only applies to sources without a split, and MSR-VTT has its fixed test split."""
    source = Path(path)
    if not source.exists():
        raise CptError(f"The data path {source} of retrieval task {name!r} does not exist. Check the path in "
                       f"--tasks {name}=PATH.")
    layout = _layout(source)
    if layout == "msrvtt":
        return load_msrvtt(source, name, seed, val_ratio)
    if layout == "folder":
        return load_folder(source, name, seed, val_ratio, test_ratio)
    if layout == "csv":
        return load_csv(source, name, seed, val_ratio, test_ratio)
    raise CptError(f"Retrieval task {name!r}: {source} is not a retrieval source. cpt expected an MSR-VTT folder "
                   f"({MSRVTT_DATA}, {MSRVTT_TRAIN}, {MSRVTT_TEST} and videos/), a folder with {CAPTIONS_FILE}, "
                   "or a CSV with video,caption[,split] columns.")
