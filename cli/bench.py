"""`cpt bench`: parse options, delegate to cpt.bench, print the figures."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from cpt_cli.app import app, command, emit_json
from rich.table import Table

from cpt.bench import GEOMETRIES, as_dicts, machine, run_bench
from cpt.console import console


@app.command("bench", epilog="""Examples:

  cpt bench                                  # tiny and toy CLIP, 10 / 100 / 1,191 / 5,000 classes, CPU

  cpt bench --geometry vit-b16 --classes 1191 --device cuda --json
""")
@command
def bench_cmd(
    geometry: Annotated[Optional[list[str]], typer.Option(help=f"Model geometry (repeatable): {', '.join(GEOMETRIES)}; random weights except toy [default: tiny, toy].")] = None,
    classes: Annotated[str, typer.Option(help="Comma-separated class counts.")] = "10,100,1191,5000",
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    precision: Annotated[str, typer.Option(help="fp32, fp16 or bf16 for the frozen CLIP.")] = "fp32",
    repeats: Annotated[int, typer.Option(help="Timed steps per path (median reported), after one warm-up.")] = 5,
    n_ctx: Annotated[int, typer.Option(help="Context tokens of the prompt.")] = 16,
    json_out: Annotated[bool, typer.Option("--json", help="Print the figures as JSON on stdout.")] = False,
    quiet: Annotated[bool, typer.Option(help="No table on stderr.")] = False,
) -> None:
    """Time the optimised training step against a naive CoOp loop (full context, images re-encoded)."""
    counts = [int(c) for c in classes.split(",") if c.strip()]
    rows = run_bench(list(geometry or ["tiny", "toy"]), counts, device, precision, repeats, n_ctx)
    where = machine()
    if json_out:
        emit_json({"machine": where, "precision": precision, "n_ctx": n_ctx, "rows": as_dicts(rows)})
    if quiet:
        return
    table = Table(title=f"cpt bench on {where} ({precision}); MB: activations (CPU) / max allocated (CUDA)")
    for col in ("model", "classes", "path", "ms/step", "steps/s", "MB", "x time", "x mem", "Δlogit"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r.geometry, str(r.classes), r.path[:3], f"{r.step_ms:.1f}", f"{r.steps_per_s:.1f}", f"{r.peak_mb:.0f}",
                      f"{r.speedup:.1f}", f"{r.memory_ratio:.1f}", f"{r.max_logit_diff:.0e}")
    console.print(table)
