"""Video clips as a retrieval method reads them: per-frame CLIP features, or normalised pixels.

Every video is decoded once (cpt.data.video.FrameCache: frames at most `--fps` a second, at
the model's resolution). A method with a frozen image encoder reads per-frame CLIP features:
every decoded frame is encoded once and kept on disk beside the frames, so any sampling of
`--frames` of them (uniform for evaluation, a random offset per segment for training) costs
an index, not an encoder pass. A method that trains its video side reads the frames
themselves, normalised as CLIP expects.

Training draws `views` clips per video, each from a generator seeded by (seed, video, view):
an epoch picks one of them per pair, so runs replay exactly and resume exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from cpt.core.backbone import Backbone
from cpt.data.features import CacheStats
from cpt.data.images import Unreadable
from cpt.data.video import FrameCache, FrameSampling, normalise, sample_indices
from cpt.io import atomic_path, cache_root


class ClipSource:
    """Clips of videos for one backbone (`clip`): frozen-encoder features (frames, dim) or normalised
    pixels (frames, 3, res, res), sampled from the video's decoded frames."""

    def __init__(self, backbone: Backbone, sampling: FrameSampling, root: Path | None = None,
                 batch_size: int = 64) -> None:
        self.backbone = backbone
        self.sampling = sampling
        self.root = Path(root) if root else cache_root()
        self.frames = FrameCache(self.root / "frames", sampling)
        self.batch_size = batch_size
        self._features: dict[str, np.ndarray] = {}
        self._model_key = f"{backbone.checksum[:16]}-{backbone.precision}"

    @property
    def stats(self) -> CacheStats:
        """Videos decoded now (`encoded`) and read from the frame cache (`cached`), and those that failed."""
        frames = self.frames.stats
        return CacheStats(encoded=frames.decoded, cached=frames.cached, failed=frames.failed)

    def readable(self, paths: list[Path]) -> Tensor:
        """Indices of the videos that decode (the others are recorded in `stats.failed`)."""
        return self.frames.readable(paths)

    def _pixels(self, frames: np.ndarray) -> Tensor:
        """(k, 3, res, res) float from decoded frames (k, res, res, 3): the image encoder's input."""
        return normalise(torch.from_numpy(frames).permute(0, 3, 1, 2), self.backbone.preprocess)

    def _all_features(self, path: Path) -> np.ndarray:
        """Features of every decoded frame of the video, encoded once per (video, sampling, backbone)."""
        key = f"{self.frames.digest(path)}-{_sampling_key(self.sampling)}"
        if key in self._features:
            return self._features[key]
        file = self.root / "frame-features" / self._model_key / f"{key}.npy"
        if file.exists():
            feats = np.load(file)
        else:
            frames = self.frames.frames(path)
            with torch.no_grad():
                feats = torch.cat([self._encode(self._pixels(frames[i:i + self.batch_size]))
                                   for i in range(0, len(frames), self.batch_size)]).numpy()
            with atomic_path(file) as tmp, open(tmp, "wb") as out:
                np.save(out, feats)
        self._features[key] = feats
        return feats

    def _encode(self, pixels: Tensor) -> Tensor:
        model = self.backbone.model
        return model.encode_image(pixels.to(self.backbone.device, self.backbone.dtype)).float().cpu()

    def clip(self, path: Path, video_input: str, gen: torch.Generator | None = None) -> Tensor:
        """One clip of `sampling.frames` frames: uniform (no `gen`) or with random offsets; the frozen
        encoder's features (frames, dim) or normalised pixels (frames, 3, res, res) as `video_input` says."""
        if video_input == "features":
            feats = self._all_features(path)
            return torch.from_numpy(feats[sample_indices(len(feats), self.sampling.frames, gen).numpy()])
        frames = self.frames.frames(path)
        return self._pixels(frames[sample_indices(len(frames), self.sampling.frames, gen).numpy()])

    def eval_clips(self, paths: list[Path], video_input: str) -> Tensor:
        """(n, frames, ...) uniform clips of readable videos."""
        return torch.stack([self.clip(p, video_input) for p in paths])


def _sampling_key(sampling: FrameSampling) -> str:
    return "-".join(f"{k}{v}" for k, v in sorted(sampling.key().items()))


class TrainClips:
    """A task's training pairs, indexed like a (pairs, views, ...) tensor: `[pairs, views]` gives
    each pair's video as the `view`-th random-offset clip of that video (features or pixels)."""

    def __init__(self, source: ClipSource, videos: list[Path], pair_video: Tensor, views: int, seed: int,
                 video_input: str) -> None:
        self.source = source
        self.videos = videos
        self.pair_video = pair_video
        self.seed = seed
        self.video_input = video_input
        self.shape = (len(pair_video), views)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: tuple[Tensor, Tensor]) -> Tensor:
        pairs, views = index
        clips = []
        for pair, view in zip(pairs.tolist(), views.tolist()):
            video = int(self.pair_video[pair])
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + video * 101 + view)
            try:
                clips.append(self.source.clip(self.videos[video], self.video_input, gen))
            except Unreadable as exc:
                raise RuntimeError(f"{exc.path} changed during training: {exc.reason}") from None
        return torch.stack(clips)
