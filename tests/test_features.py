"""The feature cache: same numbers as encoding directly, keyed by content, reused across runs."""

import numpy as np
import torch
from PIL import Image

from cpt.core.backbone import load_backbone
from cpt.data.features import AugmentSpec, FeatureCache, content_hash, eval_transform
from tests.conftest import stored_entries, write_image


def images(tmp_path, n=3):
    rng = np.random.default_rng(0)
    return [write_image(tmp_path / f"img{i}.png", (40 * i, 100, 200), rng) for i in range(n)]


def test_eval_features_equal_direct_encoding_and_come_back_from_disk(tiny_clip, tmp_path):
    backbone = load_backbone(str(tiny_clip), "cpu")
    paths = images(tmp_path)
    cache = FeatureCache(backbone, tmp_path / "cache", batch_size=2)
    feats = cache.features(paths)
    x = torch.stack([eval_transform(backbone.preprocess)(Image.open(p).convert("RGB")) for p in paths])
    torch.testing.assert_close(feats, backbone.model.encode_image(x), rtol=1e-5, atol=1e-5)
    assert (cache.stats.encoded, cache.stats.cached) == (3, 0)

    again = FeatureCache(backbone, tmp_path / "cache")
    assert torch.equal(again.features(paths), feats) and (again.stats.encoded, again.stats.cached) == (0, 3)

    moved = tmp_path / "elsewhere.png"
    moved.write_bytes(paths[1].read_bytes())  # same bytes, new name: still a cache hit
    assert torch.equal(again.features([moved])[0], feats[1]) and again.stats.encoded == 0


def test_augmented_views_are_deterministic_distinct_and_keyed_separately(tiny_clip, tmp_path):
    backbone = load_backbone(str(tiny_clip), "cpu")
    paths = images(tmp_path, 2)
    aug = AugmentSpec(views=4)
    first = FeatureCache(backbone, tmp_path / "a").features(paths, aug)
    second = FeatureCache(backbone, tmp_path / "b").features(list(reversed(paths)), aug)
    assert first.shape == (2, 4, 32)
    torch.testing.assert_close(first, second.flip(0))  # same views whatever the order or cache
    assert not torch.allclose(first[0, 0], first[0, 1])  # the views differ from each other
    other = FeatureCache(backbone, tmp_path / "a")
    other.features(paths, AugmentSpec(views=2))
    assert other.stats.encoded == 2  # another augmentation recipe is another cache entry


def test_precision_is_part_of_the_key_and_broken_images_are_reported(tiny_clip, tmp_path):
    paths = images(tmp_path, 2)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"garbage")
    cache = FeatureCache(load_backbone(str(tiny_clip), "cpu"), tmp_path / "c")
    feats = cache.features([paths[0], broken, paths[1]])
    assert torch.isnan(feats[1]).all() and torch.isfinite(feats[[0, 2]]).all()
    assert list(cache.stats.failed) == [str(broken)]
    half = FeatureCache(load_backbone(str(tiny_clip), "cpu", "bf16"), tmp_path / "c")
    half.features(paths)
    assert half.stats.encoded == 2


def test_colour_safe_strong_views_keep_hues(tmp_path):
    """Strong views: RandAugment's full set may change a flat yellow's hue; the colour-safe set never does."""
    from PIL import Image

    from cpt.core.backbone import Preprocess
    from cpt.data.features import STRONG_OPS, AugmentSpec, image_views

    path = tmp_path / "yellow.png"
    Image.new("RGB", (32, 32), (230, 210, 40)).save(path)
    pre = Preprocess(resolution=32)
    mean, std = torch.tensor(pre.mean)[:, None, None], torch.tensor(pre.std)[:, None, None]

    def hues(kind: str) -> list[bool]:
        views = image_views(path, "ab" * 32, pre, AugmentSpec(views=40, scale=(1.0, 1.0), strong=kind)) * std + mean
        centre = views[:, :, 16, 16]  # RGB of the centre pixel, which translations and shears keep inside
        return [bool(r > b and g > b) for r, g, b in centre.tolist()]  # still a yellow hue

    assert all(hues("colour-safe"))
    assert not all(hues("randaugment"))
    assert set(STRONG_OPS) == {"randaugment", "colour-safe"}


def test_unreadable_files_are_recorded_never_raised(tiny_clip, tmp_path):
    """Every failure to read or decode one file is recorded against that file (a FIFO is not waited on)."""
    import os

    from tests.test_bad_data import broken_png

    good = images(tmp_path, 2)
    bad = {"syntax.png": broken_png(tmp_path / "syntax.png"), "empty.png": tmp_path / "empty.png",
           "pipe.png": tmp_path / "pipe.png", "loop.png": tmp_path / "loop.png", "missing.png": tmp_path / "missing.png",
           "folder.png": tmp_path / "folder.png"}
    bad["empty.png"].write_bytes(b"")
    os.mkfifo(bad["pipe.png"])
    bad["loop.png"].symlink_to("loop.png")
    bad["folder.png"].mkdir()
    cache = FeatureCache(load_backbone(str(tiny_clip), "cpu"), tmp_path / "c")
    for aug in (None, AugmentSpec(views=2)):
        feats = cache.features([good[0], *bad.values(), good[1]], aug)
        assert torch.isfinite(feats[[0, -1]]).all() and torch.isnan(feats[1:-1]).all()
    assert cache.readable([good[0], *bad.values(), good[1]]).tolist() == [0, len(bad) + 1]
    reasons = {os.path.basename(p): r for p, r in cache.stats.failed.items()}
    assert reasons["syntax.png"].startswith("cannot decode image: broken PNG file")
    assert reasons["empty.png"] == "cannot decode image: the file is empty"
    assert reasons["pipe.png"] == "not a regular file (a FIFO)" and reasons["folder.png"] == "not a regular file (a folder)"
    assert reasons["missing.png"] == "file not found" and reasons["loop.png"].startswith("cannot read file")


def test_damaged_cache_entry_is_encoded_again_and_replaced(tiny_clip, tmp_path):
    backbone = load_backbone(str(tiny_clip), "cpu")
    paths = images(tmp_path, 4)
    want = FeatureCache(backbone, tmp_path / "c").features(paths)
    entries = stored_entries(tmp_path / "c")
    entries[0].write(np.zeros(32))
    entries[1].write(np.full(32, np.nan))
    flipped = entries[2].read().copy()
    flipped.view(np.uint32)[5] ^= 1 << 3  # one bit: still finite and non-zero, so only the checksum tells
    entries[2].write(flipped)
    cache = FeatureCache(backbone, tmp_path / "c")
    torch.testing.assert_close(cache.features(paths), want)
    assert (cache.stats.encoded, cache.stats.cached, cache.stats.repaired) == (3, 1, 3)
    again = FeatureCache(backbone, tmp_path / "c")
    assert torch.equal(again.features(paths), cache.features(paths)) and again.stats.repaired == 0


def test_entries_of_the_per_file_layout_are_moved_into_the_store(tiny_clip, tmp_path):
    """A cache written before the store (one .npy per image) is read, not encoded again; its files
    move into the store; a damaged one is encoded again, as before."""
    from cpt.data.features import _key

    backbone = load_backbone(str(tiny_clip), "cpu")
    paths = images(tmp_path, 3)
    want = FeatureCache(backbone, tmp_path / "new").features(paths)
    folder = tmp_path / "old" / "features" / _key(backbone, {"view": "eval"})
    for path, feat in zip(paths, want.numpy()):
        digest = content_hash(path)
        (folder / digest[:2]).mkdir(parents=True, exist_ok=True)
        np.save(folder / digest[:2] / f"{digest}.npy", feat)
    (folder / content_hash(paths[2])[:2] / f"{content_hash(paths[2])}.npy").write_bytes(b"\x93NUMPY garbage")
    cache = FeatureCache(backbone, tmp_path / "old")
    torch.testing.assert_close(cache.features(paths), want)
    assert (cache.stats.encoded, cache.stats.cached, cache.stats.repaired) == (1, 2, 1)
    assert not list(folder.rglob("*.npy")) and len(stored_entries(tmp_path / "old")) == 3
    again = FeatureCache(backbone, tmp_path / "old")
    assert torch.equal(again.features(paths), cache.features(paths)) and again.stats.encoded == 0


def test_good_images_keep_their_cache_keys(tiny_clip, tmp_path):
    """The key of an image is the sha256 of its bytes, as before reading was centralised."""
    import hashlib

    path = images(tmp_path, 1)[0]
    assert content_hash(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    FeatureCache(load_backbone(str(tiny_clip), "cpu"), tmp_path / "c").features([path])
    assert [e.digest for e in stored_entries(tmp_path / "c")] == [content_hash(path)]
