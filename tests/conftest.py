"""Shared fixtures and helpers: a tiny random CLIP saved as a real checkpoint file, image folders
on disk, and the real CLI invoked in-process."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from clip.model import CLIP
from cpt_cli.main import app
from PIL import Image
from typer.testing import CliRunner

from cpt import run as R

# Visually separable classes: distinct colours, so even a random image encoder separates them.
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (40, 70, 220),
    "yellow_ochre": (230, 210, 40),
}

TINY_VIT = dict(
    embed_dim=32, image_resolution=32, vision_layers=2, vision_width=64, vision_patch_size=8,
    context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1, transformer_layers=2,
)
TINY_RN = dict(
    embed_dim=32, image_resolution=32, vision_layers=(1, 1, 1, 1), vision_width=64, vision_patch_size=None,
    context_length=40, vocab_size=49408, transformer_width=128, transformer_heads=2, transformer_layers=3,
)


def make_clip(geometry: dict, seed: int = 0) -> CLIP:
    torch.manual_seed(seed)
    return CLIP(**geometry).eval()


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    """A tiny random ViT CLIP saved as a state dict (loads through clip.load like a real checkpoint)."""
    path = tmp_path_factory.mktemp("clip") / "tiny-vit.pt"
    torch.save(make_clip(TINY_VIT).state_dict(), path)
    return path


@pytest.fixture(scope="session")
def tiny_rn_clip(tmp_path_factory) -> Path:
    """A tiny random ResNet CLIP with another text geometry (width 128, 3 layers, context 40)."""
    path = tmp_path_factory.mktemp("clip") / "tiny-rn.pt"
    torch.save(make_clip(TINY_RN).state_dict(), path)
    return path


def write_image(path: Path, colour: tuple[int, int, int], rng: np.random.Generator, size: int = 24) -> Path:
    """A noisy solid-colour PNG with a random darker square, so no two images are identical."""
    pixels = np.clip(np.array(colour) + rng.normal(0, 18, (size, size, 3)), 0, 255)
    x, y = rng.integers(0, size // 2, 2)
    pixels[y : y + size // 3, x : x + size // 3] *= 0.6
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


def colour_folder(root: Path, per_class: int = 12, classes: dict | None = None, seed: int = 0, split: bool = False) -> Path:
    """A folder of class sub-folders (or train/ val/ test/ when `split`) of colour images."""
    rng = np.random.default_rng(seed)
    classes = classes or COLOURS
    for name, colour in classes.items():
        if split:
            for sub, n in (("train", per_class), ("val", max(per_class // 4, 1)), ("test", max(per_class // 2, 1))):
                for i in range(n):
                    write_image(root / sub / name / f"{name}_{i:03d}.png", colour, rng)
        else:
            for i in range(per_class):
                write_image(root / name / f"{name}_{i:03d}.png", colour, rng)
    return root


def session_cache(tmp_path_factory) -> Path:
    """The session's feature cache (what the autouse `_feature_cache` points CPT_CACHE at in each test)."""
    return tmp_path_factory.getbasetemp() / "feature-cache"


def two_colour_rows(data: Path) -> list[str]:
    """Eight images under data/img mixing red and blue (every combination, at least red) and
    their wide-CSV rows `path,red,blue` (paths relative to `data`), for tiny multi-label tasks."""
    rng = np.random.default_rng(0)
    colours = {"red": (220, 40, 40), "blue": (40, 70, 220)}
    rows = []
    for i in range(8):
        present = [name for j, name in enumerate(colours) if (i >> j) & 1] or ["red"]
        mix = np.mean([colours[c] for c in present], axis=0).astype(int)
        path = write_image(data / "img" / f"{i}.png", tuple(mix), rng).relative_to(data)
        rows.append(f"{path},{int('red' in present)},{int('blue' in present)}\n")
    return rows


@pytest.fixture(autouse=True)
def _feature_cache(tmp_path_factory, monkeypatch) -> Path:
    """One feature cache per test session (tests that count encodes pass their own --cache-dir)."""
    root = session_cache(tmp_path_factory)
    monkeypatch.setenv("CPT_CACHE", str(root))
    return root


@pytest.fixture(scope="session")
def colours(tmp_path_factory) -> Path:
    """A train/val/test colour task (4 classes) shared by tests that only read it."""
    return colour_folder(tmp_path_factory.mktemp("data") / "colours", per_class=12, split=True)


runner = CliRunner()


def cli(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def fit_json(*args: str) -> dict:
    code, out, err = cli("fit", *args, "--json", "--quiet")
    assert code == 0, err
    return json.loads(out)


def interrupt_after(monkeypatch, saves: int) -> None:
    """Make the run's `saves`-th checkpoint save raise KeyboardInterrupt (as Ctrl-C would) once it is written."""
    original, count = R.save_checkpoint, {"n": 0}

    def save_then_interrupt(run, payload):
        original(run, payload)
        count["n"] += 1
        if count["n"] == saves:
            monkeypatch.setattr(R, "save_checkpoint", original)
            raise KeyboardInterrupt

    monkeypatch.setattr(R, "save_checkpoint", save_then_interrupt)


@dataclass(frozen=True)
class Fitted:
    """A finished run: its directory and the summary `cpt fit --json` printed."""

    run: Path
    summary: dict


@pytest.fixture(scope="session")
def toy_ml_zeroshot(tmp_path_factory) -> Fitted:
    """`cpt fit --method zeroshot --tasks toy-ml --backbone toy` (defaults: known ratio 1, seed 1), run once
    per session. Tests may re-evaluate it (`cpt eval` writes the same figures back) but must not change it."""
    run = tmp_path_factory.mktemp("toy-ml") / "zeroshot"
    with pytest.MonkeyPatch.context() as mp:  # the session's cache: the autouse fixture is per test
        mp.setenv("CPT_CACHE", str(session_cache(tmp_path_factory)))
        summary = fit_json("--method", "zeroshot", "--tasks", "toy-ml", "--backbone", "toy", "--out", run)
    return Fitted(run, summary)


def accuracy(summary: dict, task: str = "colours") -> float:
    return next(m["value"] for m in summary["metrics"] if m["task"] == task and m["metric"] == "accuracy")


@dataclass(frozen=True)
class StoredEntry:
    """One record of the feature store under a cache root: where its row lies, to read or damage it."""

    rows: Path  # the shard's .rows file
    row: int
    shape: tuple[int, ...]
    digest: str
    record: int  # its place in the shard's .index file

    @property
    def index(self) -> Path:
        return self.rows.with_suffix(".index")

    @property
    def offset(self) -> int:
        return self.row * 4 * int(np.prod(self.shape))

    def read(self) -> np.ndarray:
        return np.fromfile(self.rows, np.float32, int(np.prod(self.shape)), offset=self.offset).reshape(self.shape)

    def write(self, values: np.ndarray) -> None:
        """Overwrite the row in place (as a failing disk or a hand edit would)."""
        with open(self.rows, "r+b") as fh:
            fh.seek(self.offset)
            fh.write(np.asarray(values, np.float32).tobytes())


def stored_entries(root: Path) -> list[StoredEntry]:
    """Every whole index record of the feature store under `root`, shard by shard."""
    from cpt.data.store import INDEX, ROWS, index_records, read_meta

    found = []
    for folder in sorted((root / "features").iterdir()):
        shape = tuple(read_meta(folder)["shape"])
        for index in sorted(folder.glob(f"*{INDEX}")):
            for n, record in enumerate(index_records(index)):
                found.append(StoredEntry(index.with_suffix(ROWS), int(record["row"]), shape, bytes(record["digest"]).hex(), n))
    return found
