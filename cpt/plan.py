"""A `cpt fit` request and its resolution: which task kind, which method, every config.

Every option is declared once (cpt.options): the run's own here, the kinds' in cpt.kinds, the
training loop's and the cached views' beside them, each method's in its config. `fit_options`
gathers them for the CLI; `plan` resolves a request — over the declared defaults, the recipe's
presets, then the method's `--preset`, then the options given — and refuses what does not
apply, before anything is written.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cpt.core.backbone import PRECISIONS
from cpt.data.features import ViewOptions
from cpt.data.names import safe_name
from cpt.data.recipes import recipe
from cpt.data.taskfile import TaskSpec
from cpt.data.tasks import resolve_tasks
from cpt.errors import CptError
from cpt.kinds import KINDS, TaskKind
from cpt.methods import METHODS, Method, Preset, method_class
from cpt.options import Options, build, declared, default_of, flag, option, option_names
from cpt.train import TrainConfig

PANEL = "Run"


@dataclass
class FitRequest(Options):
    """What a `cpt fit` call asks for: the run's own settings, declared here, plus the kind,
    method, training and view options the user gave (`options`, by name). config.json keeps it,
    so `--resume` rebuilds the same run."""

    method: str = option("coop", "The method; `cpt methods` lists them with their options.", panel=PANEL)
    tasks: str = option("", "Tasks as NAME=PATH[,NAME=PATH...] (PATH: an image folder with train/ [val/] test/ or class "
                        "folders, a CSV path,label[,split], a CoOp split JSON SPLIT.json[@IMAGE_ROOT], or a folder with "
                        "multi-label train.csv and test.csv); a task file (.yaml/.json); or a recipe (`cpt data`).",
                        panel=PANEL)
    data_root: str | None = option(None, "Where benchmark recipes' datasets live [default: $CPT_DATA_ROOT or ~/data].",
                                   panel=PANEL)
    out: str = option("", "Run directory [default: runs/<method>-<tasks>-<shots>shot-seed<seed>, or "
                      "known<ratio> for multi-label tasks].", panel=PANEL)
    seed: int = option(1, "Seed of sampling, splits, initialisation and training order.", panel=PANEL, low=0,
                       high=2**31 - 1)
    backbone: str = option("RN50", "OpenAI CLIP name (RN50, ViT-B/16, ...), a checkpoint path, toy, or openclip:ARCH "
                           "(an OpenCLIP architecture, e.g. openclip:ViT-B-32, with --pretrained).", panel=PANEL)
    pretrained: str | None = option(None, "OpenCLIP weights of --backbone openclip:ARCH: a pretrained tag (e.g. "
                                    "laion2b_s34b_b79k, downloaded once) or a checkpoint file.", panel=PANEL)
    device: str = option("auto", "cpu, cuda, cuda:N or auto.", panel=PANEL)
    precision: str = option("fp32", "Precision of the frozen CLIP.", panel=PANEL, choices=tuple(PRECISIONS))
    cache_dir: str | None = option(None, "Feature cache [default: $CPT_CACHE or ~/.cache/cpt].", panel=PANEL)
    clip_cache: str | None = option(None, "Where OpenAI CLIP weights are downloaded [default: ~/.cache/clip].",
                                    panel=PANEL)
    encode_batch_size: int = option(64, "Images per image-encoder batch when filling the feature cache.", panel=PANEL,
                                    low=1)
    preset: str | None = option(None, "A published recipe of the method (its optimiser, schedule and settings; `cpt "
                                "methods NAME` lists them with their values); options you give override it.",
                                panel=PANEL)
    options: dict[str, Any] = field(default_factory=dict)  # kind, method, training and view options given

    def settings(self) -> dict[str, Any]:
        """The run's own settings by name (everything but `options`)."""
        return {f.name: getattr(self, f.name) for f in declared(FitRequest)}


def option_classes(method: type[Method], kind: TaskKind) -> list[type]:
    """The config classes whose options `method` reads on tasks of `kind`."""
    classes = [kind.Options, method.Config]
    if method.trains:
        classes.append(TrainConfig)
    if "views" in method.uses:
        classes.append(ViewOptions)
    return classes


def applicable(method: type[Method], kind: TaskKind) -> set[str]:
    """The options `method` accepts on tasks of `kind`: its configs' declarations, less the ones
    the method or the kind excludes (a shared declaration that does not fit them)."""
    return option_names(option_classes(method, kind)) - set(method.excludes) - set(kind.excludes)


@dataclass(frozen=True)
class OptionSpec:
    """One command-line option of `cpt fit`: its declaration and its default per owner."""

    name: str
    field: Any  # the dataclasses.Field that declares it
    owner: type  # the first class declaring it (its type and help come from there)
    defaults: dict[str, Any]  # owner label -> default

    def default_text(self) -> str:
        """`16`, or `16; scpnet: 4` when methods differ."""
        shown = {label: _shown(v) for label, v in self.defaults.items()}
        common = Counter(shown.values()).most_common(1)[0][0]
        return "; ".join([common, *(f"{label}: {v}" for label, v in shown.items() if v != common)])


def _shown(value: Any) -> str:
    """A default as help text shows it."""
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return "''" if value == "" else str(value)


def fit_options() -> list[OptionSpec]:
    """Every option `cpt fit` accepts, once each, from the run, kind, training, view and
    registered methods' declarations (in that order)."""
    owners: list[tuple[str, type]] = [("run", FitRequest), *((k.name, k.Options) for k in KINDS.values()),
                                      ("training", TrainConfig), ("views", ViewOptions)]
    owners += [(name, cls.Config) for name, cls in METHODS.items()]
    found: dict[str, OptionSpec] = {}
    for label, cls in owners:
        for f in declared(cls):
            spec = found.setdefault(f.name, OptionSpec(f.name, f, cls, {}))
            if f.metadata["help"] != spec.field.metadata["help"]:
                raise TypeError(f"option {f.name} of {cls.__name__} is declared again with another help text")
            spec.defaults[label] = default_of(f)
    for name, cls in METHODS.items():  # published training defaults a method sets over cpt's
        for option, value in cls.defaults.items():
            found[option].defaults[name] = value
    return list(found.values())


@dataclass
class Plan:
    """A request resolved: the kind, the method, every config, the task specs; all checked."""

    kind: TaskKind
    method: type[Method]
    specs: list[TaskSpec]
    kind_options: Any
    views: ViewOptions
    train: TrainConfig | None
    method_config: Any
    settings: dict[str, Any]  # every resolved option by name
    preset: dict[str, Any] | None = None  # the --preset: name, values, and those the options given overrode



def task_kind(req: FitRequest) -> tuple[TaskKind, list[TaskSpec], dict[str, Any]]:
    """The kind of the request's tasks, their specs and the recipe's option presets."""
    labels = req.options.get("labels")
    if labels:
        name = req.tasks or Path(labels).stem.removeprefix("instances_")
        return KINDS["multi-label"], [TaskSpec(name, labels)], {}
    if not req.tasks:
        raise CptError("Give the tasks to train on with --tasks, e.g. --tasks pets=data/pets, or a multi-label "
                       "--labels FILE (or --resume RUN).")
    specs, kind_name = resolve_tasks(req.tasks, req.data_root)
    named = recipe(req.tasks)
    return KINDS[kind_name], specs, dict(named.defaults) if named else {}


def _refuse_stray(req: FitRequest, method: type[Method], kind: TaskKind, allowed: set[str]) -> None:
    stray = [name for name in req.options if name not in allowed]
    if not stray:
        return
    where = []
    for name in stray:
        users = [m for m, cls in METHODS.items() if any(name in applicable(cls, KINDS[k]) for k in cls.kinds)]
        reason = method.excludes.get(name) or kind.excludes.get(name)
        if not reason and (method.name in users or not users):
            reason = f"not for {kind.name} tasks"
        where.append(f"{flag(name)} ({reason or 'used by ' + ', '.join(users)})")
    raise CptError(f"{', '.join(where)}: not an option of --method {method.name} on {kind.name} tasks. Drop it, or "
                   f"see `cpt methods {method.name}` for what applies.")


def method_preset(method: type[Method], name: str | None) -> Preset | None:
    """The method's preset `name` (None: no --preset), or a user error naming the presets it has."""
    if name is None:
        return None
    if name in method.presets:
        return method.presets[name]
    owners = [m for m, cls in METHODS.items() if name in cls.presets]
    mine = (f"--method {method.name}'s presets: {', '.join(method.presets)} (`cpt methods {method.name}` shows their "
            "values)") if method.presets else f"--method {method.name} has no presets"
    what = f"is a preset of --method {owners[0]}" if owners else "is unknown"
    raise CptError(f"--preset {name} {what}; {mine}.")


def _defaults(req: FitRequest, method: type[Method], kind: TaskKind, recipe_presets: dict[str, Any],
              allowed: set[str]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The values under the options given: the recipe's presets, then the method's --preset; and
    the preset's record. An option given replaces the presets' choice among its alternatives."""
    named = method_preset(method, req.preset)
    preset = dict(named.values) if named else {}
    stray = sorted(set(preset) - allowed)
    if stray:  # a preset is code: this is a bug in it, not the user's
        raise TypeError(f"preset {req.preset} of {method.name} sets options it does not accept on {kind.name} tasks: "
                        f"{stray}")
    defaults = {**{k: v for k, v in recipe_presets.items() if k in allowed}, **method.defaults, **preset}
    for group in kind.alternatives:
        if group & set(req.options):
            defaults = {k: v for k, v in defaults.items() if k not in group}
    if not named:
        return defaults, None
    overridden = sorted(k for k in preset if k in req.options or k not in defaults)
    return defaults, {"name": named.name, "values": preset, "overridden": overridden}


def plan(req: FitRequest) -> Plan:
    """Resolve and check a request: over each declaration's default, the recipe's presets, then
    the method's --preset, then the options given. Reads task listings only; writes nothing."""
    method = method_class(req.method)
    kind, specs, recipe_presets = task_kind(req)
    if kind.name not in method.kinds:
        raise CptError(f"--method {method.name} trains on {' and '.join(method.kinds)} tasks, and {req.tasks or 'these'} "
                       f"are {kind.name}. Choose a method for {kind.name} tasks (`cpt methods` lists them).")
    allowed = applicable(method, kind)
    _refuse_stray(req, method, kind, allowed)
    defaults, preset = _defaults(req, method, kind, recipe_presets, allowed)
    values = {**defaults, **req.options, "seed": req.seed}
    kind_options = build(kind.Options, values)
    views = build(ViewOptions, values)
    train_cfg = None
    if method.trains:
        train_cfg = build(TrainConfig, values)
        if train_cfg.epochs is None:
            train_cfg.epochs = method.default_epochs(getattr(kind_options, "shots", None), kind.name)
        if train_cfg.schedule_length() < train_cfg.epochs:
            raise CptError(f"--schedule-epochs {train_cfg.schedule_epochs} is shorter than the {train_cfg.epochs} "
                           "training epochs: the learning-rate schedule has to last the whole training. Give at "
                           f"least {train_cfg.epochs}, or leave it out.")
    settings = {**req.settings(), **asdict(kind_options), **asdict(views), **(asdict(train_cfg) if train_cfg else {})}
    method_config = build(method.Config, {**settings, **values})
    settings.update(asdict(method_config))
    method.check(method_config, kind.name, settings)
    return Plan(kind, method, specs, kind_options, views, train_cfg, method_config, settings, preset)


def axis_stem(axis: str, value: Any) -> str:
    """A run's place on its kind's axis, as run directories name it: `4shot`, `known0.3`."""
    if axis == "known_ratio":
        return f"known{value:g}"
    return f"{value}frames" if axis == "frames" else f"{value}shot"


def default_out(req: FitRequest, p: Plan) -> str:
    """runs/<method>-<tasks>-<4shot | known0.3>-seed<seed>."""
    labels = req.options.get("labels")
    names = "+".join(safe_name(n.split("=")[0]) for n in req.tasks.split(",")) if req.tasks else safe_name(Path(labels).stem)
    stem = axis_stem(p.kind.axis, getattr(p.kind_options, p.kind.axis))
    return str(Path("runs") / f"{req.method}-{names}-{stem}-seed{req.seed}")


def method_options(method: type[Method]) -> list[tuple[str, Any, str]]:
    """(flag, default, help) of every option that applies to `method`, on any kind it supports."""
    classes: list[type] = []
    names: set[str] = set()
    for name in method.kinds:
        classes += [c for c in option_classes(method, KINDS[name]) if c not in classes]
        names |= applicable(method, KINDS[name])
    return [(flag(f.name), _method_default(method, f), f.metadata["help"])
            for cls in classes for f in declared(cls) if f.name in names]


def _method_default(method: type[Method], f: Any) -> Any:
    """The default `method` trains with: its published value over cpt's; epochs as its budget on its first kind."""
    value = method.defaults.get(f.name, default_of(f))
    if f.name == "epochs" and value is None:
        kind = KINDS[method.kinds[0]]
        value = method.default_epochs(getattr(kind.Options(), "shots", None), kind.name)
    return value
