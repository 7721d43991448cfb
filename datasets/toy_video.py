"""The toy video world (recipe `toy-video`): two-second clips of toy objects, one event each.

A clip is 16 frames at 8 fps of the toy world's scenes (toy_world: its shapes, COLOURS and
backgrounds, SIZE x SIZE pixels, the shipped toy CLIP's resolution), written as a real mp4
file (MPEG-4 Part 2 at a fixed fine quantiser, yuv420p) with 2-3 captions in varied words.
One or two objects take part in an event: an object moves left, right, up or down; appears
or disappears; changes colour from A to B; grows or shrinks; becomes two (or one of two goes);
or one object appears, then another.

Order and direction matter, and no single frame or average of frames tells them apart:
clips come in twins, each the other played backwards ("moves left" / "moves right" over the
same positions, "from red to blue" / "from blue to red", "appears" / "disappears", "small,
then large" / "large, then small", "one, then two" / "two, then one", "X appears, then Y" / "Y
appears, then X"). The twins hold the same multiset of frames, so
mean pooling of frame features gives both one video embedding while their captions differ:
only a model of time can match them. Twins are videos 2k and 2k+1 and share a split.

The shipped toy CLIP was pretrained on still scenes: words such as "left", "moves", "appears"
or "then" have no embedding in it (their rows are zero), so the captions of a moving or
appearing twin pair encode alike in it, and only the colour, size, count and sequence twins
(whose captions order words it knows) can be told apart by any method on `--backbone toy`.

Layout: `videos/<id>.mp4` and `captions.jsonl`, one line per caption:
{"video": "videos/<id>.mp4", "caption": "...", "split": "train" | "val" | "test"}.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
from cpt_datasets import recipes
from cpt_datasets import toy_world as W

from cpt.data.video import write_video
from cpt.io import write_text

FPS = 8
LENGTH = 16  # frames per clip: two seconds
SPLITS = {"train": 768, "val": 64, "test": 128}  # videos per split; even, as twins share a split

Side = tuple[str, dict[str, str]]  # an event's name and the words its captions are filled with
Twin = tuple[list[W.Scene], Side, Side]  # a clip's scenes, its event, the event of it played backwards

TEMPLATES: dict[str, tuple[str, ...]] = {
    "moves left": ("{a_o} moves to the left", "the {o} slides left", "{o} moving left",
                   "{a_o} travels from right to left"),
    "moves right": ("{a_o} moves to the right", "the {o} slides right", "{o} moving right",
                    "{a_o} travels from left to right"),
    "moves up": ("{a_o} moves up", "the {o} rises to the top", "{o} moving upwards",
                 "{a_o} travels from bottom to top"),
    "moves down": ("{a_o} moves down", "the {o} sinks to the bottom", "{o} moving downwards",
                   "{a_o} travels from top to bottom"),
    "appears": ("{a_o} appears", "the {o} shows up", "{o} appearing", "{a_o} comes into view"),
    "disappears": ("{a_o} disappears", "the {o} vanishes", "{o} disappearing", "{a_o} goes out of view"),
    "changes colour": ("{a_shape} changes from {first} to {second}", "the {shape} turns from {first} to {second}",
                       "{first} {shape} becoming {second}", "{a_shape} switching colour from {first} to {second}"),
    "changes size": ("{a_first} {o} becoming {second}", "{first} {o}, then {second}", "the {o} goes from {first} to "
                     "{second}", "{a_first} {o} turning {second}"),
    "changes count": ("{first} {os}, then {second}", "{first} {o_n1} becoming {second}", "from {first} {o_n1} to "
                      "{second}", "{first} {o_n1} turning into {second}"),
    "one after the other": ("{a_x} appears, then {a_y}", "first {a_x}, then {a_y}", "{x} followed by {y}",
                            "{a_x} shows up before {a_y}"),
}


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _words(**phrases: str) -> dict[str, str]:
    """Caption fields: each phrase bare and, as `a_NAME`, with its article."""
    return {**phrases, **{f"a_{k}": _article(v) for k, v in phrases.items()}}


def _object(rng: np.random.Generator, centre: tuple[int, int], radius: int, colour: str | None = None) -> W.Object:
    colour = colour or list(W.COLOURS)[rng.integers(len(W.COLOURS))]
    return W.Object(W.SHAPES[rng.integers(len(W.SHAPES))], colour, centre, radius)


def _name(obj: W.Object) -> str:
    return f"{obj.colour} {obj.shape}"


def _path(rng: np.random.Generator, radius: int) -> tuple[list[int], int]:
    """LENGTH positions crossing the frame along one axis (increasing), and a fixed other coordinate."""
    travel = np.linspace(radius + 1, W.SIZE - 2 - radius, LENGTH).round().astype(int).tolist()
    return travel, int(rng.integers(radius + 1, W.SIZE - 1 - radius))


def _moves(rng: np.random.Generator, backdrop: W.Scene, vertical: bool) -> Twin:
    """An object crossing the frame: right (down) forwards, left (up) backwards."""
    radius = int(rng.integers(5, 8))
    travel, fixed = _path(rng, radius)
    obj = _object(rng, (0, 0), radius)
    centres = [(fixed, p) if vertical else (p, fixed) for p in travel]
    scenes = [W.Scene((W.Object(obj.shape, obj.colour, c, radius),), backdrop.texture, backdrop.shade) for c in centres]
    words = _words(o=_name(obj))
    forward, backward = ("moves down", "moves up") if vertical else ("moves right", "moves left")
    return scenes, (forward, words), (backward, words)


def _horizontal(rng: np.random.Generator, backdrop: W.Scene) -> Twin:
    return _moves(rng, backdrop, vertical=False)


def _vertical(rng: np.random.Generator, backdrop: W.Scene) -> Twin:
    return _moves(rng, backdrop, vertical=True)


def _centre(rng: np.random.Generator, radius: int, cell: int) -> tuple[int, int]:
    """A centre in one half (cell 0: left, 1: right) of the frame, clear of the edges."""
    half = W.SIZE // 2
    x = int(rng.integers(radius + 1, half - radius)) + cell * half
    return x, int(rng.integers(radius + 1, W.SIZE - 1 - radius))


def _appearance(rng: np.random.Generator, backdrop: W.Scene) -> Twin:
    """An object absent in the first half and present in the second: appears; backwards, disappears."""
    radius = int(rng.integers(5, 8))
    obj = _object(rng, _centre(rng, radius, int(rng.integers(2))), radius)
    empty, shown = backdrop, W.Scene((obj,), backdrop.texture, backdrop.shade)
    words = _words(o=_name(obj))
    return [empty] * (LENGTH // 2) + [shown] * (LENGTH // 2), ("appears", words), ("disappears", words)


def _colour(rng: np.random.Generator, backdrop: W.Scene) -> Twin:
    """An object that turns from one colour to another halfway; backwards, the other way round."""
    radius = int(rng.integers(5, 8))
    first, second = (list(W.COLOURS)[i] for i in rng.choice(len(W.COLOURS), 2, replace=False))
    obj = _object(rng, _centre(rng, radius, int(rng.integers(2))), radius, first)
    turned = W.Object(obj.shape, second, obj.centre, radius)
    scenes = [W.Scene((o,), backdrop.texture, backdrop.shade) for o in [obj] * (LENGTH // 2) + [turned] * (LENGTH // 2)]
    return (scenes, ("changes colour", _words(shape=obj.shape, first=first, second=second)),
            ("changes colour", _words(shape=obj.shape, first=second, second=first)))


def _size(rng: np.random.Generator, backdrop: W.Scene) -> Twin:
    """An object that is small in the first half and large in the second; backwards, large then small.
    The toy CLIP knows "small" and "large": the twins' captions differ in the order of known words."""
    small, large = int(rng.integers(4, 6)), int(rng.integers(8, 10))
    centre = int(rng.integers(large + 1, W.SIZE - 1 - large)), int(rng.integers(large + 1, W.SIZE - 1 - large))
    obj = _object(rng, centre, small)
    grown = W.Object(obj.shape, obj.colour, obj.centre, large)
    scenes = [W.Scene((o,), backdrop.texture, backdrop.shade) for o in [obj] * (LENGTH // 2) + [grown] * (LENGTH // 2)]
    return (scenes, ("changes size", _words(o=_name(obj), first="small", second="large")),
            ("changes size", _words(o=_name(obj), first="large", second="small")))


def _count(rng: np.random.Generator, backdrop: W.Scene) -> Twin:
    """One object in the first half, two of it in the second (a copy in the other half); backwards,
    two then one. The count words are the toy CLIP's."""
    radius = int(rng.integers(4, 7))
    left = int(rng.integers(2))
    obj = _object(rng, _centre(rng, radius, left), radius)
    copy = W.Object(obj.shape, obj.colour, _centre(rng, radius, 1 - left), radius)
    one, two = W.Scene((obj,), backdrop.texture, backdrop.shade), W.Scene((obj, copy), backdrop.texture, backdrop.shade)
    name = _name(obj)
    words = {"o": name, "os": W.plural(name), "o_n1": name}
    return ([one] * (LENGTH // 2) + [two] * (LENGTH // 2), ("changes count", {**words, "first": "one", "second": "two"}),
            ("changes count", {**words, "first": "two", "second": "one"}))


def _sequence(rng: np.random.Generator, backdrop: W.Scene) -> Twin:
    """Nothing, then object X, then object Y in the other half, then nothing: X appears, then Y;
    backwards, Y appears, then X. The two objects differ in colour, so the words tell them apart."""
    radius = int(rng.integers(4, 7))
    left = int(rng.integers(2))
    x = _object(rng, _centre(rng, radius, left), radius)
    y = _object(rng, _centre(rng, radius, 1 - left), radius,
                [c for c in W.COLOURS if c != x.colour][rng.integers(len(W.COLOURS) - 1)])
    edge, middle = 2, (LENGTH - 4) // 2
    scenes = ([backdrop] * edge + [W.Scene((x,), backdrop.texture, backdrop.shade)] * middle
              + [W.Scene((y,), backdrop.texture, backdrop.shade)] * middle + [backdrop] * edge)
    return (scenes, ("one after the other", _words(x=_name(x), y=_name(y))),
            ("one after the other", _words(x=_name(y), y=_name(x))))


EVENTS: tuple[Callable[[np.random.Generator, W.Scene], Twin], ...] = (
    _horizontal, _vertical, _appearance, _colour, _size, _count, _sequence)


def _backdrop(rng: np.random.Generator) -> W.Scene:
    """An empty scene: the clip's background (texture and grey level)."""
    return W.Scene((), W.TEXTURES[rng.integers(len(W.TEXTURES))], int(rng.integers(60, 130)))


def render_clip(scenes: list[W.Scene], noise: int) -> list[np.ndarray]:
    """(SIZE, SIZE, 3) uint8 frames of `scenes`, each drawn with the same noise seed so that the
    background and an object's colour stay still from frame to frame."""
    return [np.asarray(W.render(scene, np.random.default_rng(noise))) for scene in scenes]


def _captions(side: Side, rng: np.random.Generator) -> list[str]:
    """2 or 3 of the event's templates, filled in."""
    event, words = side
    templates = TEMPLATES[event]
    picked = sorted(rng.choice(len(templates), int(rng.integers(2, 4)), replace=False).tolist())
    return [templates[i].format(**words) for i in picked]


def _check(n: dict[str, int]) -> None:
    for split, count in n.items():
        if split not in SPLITS or count < 0 or count % 2:
            raise ValueError(f"toy-video split {split}={count}: splits are {list(SPLITS)}, "
                             "each with an even number of videos (twins share a split)")


def build(folder: Path, seed: int = 0, n: dict[str, int] | None = None) -> None:
    """Write the toy videos and captions.jsonl into `folder` (new), deterministic by `seed`."""
    n = SPLITS if n is None else n
    _check(n)
    (folder / "videos").mkdir(parents=True)
    rows, index = [], 0
    for s, (split, count) in enumerate(n.items()):
        for j in range(count // 2):
            rng = np.random.default_rng([seed, s, j])
            scenes, forward, backward = EVENTS[j % len(EVENTS)](rng, _backdrop(rng))
            frames = render_clip(scenes, int(rng.integers(2**31)))
            clips = [(frames, forward), (frames[::-1], backward)]
            for clip, side in clips[:: 1 if rng.random() < 0.5 else -1]:  # either may come first
                video = f"videos/{index:04d}.mp4"
                write_video(folder / video, clip, FPS)
                rows += [{"video": video, "caption": c, "split": split} for c in _captions(side, rng)]
                index += 1
    write_text(folder / "captions.jsonl", "".join(json.dumps(row) + "\n" for row in rows))


def materialize_toy_video(root: Path, seed: int = 0, n: dict[str, int] | None = None) -> list[tuple[str, Path]]:
    """The toy video world under `root/toy-video`, built once (the first build's seed and sizes
    stay until the folder is removed)."""
    folder = recipes._materialise(root, "toy-video", lambda tmp: build(tmp, seed, n))
    return [("toy-video", folder)]
