"""`cpt sweep`: parse options, delegate to cpt.sweep."""

from pathlib import Path
from typing import Annotated, Optional

import typer
from cpt_cli.app import app, command, emit_json
from cpt_cli.fit import RUN_FIELDS, fit_arguments

from cpt.console import console
from cpt.errors import CptError
from cpt.options import flag
from cpt.plan import FitRequest
from cpt.sweep import gather, parse_shard, sweep


def _numbers(text: str, option: str, kind: type = int) -> list:
    try:
        values = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        example = "1,2,4,8,16" if kind is int else "0.1,0.3,0.5,0.7,0.9"
        raise CptError(f"{option} takes comma-separated numbers, e.g. {example} (got {text!r}).") from exc
    return _once(values, option)


def _once(values: list, option: str) -> list:
    """Refuse a value given twice: its runs would be counted twice in the mean and std."""
    twice = next((v for i, v in enumerate(values) if v in values[:i]), None)
    if twice is not None:
        raise CptError(f"{option} names {twice} twice; give each value once.")
    return values


GATHER_ALONE = {"gather_out", "json_out", "quiet"}  # --gather reads the rest from OUT/sweep.json


PER_RUN = {"method": "--methods", "seed": "--seeds", "out": "--out", "shots": "--shots", "known_ratio": "--known-ratios"}


def _passed_on(args: list[str]) -> tuple[dict, dict]:
    """The `cpt fit` options given to the sweep for every run: (run settings, other options)."""
    given = fit_arguments(args, "cpt sweep")
    mine = [k for k in given if k in PER_RUN]
    if mine:
        raise CptError(f"cpt sweep sets {flag(mine[0])} per run; give {PER_RUN[mine[0]]} instead.")
    settings = {k: v for k, v in given.items() if k in RUN_FIELDS}
    return settings, {k: v for k, v in given.items() if k not in RUN_FIELDS}


@app.command("sweep", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, epilog="""Examples:

  cpt sweep --tasks toy --backbone toy --methods zeroshot,linear-probe,coop --out runs/toy-table

  cpt sweep --tasks toy --backbone toy --methods zeroshot,coop,coop-shared,softcpt --shots 4 --out runs/toy-4shot

  cpt sweep --tasks toy-ml --backbone toy --methods zeroshot,coop,scpnet,scpnet+no-prior --known-ratios 0.1,0.3,0.5,0.7,0.9 --out runs/toy-ml-sweep

  cpt sweep --tasks toy --backbone toy --out runs/toy-table --shard $SLURM_ARRAY_TASK_ID/4   # sbatch --array=1-4

  cpt sweep --tasks shape=DIR,colour=DIR --backbone toy --methods zeroshot,coop,kgcoop --shots 16 --protocol base2new --out runs/b2n

  cpt sweep --tasks shape=DIR --backbone toy --methods coop,kgcoop --crop-scale 1.0 --preset kgcoop-paper --out runs/k   # any cpt fit option, for the runs it applies to

  cpt sweep --gather runs/toy-table
""")
@command
def sweep_cmd(
    context: typer.Context,
    tasks: Annotated[Optional[str], typer.Option(help="As for cpt fit: NAME=PATH[,...], a recipe or a task file.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Folder for the runs, sweep.json, results.csv, table.md, seconds.csv and seconds.md (each run's fitting time) and accuracy_vs_shots.png (map_vs_known_ratio.png).")] = None,
    methods: Annotated[str, typer.Option(help="Comma-separated methods; a method's switches as method+switch, e.g. scpnet+no-prior, coop+class-specific.")] = "zeroshot,linear-probe,coop",
    shots: Annotated[str, typer.Option(help="Comma-separated shot counts (single-label tasks).")] = "1,2,4,8,16",
    known_ratios: Annotated[Optional[str], typer.Option(help="Multi-label tasks: comma-separated known-label ratios (replaces --shots), e.g. 0.1,0.3,0.5,0.7,0.9.")] = None,
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds.")] = "1,2,3",
    backbone: Annotated[str, typer.Option(help="As for cpt fit.")] = "RN50",
    pretrained: Annotated[Optional[str], typer.Option(help="As for cpt fit: OpenCLIP weights (a tag or a file) for --backbone openclip:ARCH.")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto (under torchrun with several GPUs: each rank its $LOCAL_RANK's).")] = "auto",
    epochs: Annotated[Optional[int], typer.Option(help="Override the default epochs of every method that trains.")] = None,
    ctx_init: Annotated[Optional[str], typer.Option(help="Initialise learned contexts from these words, e.g. 'a photo of a' (as cpt fit).")] = None,
    protocol: Annotated[str, typer.Option(help="standard, or base2new: train on the base half of each task's classes (cpt fit --classes base), evaluate on the base and the unseen new half (RUN/classes-new), table of base, new and their harmonic mean H (single-label; methods whose prompts carry over to new classes).")] = "standard",
    shard: Annotated[Optional[str], typer.Option(metavar="I/N", help="Run only shard I of N (counted from 1, e.g. $SLURM_ARRAY_TASK_ID/4 with --array=1-4): runs I, I+N, I+2N, ... of the run list (methods, then shots or ratios, then seeds). Every shard needs the same other options; the last to finish gathers. Under torchrun each rank takes a shard by itself ($RANK+1 of $WORLD_SIZE).")] = None,
    gather_out: Annotated[Optional[Path], typer.Option("--gather", metavar="OUT", help="Only gather: build OUT's results.csv, table.md and plot from its finished runs (the options come from OUT/sweep.json); exit 2 naming any run not finished and its shard.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the tidy results as JSON on stdout (a shard that does not gather: its own runs').")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars or info messages.")] = False,
) -> None:
    """Run methods x shots x seeds (or one shard of them) and gather the results (finished runs are reused)."""
    if gather_out is not None:
        given = [p.opts[0] for p in context.command.params
                 if p.name not in GATHER_ALONE and context.get_parameter_source(p.name).name != "DEFAULT"]
        given += [a for a in context.args if a.startswith("--")]
        if given:
            raise CptError(f"--gather takes the sweep's options from {gather_out / 'sweep.json'}; give it alone (with "
                           f"--json or --quiet at most), without {', '.join(given)}.")
        results, where, gathered = gather(gather_out), gather_out, True
    else:
        if tasks is None or out is None:
            raise CptError("cpt sweep needs --tasks and --out (e.g. --tasks toy --out runs/toy-table), or --gather OUT "
                           "to gather a sweep whose shards have run.")
        part = parse_shard(shard) if shard is not None else None
        settings, options = _passed_on(context.args)
        options |= {k: v for k, v in {"epochs": epochs, "ctx_init": ctx_init}.items() if v is not None}
        base = FitRequest(**settings, tasks=tasks, backbone=backbone, pretrained=pretrained, device=device,
                          options=options)
        ratios = _numbers(known_ratios, "--known-ratios", float) if known_ratios else None
        outcome = sweep(base, _once([m.strip() for m in methods.split(",") if m.strip()], "--methods"),
                        _numbers(shots, "--shots"), _numbers(seeds, "--seeds"), out, ratios, part, protocol)
        results, where, gathered = outcome.results, out, outcome.gathered
        if not gathered and not quiet:
            console.print(f"shard {outcome.shard}: its {len(outcome.ran)} runs have finished; {len(outcome.waiting)} "
                          f"runs of other shards have not yet. The shard that finishes last gathers the results, or "
                          f"run `cpt sweep --gather {out}` once they have.", highlight=False, soft_wrap=True)
    if json_out:
        emit_json(results.to_dict(orient="records"))
    if gathered and not quiet:
        console.print((where / "table.md").read_text(), highlight=False)
        console.print((where / "seconds.md").read_text(), highlight=False)
