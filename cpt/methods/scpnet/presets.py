"""SCPNet's published recipes (jameslahm/SCPNet, the authors' code) as `--preset` values.

Shared by the four data sets (configs/base.yaml, train.py, utils.py): Adam with L2 weight
decay 1e-4 on weight matrices only (add_weight_decay), OneCycleLR per step with pct_start 0.2
and per-group peaks [lr, lr, gcn_lr, gcn_lr], batch 128, the image encoder at the prompt's rate,
an EMA of the weights decaying to 0.82 per epoch (get_ema_co: 0.82 ** (1 / steps per epoch)),
single-positive training labels (dataset/*_train*.txt: one label per image) under SPLC,
lambda_u 0.125, p_cutoff 0.95, reweight_p 0.2. Per data set (configs/scpnet+<data>.yaml): lr,
gcn_lr, epochs (total_epochs: the OneCycle length), sparse_topk, T, hard_k, kl_lambda, scale.

The reference keeps the epoch whose model or EMA weights score the best mAP on its test split;
the presets select the same way on a validation split held out from the training images
(--val-ratio 0.1, cpt's choice), never on test.
"""

from __future__ import annotations

from cpt.methods.base import Preset, preset_table

SHARED = {"optimizer": "adam", "schedule": "onecycle", "weight_decay": 1e-4, "batch_size": 128, "select": "val",
          "val_ratio": 0.1, "single_positive": True, "image_lr_scale": 1.0, "lambda_u": 0.125, "p_cutoff": 0.95,
          "reweight_p": 0.2, "logit_scale": 10.0}
NOT_FOLLOWED = ("Not followed: the reference fine-tunes the image encoder (add --finetune-image: slow, views encoded "
                "every step) in fp16 with autocast (cpt trains in fp32; --precision is a run setting the preset "
                "leaves alone), and selects its epoch on the test split.")
FILES = "jameslahm/SCPNet: configs/base.yaml, configs/scpnet+{}.yaml, train.py, utils.py (get_ema_co, add_weight_decay)"


def _recipe(name: str, data: str, what: str, steps: int, note: str = "", **values: object) -> Preset:
    """A data set's recipe: the shared values, its own, and a summary saying what differs from the reference."""
    values = {**SHARED, **values}
    summary = (f"SCPNet's {what} recipe, single positive labels (SPLC). --ema-decay is 0.82 per epoch at the "
               f"reference's {steps} steps of {values['batch_size']} images. {note}{NOT_FOLLOWED}")
    return Preset(name, summary, FILES.format(data), values)


SCPNET_PRESETS = preset_table(
    _recipe("scpnet-coco", "coco", "COCO-2014 (80 classes)", 641,
            "The reference stops after 60 epochs of an 80-epoch OneCycle schedule. ",
            lr=3e-5, graph_lr=1e-5, epochs=60, schedule_epochs=80, ema_decay=0.99969, topk=62, temperature=0.2,
            hard_k=2, kl_lambda=1.0),
    _recipe("scpnet-voc", "voc", "VOC-2012 (20 classes)", 45,
            lr=4e-5, graph_lr=2e-4, epochs=120, ema_decay=0.9956, topk=20, temperature=0.3, hard_k=5, kl_lambda=2.0),
    _recipe("scpnet-nus", "nuswide", "NUS-WIDE (81 classes)", 931,
            "Its config sets no total_epochs; the rates in logs/scpnet+nuswide.txt follow an 80-epoch schedule, as "
            "COCO's. Logits use CLIP's own scale (scale: clip, 100 for OpenAI's CLIP), which the reference also "
            "trains; cpt keeps it fixed. ",
            lr=3e-5, graph_lr=1e-4, epochs=60, schedule_epochs=80, ema_decay=0.999787, topk=50, temperature=0.2,
            hard_k=6, kl_lambda=1.0, logit_scale=100.0),
    _recipe("scpnet-cub", "cub", "CUB-200-2011 attributes (312 classes)", 63,
            lr=3e-4, graph_lr=2e-4, epochs=100, batch_size=96, ema_decay=0.996855, topk=312, temperature=0.3,
            hard_k=31, kl_lambda=3.0),
)
