"""Reading one video file: decoding with PyAV (FFmpeg), sampling frames, caching decoded frames.

As with images (cpt.data.images), a video FFmpeg cannot use is that file's problem, never the
run's: every function here returns or raises `Unreadable` with a short reason. A video decodes
to every frame, or at most `fps` frames a second (those nearest a 1/fps time grid), each
resized as CLIP preprocesses an image (shorter side to `size`, bicubic, centre crop), so a
frame feeds the image encoder as a picture would.

Decoding is the slow part, so `FrameCache` decodes a video once per (content hash, fps, size)
and keeps the frames as a .npy file; any later clip of `frames` of them is an index into it.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, TypeVar

import av
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from cpt.core.backbone import Preprocess
from cpt.data.images import Unreadable, content_hash, file_problem, read_bytes
from cpt.io import atomic_path, cache_root

VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg")

T = TypeVar("T")


@dataclass(frozen=True)
class FrameSampling:
    """How a video becomes a clip: decode at most `fps` frames a second (None: all) at `size`
    pixels square, then sample `frames` of them."""

    frames: int = 12
    fps: float | None = None
    size: int = 224

    def __post_init__(self) -> None:
        if self.frames < 1 or self.size < 1 or (self.fps is not None and not 0 < self.fps < math.inf):
            raise ValueError(f"frame sampling needs frames >= 1, size >= 1 and fps > 0 (finite) or None: {self}")

    def key(self) -> dict:
        """What identifies the decoded frames in the cache; `frames` does not, as every clip
        length samples from the same decoded frames."""
        return {"fps": self.fps, "size": self.size}


@dataclass
class FrameStats:
    """What frame requests cost: videos decoded now versus read from the cache."""

    decoded: int = 0
    cached: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # path -> reason


def _detail(exc: Exception) -> str:
    """What FFmpeg said, in a few words (its message without the errno and file name)."""
    text = getattr(exc, "strerror", None) or str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextmanager
def _opened(source: str | BinaryIO, path: Path | str) -> Iterator[av.container.InputContainer]:
    """An open container of `source` (a file name or the file's bytes), closed on the way out."""
    try:
        container = av.open(source, mode="r")
    except Exception as exc:  # noqa: BLE001 - only PyAV runs here: whatever it raises, the file is bad
        raise Unreadable(path, f"cannot decode video: {_detail(exc)}") from None
    with container:
        yield container


def _video_stream(container: av.container.InputContainer, path: Path | str) -> av.VideoStream:
    """The container's first video stream; `Unreadable` if it has none."""
    if not container.streams.video:
        raise Unreadable(path, "no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return stream


def _video_frames(container: av.container.InputContainer, stream: av.VideoStream,
                  path: Path | str) -> Iterator[av.VideoFrame]:
    """The frames of `stream`, in presentation order; `Unreadable` if FFmpeg fails on the way."""
    frames = container.decode(stream)
    while True:
        try:
            frame = next(frames)
        except StopIteration:
            return
        except Exception as exc:  # noqa: BLE001 - as in _opened: a decoding failure is the file's
            raise Unreadable(path, f"cannot decode video: {_detail(exc)}") from None
        yield frame


def _timed(frames: Iterable[av.VideoFrame], rate: Fraction) -> Iterator[tuple[av.VideoFrame, Fraction]]:
    """Each frame with its time in seconds, exact: pts * time_base, or its index / `rate` (the
    stream's frame rate) when the frame carries no timestamp."""
    for i, frame in enumerate(frames):
        if frame.pts is not None and frame.time_base is not None:
            yield frame, frame.pts * Fraction(frame.time_base)
        else:
            yield frame, i / rate


def _holds_grid(lo: Fraction, hi: Fraction, start: Fraction, step: Fraction) -> bool:
    """Whether some grid time start + k * step (k >= 0) lies in (lo, hi]."""
    k = math.floor((hi - start) / step)
    return k >= 0 and start + k * step > lo


def _capped(timed: Iterable[tuple[T, Fraction]], fps: float | None) -> Iterator[T]:
    """The items nearest to the time grid first + k / fps, each at most once (all with no `fps`).

    An item owns the times closer to it than to its neighbours, (midpoint before, midpoint
    after], and is kept when a grid time falls there: so a cap above the video's own rate
    keeps every frame, and one below keeps the frames nearest an even spacing.
    """
    if fps is None:
        yield from (item for item, _ in timed)
        return
    step = 1 / Fraction(fps)
    held: tuple[T, Fraction] | None = None
    start = lo = Fraction(0)
    for item, t in timed:
        if held is None:
            start, lo = t, t - step  # the first frame owns the grid's origin
        else:
            mid = (held[1] + t) / 2
            if _holds_grid(lo, mid, start, step):
                yield held[0]
            lo = mid
        held = (item, t)
    if held is not None and _holds_grid(lo, held[1], start, step):
        yield held[0]


def _square(image: Image.Image, size: int) -> np.ndarray:
    """(size, size, 3) uint8: the shorter side resized to `size` (bicubic), then centre-cropped,
    as CLIP's preprocessing does (torchvision Resize(size) + CenterCrop(size))."""
    w, h = image.size
    if (w, h) != (size, size):
        w, h = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
        image = image.resize((w, h), Image.BICUBIC)
    left, top = int(round((w - size) / 2)), int(round((h - size) / 2))
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


def _decode(source: str | BinaryIO, path: Path | str, fps: float | None, size: int) -> np.ndarray:
    """(n, size, size, 3) uint8: the frames of `source` kept by the `fps` cap; `Unreadable` if
    FFmpeg cannot decode it or it has no frames."""
    with _opened(source, path) as container:
        stream = _video_stream(container, path)
        frames = _video_frames(container, stream, path)
        rate = stream.average_rate or stream.guessed_rate or Fraction(fps or 1)  # no rate known: keep all
        kept = [_square(frame.to_image(), size) for frame in _capped(_timed(frames, Fraction(rate)), fps)]
    if not kept:
        raise Unreadable(path, "the video has no frames")
    return np.stack(kept)


def decode(path: Path | str, fps: float | None, size: int) -> np.ndarray:
    """(n, size, size, 3) uint8: every frame of the video at `path`, or at most `fps` a second,
    each resized and centre-cropped to size x size; `Unreadable` if it cannot be used."""
    problem = file_problem(path)
    if problem is not None:
        raise Unreadable(path, problem)
    return _decode(os.fspath(path), path, fps, size)


def read_video(path: Path | str, fps: float | None, size: int) -> tuple[np.ndarray, str]:
    """The decoded frames of `path` and the sha256 of the very bytes they were decoded from (so a
    file changed while it is read never caches its frames under another content's hash)."""
    data = read_bytes(path)
    return _decode(io.BytesIO(data), path, fps, size), hashlib.sha256(data).hexdigest()


def check_video(path: Path | str) -> str | None:
    """None if `path` is a video FFmpeg decodes at least one frame of, else the short reason why not."""
    problem = file_problem(path)
    if problem is not None:
        return problem
    try:
        with _opened(os.fspath(path), path) as container:
            if next(_video_frames(container, _video_stream(container, path), path), None) is None:
                return "the video has no frames"
    except Unreadable as exc:
        return exc.reason
    return None


def sample_indices(n_available: int, frames: int, gen: torch.Generator | None = None) -> Tensor:
    """(frames,) long, non-decreasing: one index into each of `frames` equal segments of
    [0, n_available), its centre (evaluation) or, with `gen`, a uniform position in it (training's
    random offset). Fewer frames available than asked for repeat indices."""
    if n_available < 1 or frames < 1:
        raise ValueError(f"cannot sample {frames} of {n_available} frames")
    k = torch.arange(frames, dtype=torch.float64)
    if gen is None:
        offset = torch.full((frames,), 0.5, dtype=torch.float64)
    else:
        offset = torch.rand(frames, generator=gen, dtype=torch.float64)
    return ((k + offset) * n_available / frames).floor().long().clamp_(0, n_available - 1)


def normalise(clip: Tensor, pre: Preprocess) -> Tensor:
    """uint8 (..., 3, S, S) -> float32 (..., 3, S, S) in CLIP's normalisation: the image encoder's input."""
    mean = torch.tensor(pre.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(pre.std, dtype=torch.float32).view(3, 1, 1)
    return (clip.float() / 255 - mean) / std


def _sound(frames: np.ndarray, size: int) -> bool:
    """Whether a loaded cache entry has the shape decoded frames have."""
    return frames.dtype == np.uint8 and frames.ndim == 4 and len(frames) > 0 and frames.shape[1:] == (size, size, 3)


class FrameCache:
    """Decoded frames of videos, one .npy per (content hash, fps, size) under `root`, shared by
    processes: each entry is written whole (temp file + rename) or not at all."""

    def __init__(self, root: Path | None, sampling: FrameSampling) -> None:
        self.root = Path(root) if root else cache_root() / "frames"
        self.sampling = sampling
        self.stats = FrameStats()
        self._folder = self.root / "-".join(f"{k}{v}" for k, v in sorted(sampling.key().items()))
        self._digests: dict[tuple[str, int, int], str] = {}

    def digest(self, path: Path | str) -> str:
        """The video's content hash, read once per process while its size and mtime stay the same
        (training asks for the same video every epoch)."""
        try:
            st = os.stat(path)
        except OSError:
            return content_hash(path)  # raises Unreadable with the reason
        key = (os.fspath(path), st.st_mtime_ns, st.st_size)
        if key not in self._digests:
            self._digests[key] = content_hash(path)
        return self._digests[key]

    def _load(self, digest: str) -> np.ndarray | None:
        """The cached frames of content `digest`, or None if absent or damaged (then decoded again)."""
        try:
            frames = np.load(self._folder / f"{digest}.npy")
        except (OSError, ValueError, EOFError):
            return None
        return frames if _sound(frames, self.sampling.size) else None

    def frames(self, path: Path | str) -> np.ndarray:
        """(n, size, size, 3) uint8: the video's decoded frames, from the cache or decoded (and
        cached) now; a video that cannot be used is recorded in `stats.failed` and raises `Unreadable`."""
        try:
            cached = self._load(self.digest(path))
            if cached is not None:
                self.stats.cached += 1
                return cached
            frames, digest = read_video(path, self.sampling.fps, self.sampling.size)
        except Unreadable as exc:
            self.stats.failed[str(path)] = exc.reason
            raise
        with atomic_path(self._folder / f"{digest}.npy") as tmp, open(tmp, "wb") as out:
            np.save(out, frames)
        self.stats.decoded += 1
        return frames

    def clip(self, path: Path | str, gen: torch.Generator | None = None) -> Tensor:
        """uint8 (frames, 3, size, size): `sampling.frames` frames of the video, uniform or (with
        `gen`) at random offsets; `Unreadable` as `frames` raises it."""
        frames = self.frames(path)
        picked = frames[sample_indices(len(frames), self.sampling.frames, gen).numpy()]  # (frames, S, S, 3)
        return torch.from_numpy(picked).permute(0, 3, 1, 2).contiguous()  # (frames, 3, S, S)

    def readable(self, paths: list[Path]) -> Tensor:
        """Indices of `paths` whose video decodes (decoding and caching them now); the others are
        recorded in `stats.failed`."""
        good = []
        for i, path in enumerate(paths):
            try:
                self.frames(path)
                good.append(i)
            except Unreadable:
                continue
        return torch.tensor(good, dtype=torch.long)


def write_video(path: Path, frames: list[np.ndarray], fps: int = 8) -> None:
    """`frames` (at least one; (h, w, 3) uint8 each, h and w even) as an mp4 video (MPEG-4 Part 2,
    yuv420p, at a fine fixed quantiser so colours survive) of `fps` frames a second."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 4_000_000  # far above need: the quantiser, not the rate, sets the quality
        stream.options = {"qmin": "2", "qmax": "2"}  # ffmpeg -q:v 2, MPEG-4's finest usual quantiser
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())  # flush the encoder
