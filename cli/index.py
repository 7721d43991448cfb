"""`cpt index`: embed a folder of videos once with a retrieval run; `cpt predict INDEX --query` searches it."""

from pathlib import Path
from typing import Annotated, Optional

import typer
from cpt_cli.app import app, command, emit_json

from cpt.deploy.search import index_videos, save_index


@app.command("index", epilog="""Examples:

  cpt index runs/dgl-toy-video videos/ --out videos.index.pt

  cpt predict videos.index.pt --query "a red circle moves to the left" --top-k 10
""")
@command
def index_cmd(
    run: Annotated[Path, typer.Argument(help="A finished retrieval run.")],
    videos: Annotated[list[str], typer.Argument(help="Video files and/or folders (searched recursively).")],
    out: Annotated[Path, typer.Option(help="The index file to write (e.g. videos.index.pt).")],
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    cache_dir: Annotated[Optional[Path], typer.Option(help="Where decoded frames are cached [default: the run's].")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars or info messages.")] = False,
) -> None:
    """Embed videos with a retrieval run's video encoder into an index that text queries search."""
    index, _ = index_videos(run, videos, device, str(cache_dir) if cache_dir else None)
    save_index(index, out)
    result = {"index": str(out), "videos": len(index.videos), "run": str(run)}
    if json_out:
        emit_json(result)
    elif not quiet:
        typer.echo(f"indexed {len(index.videos)} videos into {out}", err=True)
