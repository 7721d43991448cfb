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
ML = "Multi-label data and partial labels"
SCP = "SCPNet"


def _str(path: Optional[Path]) -> Optional[str]:
    return str(path) if path is not None else None


@app.command("fit", epilog="""Examples:

  cpt fit --method coop --tasks pets=data/pets --shots 16 --seed 1 --backbone RN50 --out runs/pets-coop

  cpt fit --method zeroshot --tasks flowers=data/flowers --templates ensemble --json

  cpt fit --method softcpt --tasks toy --backbone toy --shots 4

  cpt fit --method scpnet --labels train.csv --images imgs/ --test-labels test.csv --known-ratio 0.3

  cpt fit --method scpnet --tasks toy-ml --backbone toy --known-ratio 0.3 --no-prior

  cpt fit --resume runs/pets-coop
""")
@command
def fit_cmd(
    tasks: Annotated[str, typer.Option(help="Tasks as NAME=PATH[,NAME=PATH...] (PATH: an image folder with train/ [val/] test/ or class folders, a CSV path,label[,split], or a CoOp split JSON SPLIT.json[@IMAGE_ROOT]); a task file (.yaml/.json); a recipe (toy, toy-ml); or a benchmark (general10, plant6, fashion20).")] = "",
    data_root: Annotated[Optional[Path], typer.Option(help="Where the benchmark datasets live [default: $CPT_DATA_ROOT or ~/data].")] = None,
    method: Annotated[str, typer.Option(help=f"One of: {', '.join(METHODS)}.")] = DEFAULTS.method,
    shots: Annotated[int, typer.Option(help="Training images per class (0 = all).")] = DEFAULTS.shots,
    labels: Annotated[Optional[Path], typer.Option(help="Multi-label label file instead of --tasks: a wide CSV path,<class>... (1/0/-1 or blank), a long CSV path,labels (';'-joined positives), a COCO instances_*.json, a VOC folder or ImageSets/Main/<split>.txt. --tasks then only names the task.", rich_help_panel=ML)] = None,
    images: Annotated[Optional[Path], typer.Option(help="Image root of --labels [default: the CSV's folder; COCO: ../<split> beside annotations/; VOC: JPEGImages].", rich_help_panel=ML)] = None,
    test_labels: Annotated[Optional[Path], typer.Option(help="Test label file (same format and classes) [default: 30% of --labels, split by --seed].", rich_help_panel=ML)] = None,
    unknown_value: Annotated[int, typer.Option(help="Wide CSV: the cell value meaning unknown: -1 (then 0 is negative) or 0 (then -1 is negative).", rich_help_panel=ML)] = DEFAULTS.unknown_value,
    known_ratio: Annotated[float, typer.Option(help="Keep each training (image, label) entry known with this probability (under --seed); the mask is saved in the run.", rich_help_panel=ML)] = DEFAULTS.known_ratio,
    mask: Annotated[Optional[Path], typer.Option(help="Reuse a saved mask_<task>.csv (1 known, 0 hidden) instead of drawing one.", rich_help_panel=ML)] = None,
    single_positive: Annotated[bool, typer.Option(help="Keep one positive label per training image, every other entry unknown.", rich_help_panel=ML)] = False,
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
    n_ctx: Annotated[Optional[int], typer.Option(help="Context tokens of a learned prompt [default: 16; scpnet: 4].")] = None,
    ctx_init: Annotated[Optional[str], typer.Option(help="Initialise the context from these words; sets --n-ctx [default: random; scpnet: 'a photo of a'].")] = None,
    class_specific: Annotated[bool, typer.Option(help="One context per class (CoOp-CS) instead of one per task.")] = DEFAULTS.class_specific,
    class_token_position: Annotated[str, typer.Option(help="Where the class name goes: end, middle or front.")] = DEFAULTS.position,
    template: Annotated[Optional[list[str]], typer.Option(help="Zero-shot prompt template with {} for the class (repeatable), or 'ensemble'.")] = None,
    aug_views: Annotated[int, typer.Option(help="Augmented views cached per training image.")] = DEFAULTS.aug_views,
    crop_scale: Annotated[Optional[float], typer.Option(help="Smallest area fraction of the random resized crop (1 = flips only) [default: CoOp's 0.08; 1.0 for the toy recipe].")] = None,
    no_prior: Annotated[bool, typer.Option(help="Ablation: no label prior (identity graph, uncalibrated soft targets).", rich_help_panel=SCP)] = False,
    no_gcn: Annotated[bool, typer.Option(help="Ablation: no graph module over the class features.", rich_help_panel=SCP)] = False,
    no_self_training: Annotated[bool, typer.Option(help="Ablation: the supervised loss only (no weak/strong self-training).", rich_help_panel=SCP)] = False,
    strong_augment: Annotated[Optional[str], typer.Option(help="Strong view: 'randaugment' (3 ops, magnitude 5, as SCPNet) or 'colour-safe' (no op that shifts hues, for colour labels) [default: randaugment; colour-safe for toy-ml].", rich_help_panel=SCP)] = None,
    finetune_image: Annotated[bool, typer.Option(help="Train the image encoder too, as the paper does (slow: no feature cache for training).", rich_help_panel=SCP)] = False,
    image_lr_scale: Annotated[Optional[float], typer.Option(help="With --finetune-image: the image encoder's learning rate as a share of --lr [default: 0.1].", rich_help_panel=SCP)] = None,
    logit_scale: Annotated[Optional[float], typer.Option(help="Fixed logit scale [default: 10, SCPNet's COCO setting].", rich_help_panel=SCP)] = None,
    lambda_u: Annotated[Optional[float], typer.Option(help="Weight of the self-training term [default: 0.125].", rich_help_panel=SCP)] = None,
    kl_lambda: Annotated[Optional[float], typer.Option(help="Weight of the prior-calibrated soft targets within it [default: 1].", rich_help_panel=SCP)] = None,
    p_cutoff: Annotated[Optional[float], typer.Option(help="Pseudo-label confidence cut-off before class adaptation [default: 0.95].", rich_help_panel=SCP)] = None,
    hard_k: Annotated[Optional[int], typer.Option(help="Pseudo-label candidates per image [default: 2].", rich_help_panel=SCP)] = None,
    topk: Annotated[Optional[int], typer.Option(help="Prior: neighbours kept per class [default: 78% of the classes].", rich_help_panel=SCP)] = None,
    reweight_p: Annotated[Optional[float], typer.Option(help="Prior: neighbour mass; the class itself keeps 1 - p [default: 0.2].", rich_help_panel=SCP)] = None,
    temperature: Annotated[Optional[float], typer.Option(help="Prior: softmax temperature of the relation [default: 0.2].", rich_help_panel=SCP)] = None,
    prior_template: Annotated[Optional[str], typer.Option(help="Prior: template of the class-name embeddings [default: 'a photo of a {}.'].", rich_help_panel=SCP)] = None,
    cache_dir: Annotated[Optional[Path], typer.Option(help="Feature cache [default: $CPT_CACHE or ~/.cache/cpt].")] = None,
    clip_cache: Annotated[Optional[Path], typer.Option(help="Where OpenAI CLIP weights are downloaded [default: ~/.cache/clip].")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars or info messages.")] = False,
) -> None:
    """Train (or zero-shot build) a classifier per task, then evaluate it on the test split."""
    if resume is not None:
        result = fit(FitRequest(out=str(resume)), resume=True)
    else:
        if not tasks and labels is None:
            raise CptError("Give the tasks to train on with --tasks, e.g. --tasks pets=data/pets, or a multi-label "
                           "--labels FILE (or --resume RUN).")
        names = '+'.join(n.split('=')[0] for n in tasks.split(',')) if tasks else labels.stem
        default_out = Path("runs") / (f"{method}-{names}-known{known_ratio:g}-seed{seed}" if labels
                                      else f"{method}-{names}-{shots}shot-seed{seed}")
        req = FitRequest(
            method=method, tasks=tasks, known_ratio=known_ratio, labels=_str(labels), images=_str(images),
            test_labels=_str(test_labels), unknown_value=unknown_value, mask=_str(mask), single_positive=single_positive,
            no_prior=no_prior, no_gcn=no_gcn, no_self_training=no_self_training, finetune_image=finetune_image, strong_augment=strong_augment,
            image_lr_scale=image_lr_scale, logit_scale=logit_scale,
            lambda_u=lambda_u, kl_lambda=kl_lambda, p_cutoff=p_cutoff, hard_k=hard_k, topk=topk,
            reweight_p=reweight_p, temperature=temperature, prior_template=prior_template, data_root=str(data_root) if data_root else None, out=str(out or default_out), shots=shots, seed=seed, backbone=backbone,
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
