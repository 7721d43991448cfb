"""The feature store (cpt.data.store): features as the backbone computes them, a bounded number of
files, processes writing one cache at once, damage found and encoded again, and `cpt cache`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cpt.core.backbone import load_backbone
from cpt.data.features import AugmentSpec, FeatureCache, content_hash, image_views
from cpt.data.store import INDEX, RECORD, ROWS, FeatureStore, compact
from tests.conftest import cli, stored_entries, write_image

DIM = 32  # the tiny CLIP's


def images(folder: Path, n: int) -> list[Path]:
    rng = np.random.default_rng(1)
    return [write_image(folder / f"{i:03d}.png", tuple(int(c) for c in rng.integers(0, 255, 3)), rng) for i in range(n)]


def direct(backbone, paths: list[Path], aug: AugmentSpec | None) -> torch.Tensor:
    """The backbone's features of `paths`, computed without any cache."""
    with torch.no_grad():
        return torch.stack([backbone.model.encode_image(image_views(p, content_hash(p), backbone.preprocess, aug))
                            .squeeze(0) for p in paths])


def files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def rows_of(digest: str, shape=(DIM,)) -> np.ndarray:
    """A made-up feature that any process derives from the digest alone."""
    return np.random.default_rng(int(digest, 16)).standard_normal(shape).astype(np.float32)


def test_store_serves_the_backbones_features_and_a_second_pass_encodes_nothing(tiny_clip, tmp_path):
    backbone = load_backbone(str(tiny_clip), "cpu")
    paths = images(tmp_path / "img", 8)
    aug = AugmentSpec(views=3)
    cache = FeatureCache(backbone, tmp_path / "c", batch_size=3, shard_bytes=1024)  # several shards per key
    for kind in (None, aug):
        torch.testing.assert_close(cache.features(paths, kind), direct(backbone, paths, kind), rtol=1e-5, atol=1e-5)
    assert (cache.stats.encoded, cache.stats.cached) == (16, 0)
    again = FeatureCache(backbone, tmp_path / "c")
    for kind in (None, aug):
        assert torch.equal(again.features(paths, kind), cache.features(paths, kind))
    assert (again.stats.encoded, again.stats.cached, again.stats.repaired) == (0, 16, 0)


def test_fill_encodes_only_its_part(tiny_clip, tmp_path):
    backbone = load_backbone(str(tiny_clip), "cpu")
    paths = images(tmp_path / "img", 7)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    paths.insert(3, broken)
    ranks = [FeatureCache(backbone, tmp_path / "c") for _ in range(3)]
    ranks[1].fill(paths, part=(1, 3))
    assert ranks[1].stats.encoded == 3 and ranks[1].stats.failed == {}  # positions 1, 4, 7 (3 is rank 0's)
    ranks[0].fill(paths, part=(0, 3))
    assert ranks[0].stats.encoded == 2 and list(ranks[0].stats.failed) == [str(broken)]
    ranks[2].fill(paths, part=(2, 3))
    ranks[1].fill(paths, part=(1, 3))  # a second run of the same part: nothing to do
    assert ranks[1].stats.encoded == 3 and ranks[1].stats.cached == 3
    reader = FeatureCache(backbone, tmp_path / "c")
    feats = reader.features(paths)
    assert reader.stats.encoded == 0 and torch.isnan(feats[3]).all()
    keep = [i for i in range(len(paths)) if i != 3]
    torch.testing.assert_close(feats[keep], direct(backbone, [paths[i] for i in keep], None), rtol=1e-5, atol=1e-5)
    with pytest.raises(Exception, match="rank"):
        reader.fill(paths, part=(3, 3))


def test_a_bounded_number_of_files_and_shards_taken_over(tmp_path):
    """Rows roll over at the shard limit: N entries fill N x row bytes / limit shards (two files each)
    plus meta.json; a writer that comes later fills the shard an earlier one left with room."""
    limit, n = 4096, 1000  # 32 rows of 128 bytes a shard
    digests = [f"{i:064x}" for i in range(n)]
    for part in range(4):  # four writers one after the other, as four runs would
        store = FeatureStore(tmp_path / "k", (DIM,), {"shape": [DIM]}, limit)
        mine = digests[part::4]
        for start in range(0, len(mine), 10):
            store.put(mine[start:start + 10], np.stack([rows_of(d) for d in mine[start:start + 10]]))
        store.close()
    shards = -(-n * 4 * DIM // limit)
    assert len(files(tmp_path / "k")) <= 2 * (shards + 1) + 1
    lookup = FeatureStore(tmp_path / "k", (DIM,)).get(digests)
    assert lookup.found.all() and not lookup.damaged
    np.testing.assert_array_equal(lookup.rows, np.stack([rows_of(d) for d in digests]))


WRITER = """
import sys, time
from pathlib import Path
import numpy as np
from cpt.data.store import FeatureStore
folder, go, seed = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
digests = [f"{i:064x}" for i in range(1500)]
rng = np.random.default_rng(seed)
store = FeatureStore(folder, (32,), {"shape": [32]}, 2048)
while not go.exists():
    time.sleep(0.005)
start = 0
while start < len(digests):  # batches of 1-20, every writer over all digests, checking what it reads
    batch = digests[start:start + int(rng.integers(1, 21))]
    start += len(batch)
    found = store.get(batch)
    assert not found.damaged, found.damaged
    for d, row, ok in zip(batch, found.rows, found.found):
        assert not ok or np.array_equal(row, np.random.default_rng(int(d, 16)).standard_normal(32).astype(np.float32))
    todo = [d for d, ok in zip(batch, found.found) if not ok]
    if todo:
        store.put(todo, np.stack([np.random.default_rng(int(d, 16)).standard_normal(32).astype(np.float32) for d in todo]))
"""


def test_writers_racing_on_one_store(tmp_path):
    """Three processes write the same 1,500 entries at once, through shards of 16 rows they take
    over from each other: every entry ends whole and right, none damaged, the file count bounded."""
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "k"), str(go), str(seed)],
                              stderr=subprocess.PIPE, text=True) for seed in range(3)]
    time.sleep(0.5)
    go.touch()
    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
    digests = [f"{i:064x}" for i in range(1500)]
    lookup = FeatureStore(tmp_path / "k", (DIM,)).get(digests)
    assert lookup.found.all() and not lookup.damaged
    np.testing.assert_array_equal(lookup.rows, np.stack([rows_of(d) for d in digests]))
    stored = sum(os.path.getsize(p) for p in (tmp_path / "k").glob(f"*{ROWS}")) // (4 * DIM)
    assert 1500 <= stored <= 3 * 1500  # duplicates only where writers raced on the same digests
    assert len(files(tmp_path / "k")) <= 2 * (-(-stored * 4 * DIM // 2048) + 3) + 1


FIT = """
import sys, time, json
from pathlib import Path
from cpt.core.backbone import load_backbone
from cpt.data.features import AugmentSpec, FeatureCache
clip, folder, rank = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
paths = [Path(p) for p in (folder / "list.txt").read_text().split()]
backbone = load_backbone(clip, "cpu")
counts = {}
for step, how in enumerate(("parts", "everything")):  # both processes start each step together
    (folder / f"ready-{step}-{rank}").touch()
    while not all((folder / f"ready-{step}-{r}").exists() for r in (0, 1)):
        time.sleep(0.002)
    cache = FeatureCache(backbone, folder / how, batch_size=3, shard_bytes=1024)
    for aug in (None, AugmentSpec(views=2)):
        if how == "parts":
            cache.fill(paths, aug, part=(rank, 2))
        else:
            cache.features(paths, aug)
    counts[how] = {"encoded": cache.stats.encoded, "repaired": cache.stats.repaired}
print(json.dumps(counts))
"""


@pytest.mark.slow  # two processes importing torch: 10-30 s on 2 busy cores
def test_two_processes_filling_one_cache_at_once(tiny_clip, tmp_path):
    """Two processes fill one cache at once, each its own part of the images (as ranks do), then
    another cache, both all of the images (as two `cpt fit` runs do): each cache then holds every
    image's right features, none damaged."""
    backbone = load_backbone(str(tiny_clip), "cpu")
    paths = images(tmp_path / "img", 16)
    (tmp_path / "list.txt").write_text("\n".join(map(str, paths)))
    procs = [subprocess.Popen([sys.executable, "-c", FIT, str(tiny_clip), str(tmp_path), str(rank)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    assert all(r[how]["repaired"] == 0 for r in results for how in r)
    assert [r["parts"]["encoded"] for r in results] == [16, 16]  # 8 images x (eval + augmented) each
    assert all(16 <= r["everything"]["encoded"] <= 32 for r in results)
    for how in ("parts", "everything"):
        reader = FeatureCache(backbone, tmp_path / how)
        for aug in (None, AugmentSpec(views=2)):
            torch.testing.assert_close(reader.features(paths, aug), direct(backbone, paths, aug), rtol=1e-5, atol=1e-5)
        assert (reader.stats.encoded, reader.stats.repaired) == (0, 0)


def test_a_truncated_shard_and_a_half_written_record(tiny_clip, tmp_path, caplog):
    """What a writer killed mid-append leaves: rows cut short and half an index record. The cut rows
    are found damaged and encoded again; the half record is ignored; the next writer cuts the tail."""
    backbone = load_backbone(str(tiny_clip), "cpu")
    paths = images(tmp_path / "img", 6)
    want = FeatureCache(backbone, tmp_path / "c").features(paths)
    [rows] = list((tmp_path / "c").rglob(f"*{ROWS}"))
    index = rows.with_suffix(INDEX)
    row_bytes = 4 * DIM
    with open(rows, "r+b") as fh:  # the last row and a half gone
        fh.truncate(rows.stat().st_size - row_bytes - row_bytes // 2)
    with open(index, "ab") as fh:  # half a record of a seventh image
        fh.write(RECORD.itemsize // 2 * b"\x07")
    cache = FeatureCache(backbone, tmp_path / "c")
    torch.testing.assert_close(cache.features(paths), want, rtol=1e-5, atol=1e-5)
    assert (cache.stats.encoded, cache.stats.cached, cache.stats.repaired) == (2, 4, 2)
    assert sum("damaged feature cache entry" in r.message for r in caplog.records) == 2
    assert rows.stat().st_size % row_bytes == 0 and index.stat().st_size % RECORD.itemsize == 0  # tails cut
    again = FeatureCache(backbone, tmp_path / "c")
    torch.testing.assert_close(again.features(paths), want, rtol=1e-5, atol=1e-5)
    assert (again.stats.encoded, again.stats.repaired) == (0, 0)


def test_compaction_keeps_every_entry_in_fewer_files(tmp_path):
    folder = tmp_path / "features" / "k"
    digests = [f"{i:064x}" for i in range(300)]
    stores = [FeatureStore(folder, (DIM,), {"shape": [DIM]}, 1 << 20) for _ in range(3)]
    for k, store in enumerate(stores):  # three writers at once: three shards
        mine = digests[k::3]
        store.put(mine, np.stack([rows_of(d) for d in mine]))
    damaged = stored_entries(tmp_path)[0]
    damaged.write(np.full(DIM, np.nan))
    for store in stores:
        store.close()
    before, after = compact(folder, 1 << 20)
    assert before == 7 and after == 3  # meta.json + one shard
    lookup = FeatureStore(folder, (DIM,)).get(digests)
    assert not lookup.damaged and lookup.found.sum() == 299 and not lookup.found[digests.index(damaged.digest)]
    np.testing.assert_array_equal(lookup.rows[lookup.found], np.stack([rows_of(d) for d in digests if d != damaged.digest]))


def test_cpt_cache_lists_and_prunes(tiny_clip, tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("CPT_CACHE", str(root))  # what `cpt cache` reads without --cache-dir
    backbone = load_backbone(str(tiny_clip), "cpu")
    paths = images(tmp_path / "img", 5)
    cache = FeatureCache(backbone, batch_size=2, shard_bytes=200)  # a put of two rows fills a shard
    cache.features(paths)
    cache.features(paths[:2], AugmentSpec(views=2))
    cache.close()
    code, out, err = cli("cache", "--json")
    assert code == 0, err
    listing = json.loads(out)
    keys = {k["view"]: k for k in listing["keys"]}
    assert set(keys) == {"eval", "2 views (crop 0.08-1, flip)"}
    assert (keys["eval"]["entries"], keys["eval"]["files"]) == (5, 7)  # meta.json + 3 shards
    assert keys["eval"]["backbone"] == "tiny-vit.pt" and keys["eval"]["sha256"] == backbone.checksum
    assert keys["eval"]["bytes"] == sum(p.stat().st_size for p in files(root / "features" / keys["eval"]["key"]))
    assert listing["entries"] == 7 and listing["files"] == sum(k["files"] for k in listing["keys"])

    code, _, err = cli("cache", "prune")
    assert code == 2 and "--older-than" in err
    code, _, err = cli("cache", "--all")
    assert code == 2 and "only applies to `cpt cache prune`" in err

    code, out, err = cli("cache", "prune", "--compact", "--json")
    assert code == 0, err
    compacted = {c["key"]: c for c in json.loads(out)["compacted"]}
    assert compacted[keys["eval"]["key"]]["files_after"] == 3
    again = FeatureCache(backbone)
    again.features(paths)
    assert (again.stats.encoded, again.stats.cached) == (0, 5)

    eval_folder = root / "features" / keys["eval"]["key"]
    long_ago = time.time() - 40 * 86400
    for path in [*files(eval_folder), eval_folder]:
        os.utime(path, (long_ago, long_ago))
    code, out, err = cli("cache", "prune", "--older-than", "30", "--dry-run", "--json")
    assert [k["key"] for k in json.loads(out)["removed"]] == [keys["eval"]["key"]] and eval_folder.exists()
    code, out, err = cli("cache", "prune", "--older-than", "30", "--json")
    assert code == 0 and not eval_folder.exists()
    code, out, err = cli("cache", "prune", "--backbone", "tiny-vit", "--cache-dir", tmp_path / "elsewhere", "--json")
    assert code == 0 and json.loads(out)["removed"] == []
    code, out, err = cli("cache", "prune", "--backbone", backbone.checksum[:8], "--json")
    assert [k["view"] for k in json.loads(out)["removed"]] == ["2 views (crop 0.08-1, flip)"]
    assert not list((root / "features").iterdir())
