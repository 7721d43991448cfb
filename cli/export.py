"""`cpt export`: parse options, delegate to cpt.deploy.artifact / cpt.deploy.export."""

from pathlib import Path
from typing import Annotated, Optional

import typer
from cpt_cli.app import app, command, emit_json

from cpt.deploy import artifact as A
from cpt.errors import CptError
from cpt.deploy.export import FORMATS, export
from cpt.deploy.export_video import export_run, is_retrieval_run


@app.command("export", epilog="""Examples:

  cpt export runs/pets-coop --format pt --out pets.pt

  cpt export runs/pets-coop --format onnx --out pets.onnx

  cpt export runs/dgl-toy-video --format torchscript --out dgl-encoders/

  cpt export --backbone ViT-B/16 --classes classnames.txt --format torchscript --out zs.ts
""")
@command
def export_cmd(
    run: Annotated[Optional[Path], typer.Argument(help="A finished run directory.")] = None,
    fmt: Annotated[str, typer.Option("--format", help=f"One of: {', '.join(FORMATS)}.")] = "pt",
    out: Annotated[Optional[Path], typer.Option(help="Output file [default: <run>/export.<format>].")] = None,
    task: Annotated[Optional[str], typer.Option(help="Export only this task (default: all).")] = None,
    backbone: Annotated[Optional[str], typer.Option(help="Zero-shot export: the backbone (with --classes).")] = None,
    classes: Annotated[Optional[Path], typer.Option(help="Zero-shot export: a file of class names, one per line.")] = None,
    template: Annotated[Optional[list[str]], typer.Option(help="Zero-shot template(s) with {} (or 'ensemble').")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "cpu",
    json_out: Annotated[bool, typer.Option("--json", help="Print what was written as JSON on stdout.")] = False,
    quiet: Annotated[bool, typer.Option(help="No info messages.")] = False,
) -> None:
    """Export a standalone classifier: class embeddings (+ image encoder for TorchScript / ONNX)."""
    if (run is None) == (backbone is None):
        raise CptError("Give either a run directory, or --backbone with --classes for a zero-shot export.")
    if run is not None and is_retrieval_run(run):
        written = export_run(run, fmt, out, device)
        if json_out:
            emit_json({"out": str(written), "format": fmt, "files": sorted(p.name for p in written.iterdir())})
        elif not quiet:
            typer.echo(f"wrote {written}/ (text and video encoders, cpt.json)", err=True)
        return
    if run is not None:
        artifact, model = A.from_run(run, device)
    elif classes is None:
        raise CptError("A zero-shot export needs --classes FILE (one class name per line).")
    else:
        artifact, model = A.zero_shot(backbone, classes, list(template or []), device)
    suffix = {"torchscript": "ts"}.get(fmt, fmt)
    target = out or (Path(run) / f"export.{suffix}" if run else Path(f"{classes.stem}.{suffix}"))
    written = export(artifact, model, fmt, target, task)
    if json_out:
        emit_json({"out": str(written), "format": fmt, "tasks": artifact.tasks if task is None else [task]})
    elif not quiet:
        typer.echo(f"wrote {written}", err=True)
