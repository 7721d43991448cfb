"""Frozen image features, computed once and cached on disk.

The image encoder never trains (by default), so every image is encoded once per view:
one centre-crop view for evaluation, and a fixed number of augmented views (random resized
crop + horizontal flip) for training. A cache key is the backbone's checksum, precision and
preprocessing (plus the augmentation recipe); within it an entry is found by the sha256 of the
image bytes (cpt.data.store keeps the entries of a key in a few sharded files). View `i` of an
image is drawn from a seed derived from its bytes and `i`, so the same views come back whatever
the run, order or seed.

Images are read and decoded by cpt.data.images only: a file that cannot be read or decoded is
recorded in `stats.failed`, never raised. A cache entry that is damaged (a checksum mismatch,
a partial write, non-finite values, an all-zero row) is never used: the image is encoded again
and stored anew.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision import transforms as T

from cpt.core.backbone import Backbone, Preprocess
from cpt.console import track
from cpt.data.images import Unreadable, content_hash, read_image  # content_hash: also imported from here
from cpt.data.store import SHARD_BYTES, FeatureStore
from cpt.errors import CptError
from cpt.io import cache_root
from cpt.options import Options, option

log = logging.getLogger("cpt")

# RandAugment's operations allowed in a strong view. "randaugment": all of them (SCPNet);
# "colour-safe": those that keep hues, for labels that are colours (toy-ml, CUB attributes):
# Solarize, Posterize, Equalize, AutoContrast and Color can turn yellow into green.
STRONG_OPS: dict[str, tuple[str, ...] | None] = {
    "randaugment": None,
    "colour-safe": ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Contrast",
                    "Sharpness"),
}


class _RandAugment(T.RandAugment):
    """RandAugment drawing from a subset of its operations (all when `ops` is None)."""

    def __init__(self, ops: tuple[str, ...] | None, num_ops: int = 3, magnitude: int = 5) -> None:
        super().__init__(num_ops=num_ops, magnitude=magnitude)
        self.ops = ops

    def _augmentation_space(self, num_bins: int, image_size: tuple[int, int]) -> dict:
        space = super()._augmentation_space(num_bins, image_size)
        return space if self.ops is None else {k: v for k, v in space.items() if k in self.ops}


@dataclass
class ViewOptions(Options):
    """The cached training views every gradient-trained method draws from."""

    aug_views: int = option(8, "Augmented views cached per training image.", panel="Training", low=1, high=256)
    crop_scale: float = option(0.08, "Smallest area fraction of the random resized crop (1 = flips only; CoOp's "
                               "0.08; the toy recipes' preset is 1.0).", panel="Training", low=0, high=1, above=True)


@dataclass(frozen=True)
class AugmentSpec:
    """The training views: random resized crop + flip, as CoOp trains."""

    views: int = 8
    scale: tuple[float, float] = (0.08, 1.0)
    flip: bool = True
    seed: int = 0
    strong: str = ""  # a strong view (SCPNet): RandAugment first, with the ops of STRONG_OPS[strong]

    def key(self) -> dict:
        """What identifies these views in the cache (`strong` only when set, so weak-view keys stay put)."""
        kind = asdict(self)
        if not self.strong:
            del kind["strong"]
        return kind


@dataclass
class CacheStats:
    """What a feature request cost: images encoded now versus read from the cache."""

    encoded: int = 0
    cached: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # path -> reason
    repaired: int = 0  # damaged cache entries encoded again


def eval_transform(pre: Preprocess) -> T.Compose:
    """CLIP's evaluation preprocessing: resize, centre crop, normalise."""
    return T.Compose(
        [
            T.Resize(pre.resolution, interpolation=T.InterpolationMode(pre.interpolation)),
            T.CenterCrop(pre.resolution),
            T.ToTensor(),
            T.Normalize(pre.mean, pre.std),
        ]
    )


def augment_transform(pre: Preprocess, aug: AugmentSpec) -> T.Compose:
    """Training view: (RandAugment for a strong view,) random resized crop (+ flip), normalise."""
    if aug.strong and aug.strong not in STRONG_OPS:
        raise CptError(f"--strong-augment {aug.strong!r} must be one of {', '.join(STRONG_OPS)}.")
    steps = [_RandAugment(STRONG_OPS[aug.strong])] if aug.strong else []
    steps += [T.RandomResizedCrop(pre.resolution, scale=aug.scale, interpolation=T.InterpolationMode(pre.interpolation))]
    if aug.flip:
        steps.append(T.RandomHorizontalFlip())
    return T.Compose([*steps, T.ToTensor(), T.Normalize(pre.mean, pre.std)])


def _key(backbone: Backbone, kind: dict) -> str:
    blob = json.dumps(
        {"sha256": backbone.checksum, "precision": backbone.precision, "pre": backbone.preprocess.to_dict(), **kind},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _augmented(image: Image.Image, digest: str, transform: T.Compose, aug: AugmentSpec, i: int) -> Tensor:
    """View `i` of an image, drawn from a seed made of its digest and `i` (the same in every run)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(digest[:12], 16) + 1_000_003 * (i + 1) + aug.seed)
        return transform(image)


def image_views(source: Path | Image.Image, digest: str, pre: Preprocess, aug: AugmentSpec | None,
                which: list[int] | None = None) -> Tensor:
    """Input tensors (views, 3, H, W) of one image (a decoded RGB image, or a file read with
    `read_image`, which raises `Unreadable`): the eval view, or its augmented views (all, or `which`)."""
    image = source if isinstance(source, Image.Image) else read_image(source)[0]
    if aug is None:
        return eval_transform(pre)(image).unsqueeze(0)
    transform = augment_transform(pre, aug)
    return torch.stack([_augmented(image, digest, transform, aug, i) for i in (which or range(aug.views))])


class EncodedViews:
    """The augmented views (or, without `aug`, the eval view) of images, encoded on demand by a
    *trainable* image encoder (`--finetune-image`, or MaPLe's prompts in it): indexed like a cached
    (n, views, dim) tensor, with gradients. `encoder`: the method's image encoder (default: the
    backbone's)."""

    def __init__(self, backbone: Backbone, paths: list[Path], aug: AugmentSpec | None,
                 encoder: Callable[[Tensor], Tensor] | None = None) -> None:
        self.backbone = backbone
        self.encode = encoder if encoder is not None else backbone.model.encode_image
        self.paths = list(paths)
        try:
            self.digests = [content_hash(p) for p in self.paths]
        except Unreadable as exc:
            raise _changed(exc) from None
        self.aug = aug
        self.shape = (len(self.paths), aug.views if aug else 1, backbone.geometry["embed_dim"])

    def __len__(self) -> int:
        return len(self.paths)

    @torch.no_grad()
    def encode_all(self, batch_size: int = 64) -> Tensor:
        """(n, dim): every image's first view under the encoder's current weights (validation)."""
        order = torch.arange(len(self.paths))
        return torch.cat([self[(part, torch.zeros_like(part))].cpu() for part in order.split(batch_size)])

    def __getitem__(self, index: tuple[Tensor, Tensor]) -> Tensor:
        images, views = index
        pre = self.backbone.preprocess
        try:
            decoded = [read_image(self.paths[i])[0] for i in images.tolist()]
        except Unreadable as exc:
            raise _changed(exc) from None
        pixels = torch.cat([image_views(image, self.digests[i], pre, self.aug, [v])
                            for image, i, v in zip(decoded, images.tolist(), views.tolist())])
        return self.encode(pixels.to(self.backbone.device, self.backbone.dtype)).float()


def _changed(exc: Unreadable) -> CptError:
    """A training image that was checked readable and no longer is: it changed during the run."""
    return CptError(
        f"{exc.path} was readable when the run started but now is not ({exc.reason}): it changed during the run. "
        "Restore it (or remove it) and resume with `cpt fit --resume RUN`."
    )


class FeatureCache:
    """Encode images with a frozen backbone, reading and writing the feature store (cpt.data.store).

    `encoder`: the method's image encoder when it is not the backbone's (MaPLe's prompts in it); its
    features are stored under the backbone's checksum, which `Backbone.mark_image_tuned` re-keys for it.
    """

    def __init__(self, backbone: Backbone, root: Path | None = None, batch_size: int = 64,
                 shard_bytes: int = SHARD_BYTES, encoder: Callable[[Tensor], Tensor] | None = None) -> None:
        self.backbone = backbone
        self.encode = encoder if encoder is not None else backbone.model.encode_image
        self.root = Path(root) if root else cache_root()
        self.batch_size = batch_size
        self.shard_bytes = shard_bytes
        self.stats = CacheStats()
        self._stores: dict[str, FeatureStore] = {}

    def store(self, aug: AugmentSpec | None = None) -> FeatureStore:
        """The store of this backbone's eval view, or of the augmented views `aug`."""
        kind = {"view": "eval"} if aug is None else {"view": "augment", **aug.key()}
        key = _key(self.backbone, kind)
        if key not in self._stores:
            dim = self.backbone.geometry["embed_dim"]
            shape = (dim,) if aug is None else (aug.views, dim)
            meta = {"format": 1, "backbone": self.backbone.spec, "sha256": self.backbone.checksum,
                    "precision": self.backbone.precision, "preprocess": self.backbone.preprocess.to_dict(),
                    "view": kind, "shape": list(shape)}
            self._stores[key] = FeatureStore(self.root / "features" / key, shape, meta, self.shard_bytes)
        return self._stores[key]

    def close(self) -> None:
        """Let go of the shards this cache writes (also done when the process ends)."""
        for store in self._stores.values():
            store.close()

    @torch.no_grad()
    def _encode(self, batch: list[Tensor]) -> list[np.ndarray]:
        sizes = [b.shape[0] for b in batch]
        x = torch.cat(batch).to(self.backbone.device, self.backbone.dtype)
        feats = self.encode(x).float().cpu()
        self.stats.encoded += len(batch)
        return [f.numpy() for f in feats.split(sizes)]

    def readable(self, paths: list[Path]) -> Tensor:
        """Indices of `paths` whose image has not failed to read or decode (call after `features`)."""
        return torch.tensor([i for i, p in enumerate(paths) if str(p) not in self.stats.failed], dtype=torch.long)

    def features(self, paths: list[Path], aug: AugmentSpec | None = None, label: str = "Encoding images") -> Tensor:
        """Features of `paths`: (n, dim) for the eval view, (n, views, dim) with `aug`.

        Unreadable images are recorded in `stats.failed` and get NaN rows; callers drop them.
        """
        return torch.from_numpy(self._fill(paths, aug, range(len(paths)), label))

    def fill(self, paths: list[Path], aug: AugmentSpec | None = None, part: tuple[int, int] = (0, 1),
             label: str = "Encoding images") -> None:
        """Encode and store the features the store lacks (or holds damaged) of the images at positions
        `i` of `paths` with `i % world == rank`, `part = (rank, world)`: processes that split one
        list this way, then wait for each other, can all read every feature with `features`.
        Unreadable images are recorded in `stats.failed`, as `features` does."""
        rank, world = part
        if not 0 <= rank < world:
            raise CptError(f"part {part} is not (rank, world) with 0 <= rank < world.")
        self._fill(paths, aug, range(rank, len(paths), world), label)

    def _fill(self, paths: list[Path], aug: AugmentSpec | None, positions: range, label: str) -> np.ndarray:
        """(len(paths), *shape): the features at `positions` read or encoded (and stored), NaN elsewhere."""
        store = self.store(aug)
        wanted: list[int] = []
        digests: list[str] = []
        for i in positions:
            try:
                digests.append(content_hash(paths[i]))
                wanted.append(i)
            except Unreadable as exc:
                self.stats.failed[str(paths[i])] = exc.reason
        found = store.get(digests)
        out = np.full((len(paths), *store.shape), np.nan, np.float32)
        hits = np.flatnonzero(found.found)
        out[np.array(wanted, dtype=np.int64)[hits]] = found.rows[hits]
        self.stats.cached += len(hits)
        for k, (where, problem) in sorted(found.damaged.items()):
            self.stats.repaired += 1
            log.warning("damaged feature cache entry %s (%s): encoding its image again", where, problem)
        todo = [wanted[k] for k in np.flatnonzero(~found.found).tolist()]
        batch: list[tuple[int, str, Tensor]] = []
        for n, i in enumerate(track(todo, label, total=len(todo))):
            try:  # the digest of the bytes decoded now keys the entry, even if the file changed since it was hashed
                image, digest = read_image(paths[i])
                batch.append((i, digest, image_views(image, digest, self.backbone.preprocess, aug)))
            except Unreadable as exc:
                self.stats.failed[str(paths[i])] = exc.reason
            if batch and (len(batch) == self.batch_size or n == len(todo) - 1):
                feats = np.stack([f[0] if aug is None else f for f in self._encode([b[2] for b in batch])])
                store.put([b[1] for b in batch], feats)
                out[[b[0] for b in batch]] = feats
                batch = []
        return out
