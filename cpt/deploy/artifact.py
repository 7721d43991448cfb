"""A trained run as a standalone classifier: one class-embedding matrix per task.

After training the prompts are constant, so the text side collapses to `Classifier`s
(weight, scale, bias, and Tip-Adapter's key-value cache) per task. An `Artifact` is those plus what is needed to use them:
class and task names, the backbone's identity and the preprocessing. `cpt export` writes it,
`cpt predict` reads it (or builds it from a run directory on the fly).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from cpt import __version__
from cpt import run as R
from cpt.core.backbone import Backbone, load_backbone
from cpt.errors import CptError
from cpt.io import short_reason
from cpt.methods import Classifier, Method, build_method
from cpt.methods.base import KeyValueCache

FORMAT = "cpt-classifier/2"


@dataclass
class Artifact:
    """Per-task frozen classifiers and everything needed to apply them to images."""

    tasks: list[str]
    classnames: list[list[str]]
    classifiers: list[Classifier]
    backbone: dict  # spec, sha256, precision, geometry
    preprocess: dict  # resolution, mean, std, interpolation
    method: str
    kind: str = "single-label"  # the task kind: how logits decode (softmax top-k, or sigmoid threshold)
    image_tuned: bool = False  # trained its image encoder: only exports that carry the encoder hold it
    image_encoder: nn.Module | None = None  # the run's image encoder when it is not the backbone's (MaPLe's prompts)

    def task_index(self, task: str | None) -> list[int]:
        """Indices of the tasks to use: the named one, or all."""
        if task is None:
            return list(range(len(self.tasks)))
        if task not in self.tasks:
            raise CptError(f"--task {task!r} is not one of this classifier's tasks: {', '.join(self.tasks)}.")
        return [self.tasks.index(task)]

    def to_dict(self) -> dict:
        """Plain tensors, strings and numbers: loads with `torch.load(weights_only=True)`."""
        return {
            "format": FORMAT,
            "cpt_version": __version__,
            "method": self.method,
            "kind": self.kind,
            "backbone": self.backbone,
            "preprocess": self.preprocess,
            "tasks": [
                {"name": name, "classnames": names, "weight": c.weight, "scale": c.scale, "bias": c.bias,
                 "cache": None if c.cache is None else asdict(c.cache)}
                for name, names, c in zip(self.tasks, self.classnames, self.classifiers)
            ],
        }

    @classmethod
    def from_dict(cls, d: object) -> "Artifact":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            found = f"format {d.get('format')!r}" if isinstance(d, dict) else f"a {type(d).__name__}"
            raise CptError(f"This file is not a cpt classifier export ({found}, expected {FORMAT}).")
        try:
            return cls(
                tasks=[t["name"] for t in d["tasks"]],
                classnames=[list(t["classnames"]) for t in d["tasks"]],
                classifiers=[Classifier(t["weight"], t["scale"], t["bias"], _cache(t.get("cache"))) for t in d["tasks"]],
                backbone=dict(d["backbone"]),
                preprocess=dict(d["preprocess"]),
                method=d["method"],
                kind=d["kind"],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CptError(f"This cpt classifier export is incomplete or damaged (missing or bad {exc}).") from exc


def _cache(d: dict | None) -> KeyValueCache | None:
    return None if d is None else KeyValueCache(d["keys"], d["values"], float(d["alpha"]), float(d["beta"]))


def _artifact(backbone: Backbone, method: Method, tasks: list[str], kind: str, image_tuned: bool = False) -> Artifact:
    d = backbone.describe()
    return Artifact(
        tasks=tasks,
        classnames=method.classnames,
        classifiers=method.classifiers(),
        backbone={k: d[k] for k in ("spec", "pretrained", "sha256", "precision", "geometry") if k in d},
        preprocess=d["preprocess"],
        method=method.name,
        kind=kind,
        image_tuned=image_tuned,
        image_encoder=method.image_encoder(),
    )


def from_run(run: Path, device: str | None = None) -> tuple[Artifact, Backbone]:
    """The run's classifiers (text features computed once, here)."""
    config, backbone, method = R.load_run(run, device)
    return _artifact(backbone, method, [t["name"] for t in config["tasks"]], config["kind"], method.tunes_image()), backbone


def zero_shot(backbone_spec: str, classes: Path, templates: list[str] | None = None, device: str = "auto",
              clip_cache: str | None = None) -> tuple[Artifact, Backbone]:
    """A zero-shot classifier from a class-name file (one name per line), built from templates."""
    names = read_class_names(Path(classes))
    backbone = load_backbone(backbone_spec, device, "fp32", clip_cache)
    method = build_method("zeroshot", backbone, [names], {"template": templates or None})
    return _artifact(backbone, method, [Path(classes).stem], "single-label"), backbone


def read_class_names(path: Path) -> list[str]:
    """Class names from a text file, one per line (underscores read as spaces): at least two, each once."""
    if not path.is_file():
        raise CptError(f"--classes {path} does not exist; give a text file with one class name per line.")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise CptError(f"--classes {path} is not a UTF-8 text file; give one class name per line.") from exc
    names = [line.strip().replace("_", " ") for line in lines if line.strip()]
    seen: set[str] = set()
    twice = [n for n in names if n in seen or seen.add(n)]
    if twice:
        raise CptError(f"--classes {path} names {twice[0]!r} more than once; give each class once.")
    if len(names) < 2:
        raise CptError(f"--classes {path} holds {len(names) or 'no'} class name{'s' if not names else ''}; a "
                       "classifier needs at least two, one per line.")
    return names


def load(path: Path, device: str = "auto", clip_cache: str | None = None) -> tuple[Artifact, Backbone]:
    """A run directory or an exported .pt, with its backbone loaded (checksum verified)."""
    path = Path(path)
    if (path / R.CONFIG).exists():
        return from_run(path, device)
    if not path.is_file():
        raise CptError(f"{path} is neither a cpt run directory nor an exported classifier (.pt).")
    try:  # code-free: an export from someone else cannot run code
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on old pickle protocols: the error says it all
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # text, a pickle of other objects, a truncated file: many exception types
        raise CptError(f"Could not read {path} as a cpt classifier export: it is not a file `cpt export --format pt` "
                       f"wrote, or it is damaged ({short_reason(exc)}).") from exc
    try:
        artifact = Artifact.from_dict(payload)
    except CptError as exc:
        raise CptError(f"{path}: {exc}") from exc
    backbone = load_backbone(artifact.backbone["spec"], device, artifact.backbone["precision"], clip_cache,
                             artifact.backbone.get("pretrained"))
    R.check_backbone(backbone, artifact.backbone["sha256"], f"the classifier {path}")
    return artifact, backbone
