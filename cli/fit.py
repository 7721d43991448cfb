"""`cpt fit`: parse options, delegate to cpt.fit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from cpt_cli.app import app, command, emit_json, show_metrics

from cpt.errors import CptError
from cpt.fit import fit
from cpt.methods import METHODS
from cpt.options import FitRequest

DEFAULTS = FitRequest()


@app.command("fit", epilog="""Examples:

  cpt fit --method coop --tasks pets=data/pets --shots 16 --seed 1 --backbone RN50 --out runs/pets-coop

  cpt fit --method zeroshot --tasks flowers=data/flowers --templates ensemble --json

  cpt fit --method softcpt --tasks toy --backbone toy --shots 4

  cpt fit --resume runs/pets-coop
""")
@command
def fit_cmd(
    tasks: Annotated[str, typer.Option(help="Tasks as NAME=PATH[,NAME=PATH...] (PATH: an image folder with train/ [val/] test/ or class folders, a CSV path,label[,split], or a CoOp split JSON SPLIT.json[@IMAGE_ROOT]); a task file (.yaml/.json); a recipe (toy, toy-ml); or a benchmark (general10, plant6, fashion20).")] = "",
    data_root: Annotated[Optional[Path], typer.Option(help="Where the benchmark datasets live [default: $CPT_DATA_ROOT or ~/data].")] = None,
    method: Annotated[str, typer.Option(help=f"One of: {', '.join(METHODS)}.")] = DEFAULTS.method,
    shots: Annotated[int, typer.Option(help="Training images per class (0 = all).")] = DEFAULTS.shots,
    known_ratio: Annotated[float, typer.Option(help="Multi-label: keep each training (image, label) entry known with this probability (under --seed).")] = DEFAULTS.known_ratio,
    seed: Annotated[int, typer.Option(help="Seed of sampling, splits, initialisation and training order.")] = DEFAULTS.seed,
    backbone: Annotated[str, typer.Option(help="OpenAI CLIP name (RN50, ViT-B/16, ...) or a checkpoint path.")] = DEFAULTS.backbone,
    out: Annotated[Optional[Path], typer.Option(help="Run directory [default: runs/<method>-<tasks>-<shots>shot-seed<seed>].")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue the interrupted run in this directory (its saved options are used).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run directory.")] = False,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = DEFAULTS.device,
    precision: Annotated[str, typer.Option(help="fp32, fp16 or bf16 for the frozen CLIP.")] = DEFAULTS.precision,
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs [default: CoOp's by shots, 50/100/200; 50 for softcpt and coop-shared].")] = None,
    batch_size: Annotated[int, typer.Option(help="Training batch size.")] = DEFAULTS.batch_size,
    lr: Annotated[float, typer.Option(help="SGD learning rate.")] = DEFAULTS.lr,
    momentum: Annotated[float, typer.Option(help="SGD momentum.")] = DEFAULTS.momentum,
    weight_decay: Annotated[float, typer.Option(help="SGD weight decay.")] = DEFAULTS.weight_decay,
    warmup_epochs: Annotated[int, typer.Option(help="Epochs at the constant warm-up rate 1e-5.")] = DEFAULTS.warmup_epochs,
    task_sampling: Annotated[str, typer.Option(help="Batches mix tasks in proportion to their images, or 'balanced'.")] = DEFAULTS.task_sampling,
    variant: Annotated[str, typer.Option(help="SoftCPT: nata (default), nats, cata, csta, cats, csts.")] = DEFAULTS.variant,
    task_n_ctx: Annotated[int, typer.Option(help="SoftCPT: context tokens of the task prompt.")] = DEFAULTS.task_n_ctx,
    class_n_ctx: Annotated[int, typer.Option(help="SoftCPT class-feature variants: context tokens of the class prompt.")] = DEFAULTS.class_n_ctx,
    class_sample_rate: Annotated[float, typer.Option(help="Approximate: per step, encode the batch's classes plus this share of the others (0 = all).")] = DEFAULTS.class_sample_rate,
    amp: Annotated[bool, typer.Option(help="Approximate: bf16 autocast of the training forward pass (GPU).")] = DEFAULTS.amp,
    grad_checkpoint: Annotated[bool, typer.Option(help="Recompute text-encoder activations in backward: less memory, more time.")] = DEFAULTS.grad_checkpoint,
    n_ctx: Annotated[int, typer.Option(help="Context tokens of a learned prompt.")] = DEFAULTS.n_ctx,
    ctx_init: Annotated[str, typer.Option(help="Initialise the context from these words (e.g. 'a photo of a'); sets --n-ctx.")] = DEFAULTS.ctx_init,
    class_specific: Annotated[bool, typer.Option(help="One context per class (CoOp-CS) instead of one per task.")] = DEFAULTS.class_specific,
    class_token_position: Annotated[str, typer.Option(help="Where the class name goes: end, middle or front.")] = DEFAULTS.position,
    template: Annotated[Optional[list[str]], typer.Option(help="Zero-shot prompt template with {} for the class (repeatable), or 'ensemble'.")] = None,
    aug_views: Annotated[int, typer.Option(help="Augmented views cached per training image.")] = DEFAULTS.aug_views,
    crop_scale: Annotated[Optional[float], typer.Option(help="Smallest area fraction of the random resized crop (1 = flips only) [default: CoOp's 0.08; 1.0 for the toy recipe].")] = None,
    cache_dir: Annotated[Optional[Path], typer.Option(help="Feature cache [default: $CPT_CACHE or ~/.cache/cpt].")] = None,
    clip_cache: Annotated[Optional[Path], typer.Option(help="Where OpenAI CLIP weights are downloaded [default: ~/.cache/clip].")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars or info messages.")] = False,
) -> None:
    """Train (or zero-shot build) a classifier per task, then evaluate it on the test split."""
    if resume is not None:
        result = fit(FitRequest(out=str(resume)), resume=True)
    else:
        if not tasks:
            raise CptError("Give the tasks to train on with --tasks, e.g. --tasks pets=data/pets (or --resume RUN).")
        default_out = Path("runs") / f"{method}-{'+'.join(n.split('=')[0] for n in tasks.split(','))}-{shots}shot-seed{seed}"
        req = FitRequest(
            method=method, tasks=tasks, known_ratio=known_ratio, data_root=str(data_root) if data_root else None, out=str(out or default_out), shots=shots, seed=seed, backbone=backbone,
            device=device, precision=precision, cache_dir=str(cache_dir) if cache_dir else None,
            clip_cache=str(clip_cache) if clip_cache else None, epochs=epochs, batch_size=batch_size, lr=lr,
            momentum=momentum, weight_decay=weight_decay, warmup_epochs=warmup_epochs, n_ctx=n_ctx,
            class_sample_rate=class_sample_rate, amp=amp, grad_checkpoint=grad_checkpoint, task_sampling=task_sampling,
            variant=variant, task_n_ctx=task_n_ctx, class_n_ctx=class_n_ctx,
            ctx_init=ctx_init, class_specific=class_specific, position=class_token_position,
            templates=list(template or []), aug_views=aug_views, crop_scale=crop_scale,
        )
        result = fit(req, overwrite=overwrite)
    if json_out:
        emit_json(result.summary())
    if not quiet:
        show_metrics(result.metrics, f"{result.run} (test)")
