"""`cpt eval`: parse options, delegate to cpt.eval.evaluate."""

from pathlib import Path
from typing import Annotated

import typer
from cpt_cli.app import app, command, emit_json, show_metrics

from cpt import dist
from cpt.eval.evaluate import EvalRequest, evaluate_targets


@app.command("eval", epilog="""Examples:

  cpt eval runs/pets-coop

  cpt eval runs/pets-coop --data new_photos/ --out runs/pets-coop/new --json

  cpt eval runs/pets-base --classes new     # base-to-new: a run trained with --classes base, on the unseen half

  cpt eval RN50 --data data/pets/test --template 'a photo of a {}, a type of pet.'

  cpt eval runs/ml-coop-0.1 runs/ml-coop-0.5 runs/ml-coop-1.0 --out runs/ml-compare

  torchrun --nproc-per-node 4 -m cpt eval runs/pets-coop --data big_test_set/
""")
@command(distributed=True)
def eval_cmd(
    targets: Annotated[list[str], typer.Argument(metavar="TARGET...", help="A run directory, or a backbone (name or checkpoint) for zero-shot; or several runs of any kind, each re-evaluated into its folder and compared in --out (comparison.csv, report.md, each kind's headline metric against its shots or known ratio).")],
    data: Annotated[str | None, typer.Option(help="Evaluate on this folder / CSV / split JSON instead of the run's test split.")] = None,
    task: Annotated[str | None, typer.Option(help="With --data on a multi-task run: the task the data belongs to.")] = None,
    out: Annotated[Path | None, typer.Option(help="Where to write the CSVs and report [default: the run, or runs/eval-...]; with several runs, the comparison (required).")] = None,
    template: Annotated[list[str] | None, typer.Option(help="Zero-shot template(s) with {} (or 'ensemble').")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda or auto [default: the run's].")] = None,
    precision: Annotated[str | None, typer.Option(help="fp32, fp16 or bf16 [default: the run's].")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Feature cache [default: the run's, $CPT_CACHE or ~/.cache/cpt].")] = None,
    clip_cache: Annotated[Path | None, typer.Option(help="Where OpenAI CLIP weights live [default: ~/.cache/clip].")] = None,
    pretrained: Annotated[str | None, typer.Option(help="An OpenCLIP backbone target's weights (TARGET openclip:ARCH): a tag or a checkpoint file.")] = None,
    classes: Annotated[str | None, typer.Option(help="Base-to-new: evaluate a run trained with --classes base on its tasks' new (or base, or all) classes, into RUN/classes-NEW [default: the run's own].")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON on stdout.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars or info messages.")] = False,
) -> None:
    """Evaluate a run (accuracy, mean per-class accuracy, macro-F1, per-class table, confusion matrix; mAP and
    PR curves for multi-label runs), or compare several runs."""
    req = EvalRequest(
        target=targets[0], data=data, task=task, out=str(out) if out else None, templates=list(template or []) or None,
        device=device, precision=precision, cache_dir=str(cache_dir) if cache_dir else None,
        clip_cache=str(clip_cache) if clip_cache else None, classes=classes, pretrained=pretrained,
    )
    where, metrics = evaluate_targets(targets, req)
    if not dist.is_main():  # under torchrun rank 0 reports
        return
    if json_out:
        emit_json({"out": str(where), "metrics": metrics.to_dict(orient="records")})
    if not quiet:
        show_metrics(metrics, f"{', '.join(targets)} -> {where}")
