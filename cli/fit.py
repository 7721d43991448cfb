"""`cpt fit`: options built from the declarations (cpt.fit.fit_options), delegate to cpt.fit."""

import inspect
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from cpt_cli.app import command, emit_json, show_metrics

from cpt import dist
from cpt.errors import CptError
from cpt.fit import fit
from cpt.plan import FitRequest, OptionSpec, fit_options
from cpt.methods import METHODS
from cpt.options import declared, flag, option_type

EPILOG = """Examples:

  cpt fit --method coop --tasks pets=data/pets --shots 16 --seed 1 --backbone RN50 --out runs/pets-coop

  cpt fit --method zeroshot --tasks flowers=data/flowers --template ensemble --json

  cpt fit --method softcpt --tasks toy --backbone toy --shots 4

  cpt fit --method scpnet --labels train.csv --images imgs/ --test-labels test.csv --known-ratio 0.3

  cpt fit --method scpnet --tasks toy-ml --backbone toy --known-ratio 0.3 --no-prior

  cpt fit --method scpnet --preset scpnet-coco --labels coco/annotations/instances_train2014.json --test-labels coco/annotations/instances_val2014.json

  cpt fit --resume runs/pets-coop

  cpt fit --method coop --tasks general10 --backbone ViT-B/16 --devices 4

  torchrun --nproc-per-node 4 -m cpt fit --method coop --tasks general10 --backbone ViT-B/16

  cpt fit --method dgl --tasks toy-video --backbone toy --epochs 20 --optimizer adam --lr 1e-3 --weight-decay 0

  cpt fit --method coop-video --tasks msrvtt=data/MSRVTT --backbone ViT-B/32 --fps 1 --select val

  cpt fit --method tempme --tasks msrvtt=data/MSRVTT --backbone ViT-B/32 --fps 1 --select val --merge tempme
"""
RUN_FIELDS = {f.name for f in declared(FitRequest)}
CONTROLS = ("resume", "overwrite", "json_out", "quiet", "devices")  # how this command runs, not what the run is


def _parameter(spec: OptionSpec) -> inspect.Parameter:
    """A Typer option for one declaration: unset (None) unless given, so `given` is exact."""
    hint = option_type(spec.owner, spec.name)
    meta = spec.field.metadata
    text = meta["help"]
    if spec.name == "method":
        text += f" One of: {', '.join(METHODS)}."
    if meta["choices"] and spec.name != "method":
        text += f" One of: {', '.join(meta['choices'])}."
    if hint is not bool and "[default:" not in text and any(v is not None for v in spec.defaults.values()):
        text += f" [default: {spec.default_text()}]"
    info = typer.Option(flag(spec.name), help=text, rich_help_panel=meta["panel"], show_default=False)
    if hint is bool:
        return inspect.Parameter(spec.name, inspect.Parameter.KEYWORD_ONLY, default=False,
                                 annotation=Annotated[bool, info])
    if isinstance(hint, types.UnionType):  # X | None -> X
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return inspect.Parameter(spec.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation=Annotated[Optional[hint], info])


def _controls() -> list[inspect.Parameter]:
    def opt(name: str, hint: Any, default: Any, info: Any) -> inspect.Parameter:
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[hint, info])

    return [
        opt("resume", Optional[Path], None, typer.Option(help="Continue the interrupted run in this directory with its "
                                                         "saved options (give no other run option).")),
        opt("overwrite", bool, False, typer.Option("--overwrite", help="Replace an existing run directory.")),
        opt("json_out", bool, False, typer.Option("--json", help="Print the result as JSON on stdout.")),
        opt("quiet", bool, False, typer.Option("--quiet", help="No progress bars or info messages.")),
        opt("devices", Optional[int], None, typer.Option(
            help="Run on N processes of this machine, one per GPU with CUDA: cpt relaunches itself through "
                 "torch.distributed.run (torchrun). Each takes a share of every batch and of the class prompts; the "
                 "result is one process's, within float rounding. For several machines use torchrun directly.")),
    ]


def run_fit(**values: Any) -> None:
    """Train (or zero-shot build) a classifier per task, then evaluate it on the test split."""
    resume, overwrite, json_out, quiet, devices = (values.pop(k) for k in CONTROLS)
    given = {k: v for k, v in values.items() if v is not None and v is not False}
    if devices is not None and devices != 1:
        _relaunch(devices, given, resume, overwrite, json_out, quiet)
        return
    if resume is not None:
        if given:
            raise CptError(f"--resume continues {resume} with the options it was started with; drop "
                           f"{', '.join(flag(k) for k in given)} (or start a new run with --out).")
        result = fit(FitRequest(out=str(resume)), resume=True)
    else:
        run = {k: v for k, v in given.items() if k in RUN_FIELDS}
        req = FitRequest(**run, options={k: v for k, v in given.items() if k not in RUN_FIELDS})
        result = fit(req, overwrite=overwrite)
    if not dist.is_main():  # under torchrun rank 0 reports
        return
    if json_out:
        emit_json(result.summary())
    if not quiet:
        show_metrics(result.metrics, f"{result.run} (test)")


def _relaunch(devices: int, given: dict[str, Any], resume: Path | None, overwrite: bool, json_out: bool,
              quiet: bool) -> None:
    """`cpt fit --devices N`: the same command in N processes started by torch.distributed.run."""
    if devices < 1:
        raise CptError(f"--devices {devices} must be at least 1 (the number of processes to train on).")
    if dist.launched():
        raise CptError("--devices starts the processes itself; under torchrun leave it out (torchrun's "
                       "--nproc-per-node sets how many).")
    argv = ["fit"]
    for name, value in given.items():
        for item in value if isinstance(value, list) else [value]:
            argv.append(flag(name) if item is True else f"{flag(name)}={item}")  # = : a value may start with -
    argv += ["--resume", str(resume)] if resume is not None else []
    argv += [switch for switch, on in (("--overwrite", overwrite), ("--json", json_out), ("--quiet", quiet)) if on]
    code = dist.launch(devices, argv)
    if code:
        raise typer.Exit(code)


def fit_arguments(args: list[str], command_name: str) -> dict[str, Any]:
    """The `cpt fit` options among `args` (flags and values as typed), parsed as `cpt fit` parses
    them: for a command that passes them on to its runs (`cpt sweep`)."""
    single = typer.Typer()
    single.command("fit")(fit_command())
    try:
        ctx = typer.main.get_command(single).make_context(command_name, list(args))
    except Exception as exc:  # the usage errors of the click Typer carries (no unknown options, bad values)
        if not hasattr(exc, "format_message"):
            raise
        raise CptError(f"{command_name}: {exc.format_message().rstrip('.')}. It passes the options of `cpt fit` on to "
                       "every run (`cpt fit --help` lists them).") from exc
    given = {k: v for k, v in ctx.params.items() if ctx.get_parameter_source(k).name == "COMMANDLINE"}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in given.items() if k not in CONTROLS}


def fit_command() -> Callable[..., None]:
    """The `cpt fit` callback, its signature built from every declaration registered now."""
    wrapped = command(run_fit, distributed=True)
    wrapped.__signature__ = inspect.Signature([*(_parameter(s) for s in fit_options()), *_controls()])
    return wrapped
