"""`cpt predict`: parse options, delegate to cpt.deploy.predict, stream CSV or JSON lines."""

import csv
import json
import sys
from pathlib import Path
from typing import Annotated, Optional, TextIO

import typer
from cpt_cli.app import app, command

from cpt import dist
from cpt.deploy import artifact as A
from cpt.io import atomic_path
from cpt.deploy.predict import check_options, list_images, predict
from cpt.deploy.search import is_index, search
from cpt.errors import CptError


def _write(rows, fh: TextIO, jsonl: bool) -> int:
    n = 0
    writer = None if jsonl else csv.writer(fh, lineterminator="\n")
    if writer:
        writer.writerow(["path", "task", "rank", "class", "score"])
    for p in rows:
        if jsonl:
            fh.write(json.dumps({"path": p.path, "task": p.task, "classes": p.classes, "scores": p.scores,
                                 "logits": p.logits}) + "\n")
        else:
            for rank, (c, s) in enumerate(zip(p.classes, p.scores), start=1):
                writer.writerow([p.path, p.task, rank, c, f"{s:.6f}"])
        fh.flush()
        n += 1
    return n


def _write_matches(matches, fh: TextIO, text_to_video: bool) -> int:
    writer = csv.writer(fh, lineterminator="\n")
    writer.writerow(["query", "rank", "video", "score"] if text_to_video else ["video", "rank", "caption", "score"])
    for m in matches:
        writer.writerow([m.query, m.rank, m.match, f"{m.score:.6f}"])
    return len(matches)


def _search(source: Path, images: list[str] | None, query: list[str], captions: Optional[Path], top_k: int,
            out: Optional[Path], device: str, quiet: bool) -> None:
    """A retrieval run or a video index: ranked videos per --query, or ranked --captions per video."""
    if not dist.is_main():
        return
    matches = search(source, images, query, captions, top_k, device)
    if out is None:
        _write_matches(matches, sys.stdout, bool(query))
        return
    with atomic_path(out) as tmp, open(tmp, "w", newline="") as fh:
        n = _write_matches(matches, fh, bool(query))
    if not quiet:
        typer.echo(f"wrote {n} ranked matches to {out}", err=True)


@app.command("predict", epilog="""Examples:

  cpt predict runs/pets-coop photos/ --top-k 3 > preds.csv

  cpt predict runs/dgl-toy-video videos/ --query "a red circle moves to the left" --top-k 10 > ranked.csv

  cpt index runs/dgl-toy-video videos/ --out videos.index.pt && cpt predict videos.index.pt --query "a square appears"

  cpt predict runs/dgl-toy-video videos/ --captions captions.txt --top-k 5

  cpt export runs/pets-coop --out pets.pt && cpt predict pets.pt new/*.jpg --jsonl | jq .classes

  cpt predict runs/coco-scpnet images/ --threshold 0.7 --out labels.csv

  torchrun --nproc-per-node 4 -m cpt predict runs/pets-coop photos/ --out preds.csv
""")
@command(distributed=True)
def predict_cmd(
    source: Annotated[Path, typer.Argument(help="A run directory, an exported classifier (.pt) or a video index "
                                           "(`cpt index`).")],
    images: Annotated[Optional[list[str]], typer.Argument(help="Image (or, for a retrieval run, video) files and/or "
                                                          "folders, searched recursively.")] = None,
    task: Annotated[Optional[str], typer.Option(help="Only this task (default: every task).")] = None,
    query: Annotated[Optional[list[str]], typer.Option(help="Retrieval: a text query (repeatable); ranks the "
                                                       "videos.")] = None,
    captions: Annotated[Optional[Path], typer.Option(help="Retrieval: a file of captions, one per line; ranks them "
                                                     "for each video.")] = None,
    top_k: Annotated[int, typer.Option(help="Single-label: how many classes per image; retrieval: how many matches "
                                       "per query or video.")] = 1,
    threshold: Annotated[float, typer.Option(help="Multi-label: report classes whose sigmoid score is at least this.")] = 0.5,
    out: Annotated[Optional[Path], typer.Option(help="Write here instead of stdout.")] = None,
    jsonl: Annotated[bool, typer.Option("--jsonl", help="JSON lines (with every class's logit) instead of CSV.")] = False,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    quiet: Annotated[bool, typer.Option(help="No progress bars or info messages.")] = False,
) -> None:
    """Label images: top-k classes (single-label) or the classes above a threshold (multi-label); or
    search videos with a retrieval run: ranked videos per query, ranked captions per video."""
    check_options(top_k, threshold)
    if out is not None and out.is_dir():
        raise CptError(f"--out {out} is a folder; give the file to write the predictions to, e.g. {out / 'predictions.csv'}.")
    dist.check_device(device)
    if query or captions is not None or is_index(source):
        return _search(source, images, query or [], captions, top_k, out, device, quiet)
    if not images:
        raise CptError("Give the images to label: files and/or folders.")
    artifact, backbone = dist.rank0_first(lambda: A.load(source, device))  # rank 0 may download the weights
    with dist.agreed():  # a folder one rank cannot see stops them all, with its message
        paths = list_images(images)
    rows = predict(artifact, backbone, paths, task, top_k, threshold)
    if not dist.is_main():  # under torchrun: encode a share of every batch; rank 0 writes
        for _ in rows:
            pass
        return
    if out is None:
        _write(rows, sys.stdout, jsonl)
        return
    with atomic_path(out) as tmp, open(tmp, "w", newline="") as fh:
        n = _write(rows, fh, jsonl)
    if not quiet:
        typer.echo(f"wrote {n} predictions to {out}", err=True)
