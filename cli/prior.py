"""`cpt prior`: parse options, delegate to cpt.methods.scpnet.prior, write the matrices as CSV."""

from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import pandas as pd
import typer
from cpt_cli.app import app, command, emit_json

from cpt.core.backbone import load_backbone
from cpt.deploy.artifact import read_class_names
from cpt.console import console
from cpt.data.tasks import resolve_tasks
from cpt.errors import CptError
from cpt.io import write_csv
from cpt.data.multilabel import load_multilabel_task
from cpt.methods.scpnet.prior import PriorConfig, agreement, cooccurrence, label_prior


def _classes(tasks: Optional[str], classes: Optional[Path]) -> tuple[list[str], Optional[np.ndarray]]:
    """Class names, and the training targets when they come from a multi-label task."""
    if classes is not None:
        return read_class_names(classes), None
    if tasks is None:
        raise CptError("Give the classes: --classes FILE (one per line) or --tasks with a multi-label task.")
    specs, kind = resolve_tasks(tasks)
    if kind != "multi-label" or len(specs) != 1:
        raise CptError(f"--tasks {tasks} must be one multi-label task (a folder with train.csv and test.csv, or toy-ml).")
    task = load_multilabel_task(specs[0].name, specs[0].path)[0]
    return task.classnames, task.splits["train"].targets


@app.command("prior", epilog="""Examples:

  cpt prior --backbone toy --tasks toy-ml --out runs/toy-ml-prior

  cpt prior --backbone RN50 --classes coco_classes.txt --topk 62 --json
""")
@command
def prior_cmd(
    backbone: Annotated[str, typer.Option(help="OpenAI CLIP name, checkpoint path, toy, or openclip:ARCH with --pretrained.")] = "RN50",
    pretrained: Annotated[Optional[str], typer.Option(help="OpenCLIP weights for --backbone openclip:ARCH: a tag or a checkpoint file.")] = None,
    tasks: Annotated[Optional[str], typer.Option(help="A multi-label task (or recipe) whose classes to relate.")] = None,
    classes: Annotated[Optional[Path], typer.Option(help="Or a file of class names, one per line.")] = None,
    template: Annotated[str, typer.Option(help="Prompt template for the class-name embeddings.")] = PriorConfig.template,
    topk: Annotated[Optional[int], typer.Option(help="Neighbours kept per row, self included [default: 78 % of the classes].")] = None,
    reweight_p: Annotated[float, typer.Option(help="Neighbour mass of each adjacency row (the diagonal gets 1 - p).")] = PriorConfig.reweight_p,
    temperature: Annotated[float, typer.Option(help="Softmax temperature of the relation matrix.")] = PriorConfig.temperature,
    out: Annotated[Optional[Path], typer.Option(help="Folder for similarity.csv, adjacency.csv, relation.csv (and cooccurrence.csv with --tasks).")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    json_out: Annotated[bool, typer.Option("--json", help="Print a summary (and the matrices without --out) as JSON.")] = False,
    quiet: Annotated[bool, typer.Option(help="No table on stderr.")] = False,
) -> None:
    """SCPNet's label-to-label prior from CLIP's text encoder: similarity, adjacency, relation."""
    names, targets = _classes(tasks, classes)
    cfg = PriorConfig(template=template, topk=topk, reweight_p=reweight_p, temperature=temperature)
    prior = label_prior(load_backbone(backbone, device, pretrained=pretrained), names, cfg)
    frames = prior.frames()
    r = None
    if targets is not None:  # does the text prior agree with how these labels co-occur?
        cooc = cooccurrence(targets)
        frames["cooccurrence"] = pd.DataFrame(cooc, index=names, columns=names)
        r = agreement(prior.similarity, cooc)
    if out is not None:
        for name, frame in frames.items():
            write_csv(out / f"{name}.csv", frame.reset_index(names="class"))
    if json_out:
        summary = {"classes": len(names), "template": template, "topk": cfg.k(len(names)), "reweight_p": reweight_p,
                   "temperature": temperature, "out": str(out) if out else None, "cooccurrence_r": r}
        if out is None:
            summary["similarity"] = frames["similarity"].round(4).to_dict(orient="index")
        emit_json(summary)
    if not quiet:
        nearest = frames["similarity"].apply(lambda row: row.drop(row.name).idxmax(), axis=1)
        for name, other in nearest.items():
            console.print(f"{name} -> {other}  ({frames['similarity'].loc[name, other]:.3f})", highlight=False)
        if r is not None:
            verdict = ("it follows how these labels co-occur" if r >= 0.5 else "it partly follows how these labels "
                       "co-occur" if r >= 0.2 else "the prior says little about how these labels co-occur")
            console.print(f"similarity vs. training-label co-occurrence P(j|i), off the diagonal: r = {r:.2f} "
                          f"({verdict})", highlight=False)
