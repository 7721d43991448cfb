"""The toy world: small synthetic scenes with captions, deterministic by seed.

A scene is a few objects of one shape and colour on a grey-scale textured background. The
captions a toy CLIP is pretrained on always tell the shape, usually the colour, and only
sometimes the count, the size or the background, in varied and occasionally wrong words.
So zero-shot CLIP knows shapes and colours fairly well and backgrounds and counts poorly;
the toy tasks also fade the objects towards the background (`fade`), which pretraining
never shows. Zero-shot is useful, far from perfect, and prompt tuning has room to help.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 32
SHAPES = ["circle", "square", "triangle", "cross", "diamond", "star"]
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (40, 70, 230),
    "yellow": (235, 220, 40),
    "purple": (140, 50, 190),
    "orange": (245, 140, 20),
    "cyan": (40, 210, 220),
    "pink": (250, 120, 190),
}
TEXTURES = ["plain", "striped", "dotted", "checkered"]
COUNT_WORDS = ["one", "two", "three", "four"]


@dataclass(frozen=True)
class Object:
    shape: str
    colour: str
    centre: tuple[int, int]
    radius: int


@dataclass(frozen=True)
class Scene:
    objects: tuple[Object, ...]
    texture: str
    shade: int  # background grey level
    fade: float = 0.0  # blend of the objects' colour towards the background grey (rare in pretraining)

    @property
    def count(self) -> int:
        return len(self.objects)


def _cells(n: int, rng: np.random.Generator, radius: int) -> list[tuple[int, int]]:
    """n non-overlapping object centres: one per random cell of a 2x2 grid, jittered."""
    cells = rng.permutation(4)[:n]
    half = SIZE // 2
    out = []
    for c in cells:
        cx, cy = (c % 2) * half + half // 2, (c // 2) * half + half // 2
        slack = max(half // 2 - radius, 0)
        out.append((int(cx + rng.integers(-slack, slack + 1)), int(cy + rng.integers(-slack, slack + 1))))
    return out


def make_scene(
    rng: np.random.Generator,
    shapes: list[str] | None = None,
    colours: list[str] | None = None,
    count: int | None = None,
    texture: str | None = None,
    fade: float = 0.0,
    radius: int | None = None,
) -> Scene:
    """A random scene; pass attributes to fix them (one shape and colour per scene unless lists give several)."""
    count = count or int(rng.integers(1, 5))
    shapes = shapes or [SHAPES[rng.integers(len(SHAPES))]]
    colours = colours or [list(COLOURS)[rng.integers(len(COLOURS))]]
    if radius is None:
        radius = int(rng.integers(6, 9)) if count == 1 else int(rng.integers(4, 6))
    objects = tuple(
        Object(shapes[i % len(shapes)], colours[i % len(colours)], centre, radius)
        for i, centre in enumerate(_cells(count, rng, radius))
    )
    texture = texture or TEXTURES[rng.integers(len(TEXTURES))]
    return Scene(objects, texture, int(rng.integers(60, 130)), fade)


def _background(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[:SIZE, :SIZE]
    base = np.full((SIZE, SIZE), float(scene.shade))
    if scene.texture == "striped":
        base += np.where((x + y) // 3 % 2 == 0, 45, -25)
    elif scene.texture == "dotted":
        base += np.where((x % 5 == 2) & (y % 5 == 2), 90, 0)
    elif scene.texture == "checkered":
        base += np.where((x // 4 + y // 4) % 2 == 0, 40, -30)
    base += rng.normal(0, 6, base.shape)
    return np.repeat(np.clip(base, 0, 255)[..., None], 3, axis=2).astype(np.uint8)


def _polygon(shape: str, cx: int, cy: int, r: int) -> list[tuple[float, float]]:
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if shape == "star":
        angles = np.linspace(-np.pi / 2, 1.5 * np.pi, 11)[:-1]
        radii = np.where(np.arange(10) % 2 == 0, r + 1, r * 0.45)
        return [(cx + q * np.cos(a), cy + q * np.sin(a)) for a, q in zip(angles, radii)]
    t = max(r // 3, 1)  # cross
    return [(cx - t, cy - r), (cx + t, cy - r), (cx + t, cy - t), (cx + r, cy - t), (cx + r, cy + t), (cx + t, cy + t),
            (cx + t, cy + r), (cx - t, cy + r), (cx - t, cy + t), (cx - r, cy + t), (cx - r, cy - t), (cx - t, cy - t)]


def render(scene: Scene, rng: np.random.Generator) -> Image.Image:
    """The scene as a SIZE x SIZE RGB image (background noise drawn from `rng`)."""
    image = Image.fromarray(_background(scene, rng))
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        colour = tuple(
            int(np.clip((1 - scene.fade) * c + scene.fade * scene.shade + rng.normal(0, 12), 0, 255))
            for c in COLOURS[obj.colour]
        )
        (cx, cy), r = obj.centre, obj.radius
        if obj.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        elif obj.shape == "square":
            draw.rectangle([cx - r + 1, cy - r + 1, cx + r - 1, cy + r - 1], fill=colour)
        else:
            draw.polygon(_polygon(obj.shape, cx, cy, r), fill=colour)
    return image


def plural(noun: str) -> str:
    return noun + ("es" if noun.endswith("s") else "s")


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """A noisy, partial caption: the shape always, the colour usually, the rest rarely."""
    first = scene.objects[0]
    colours = sorted({o.colour for o in scene.objects})
    shapes = sorted({o.shape for o in scene.objects})
    words = []
    if rng.random() < 0.15:
        words.append(COUNT_WORDS[scene.count - 1])
    if rng.random() < 0.2:
        words.append("small" if first.radius < 6 else "large")
    if rng.random() < 0.75:
        colour_words = list(colours)
        if rng.random() < 0.05:  # a wrong colour now and then
            colour_words = [list(COLOURS)[rng.integers(len(COLOURS))]]
        words.append(" and ".join(colour_words))
    words.append(" and ".join(shapes) if len(shapes) > 1 or scene.count == 1 else plural(shapes[0]))
    text = " ".join(words)
    if rng.random() < 0.2:
        text += f" on a {scene.texture} background"
    if rng.random() < 0.1:
        text = f"{COUNT_WORDS[scene.count - 1]} objects: {text}"
    return (["a photo of a", "a picture of", "an image of", "a drawing of", ""][rng.integers(5)] + " " + text).strip() + "."
