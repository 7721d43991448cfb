"""`cpt sweep`: parse options, delegate to cpt.sweep."""

from pathlib import Path
from typing import Annotated, Optional

import typer
from cpt_cli.app import app, command, emit_json

from cpt.console import console
from cpt.errors import CptError
from cpt.plan import FitRequest
from cpt.sweep import sweep


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


@app.command("sweep", epilog="""Examples:

  cpt sweep --tasks toy --backbone toy --methods zeroshot,linear-probe,coop --out runs/toy-table

  cpt sweep --tasks toy --backbone toy --methods zeroshot,coop,coop-shared,softcpt --shots 4 --out runs/toy-4shot

  cpt sweep --tasks toy-ml --backbone toy --methods zeroshot,coop,scpnet,scpnet+no-prior --known-ratios 0.1,0.3,0.5,0.7,0.9 --out runs/toy-ml-sweep
""")
@command
def sweep_cmd(
    tasks: Annotated[str, typer.Option(help="As for cpt fit: NAME=PATH[,...], a recipe or a task file.")],
    out: Annotated[Path, typer.Option(help="Folder for the runs, results.csv, table.md and accuracy_vs_shots.png (map_vs_known_ratio.png).")],
    methods: Annotated[str, typer.Option(help="Comma-separated methods; a method's switches as method+switch, e.g. scpnet+no-prior, coop+class-specific.")] = "zeroshot,linear-probe,coop",
    shots: Annotated[str, typer.Option(help="Comma-separated shot counts (single-label tasks).")] = "1,2,4,8,16",
    known_ratios: Annotated[Optional[str], typer.Option(help="Multi-label tasks: comma-separated known-label ratios (replaces --shots), e.g. 0.1,0.3,0.5,0.7,0.9.")] = None,
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds.")] = "1,2,3",
    backbone: Annotated[str, typer.Option(help="As for cpt fit.")] = "RN50",
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    epochs: Annotated[Optional[int], typer.Option(help="Override the default epochs of every method that trains.")] = None,
    ctx_init: Annotated[Optional[str], typer.Option(help="Initialise learned contexts from these words, e.g. 'a photo of a' (as cpt fit).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the tidy results as JSON on stdout.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars or info messages.")] = False,
) -> None:
    """Run methods x shots x seeds and gather the results (finished runs are reused)."""
    options = {k: v for k, v in {"epochs": epochs, "ctx_init": ctx_init}.items() if v is not None}
    base = FitRequest(tasks=tasks, backbone=backbone, device=device, options=options)
    ratios = _numbers(known_ratios, "--known-ratios", float) if known_ratios else None
    results = sweep(base, _once([m.strip() for m in methods.split(",") if m.strip()], "--methods"), _numbers(shots, "--shots"),
                    _numbers(seeds, "--seeds"), out, ratios)
    if json_out:
        emit_json(results.to_dict(orient="records"))
    if not quiet:
        console.print((out / "table.md").read_text(), highlight=False)
