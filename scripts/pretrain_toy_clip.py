"""Pretrain the toy CLIPs shipped as `--backbone toy` and `toy-themed` (cpt/assets/).

A small `clip.model.CLIP` (ViT 32 px / patch 8, width 128, 4 layers; text width 128,
3 layers, context 24; embedding 64) learns contrastively (symmetric InfoNCE, learnable
temperature) from toy-world images and their noisy captions. Only the token ids that occur
in the captions, the toy class names and the prompt templates get embedding rows during
training (a compact table, so each step does not update CLIP's 49,408-row vocabulary);
at the end they are scattered into a full-vocabulary table whose other rows are zero, the
state dict is saved in fp16 (as OpenAI's are) and gzipped: the zero rows compress away.

Command (seed 0), as run for the shipped checkpoint:

    python scripts/pretrain_toy_clip.py --steps 1200 --seed 0

It took 613 s (1,200 steps of batch 256 from 40,000 pairs) on the project's 2-core CPU
development machine, no GPU, while other jobs shared the cores; the gzipped file is 2.7 MB.
Zero-shot test accuracy of the result with "a photo of a {}." (`cpt fit --method zeroshot
--tasks toy --backbone toy`): shape 59.6, colour 75.3, count 43.1, size 70.0 (chance 16.7,
12.5, 25, 50); mean 62.0. Zero-shot mAP on toy-ml (`--tasks toy-ml`, 600 test images,
18 labels): 66.2, against 26.0-26.4 for random scores (seeds 0-2; mean label prevalence 25.4%).

`--backbone toy-themed` (cpt/assets/toy-themed-clip.pt.gz) is the same geometry trained on a
world where the text of a label must match whole themed scenes: 60% of the pairs are toy-ml's
themed scenes captioned by one of their labels (two now and then, an absent one 20% of the
time), the rest single-kind scenes described in full. Labels that co-occur then get similar
text features, CLIP's premise that SCPNet's prior relies on:

    python scripts/pretrain_toy_clip.py --world themed --steps 400 --pairs 20000 --seed 0

(1,249 s on the 2-core machine while other jobs shared its cores; about 4 minutes alone).
`cpt prior --backbone toy-themed --tasks toy-ml` reports r = 0.66 between class-name
similarity and toy-ml's co-occurrence (the plain toy CLIP: 0.06); zero-shot mAP on toy-ml 88.8.
"""

from __future__ import annotations

import argparse
import gzip
import io
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from clip.model import CLIP
from cpt_datasets import recipes, toy_world

from cpt.core.backbone import CLIP_MEAN, CLIP_STD
from cpt.core.text import tokenizer, word_ids

GEOMETRY = dict(
    embed_dim=64, image_resolution=32, vision_layers=4, vision_width=128, vision_patch_size=8,
    context_length=24, vocab_size=49408, transformer_width=128, transformer_heads=2, transformer_layers=3,
)
ASSETS = Path(__file__).resolve().parents[1] / "cpt" / "assets"
OUT = {"plain": ASSETS / "toy-clip.pt.gz", "themed": ASSETS / "toy-themed-clip.pt.gz"}


def label_caption(scene: toy_world.Scene, rng: np.random.Generator) -> str:
    """One of the scene's toy-ml labels (two now and then; one absent label in place of a
    present one 20% of the time), as toy-ml names them: "a photo of a red." or "... a red and star."."""
    present = [label for label, on in zip(recipes.TOY_ML_LABELS, recipes.labels(scene)) if on]
    words = [present[i] for i in rng.permutation(len(present))[: 1 + int(rng.random() < 0.3)]]
    if rng.random() < 0.2:
        absent = [label for label in recipes.TOY_ML_LABELS if label not in present]
        words[0] = absent[rng.integers(len(absent))]
    return f"a photo of a {' and '.join(w.replace('_', ' ') for w in words)}."


def make_pairs(n: int, seed: int, world: str) -> tuple[torch.Tensor, list[str]]:
    """n normalised images (n, 3, 32, 32) and captions. `plain`: 70% single-kind scenes, 30%
    themed mixtures, every caption a full description. `themed`: 60% themed mixtures captioned
    by one of their labels (so a label's text must match whole scenes of its theme), 40%
    single-kind scenes described in full."""
    rng = np.random.default_rng(seed)
    themed_share = {"plain": 0.3, "themed": 0.6}[world]
    images, captions = np.empty((n, 32, 32, 3), np.uint8), []
    for i in range(n):
        if rng.random() < themed_share:
            scene = recipes.themed_scene(rng)
            text = label_caption(scene, rng) if world == "themed" else None
        else:
            scene, text = toy_world.make_scene(rng), None
        images[i] = np.asarray(toy_world.render(scene, rng))
        captions.append(text or toy_world.caption(scene, rng))
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std, captions


def toy_vocabulary(captions: list[str]) -> list[int]:
    """Token ids the toy CLIP needs: captions, class names, templates, start/end."""
    texts = set(captions) | {"a photo of a {}."}
    texts |= {name.replace("_", " ") for classes in recipes.TOY_TASKS.values() for name in classes}
    texts |= {name.replace("_", " ") for name in recipes.TOY_ML_LABELS}
    enc = tokenizer().encoder
    ids = {enc["<|startoftext|>"], enc["<|endoftext|>"]}
    for text in texts:
        ids.update(word_ids(text))
    return sorted(ids)


def tokenize(captions: list[str], lookup: torch.Tensor, context: int) -> torch.Tensor:
    """Compact token ids (n, context) via `lookup` (full id -> compact id)."""
    sot, eot = tokenizer().encoder["<|startoftext|>"], tokenizer().encoder["<|endoftext|>"]
    out = torch.zeros(len(captions), context, dtype=torch.long)
    for i, text in enumerate(captions):
        ids = [sot, *word_ids(text)[: context - 2], eot]
        out[i, : len(ids)] = lookup[torch.tensor(ids)]
    return out


def train(steps: int, batch: int, seed: int, pairs: int, lr: float, world: str) -> tuple[CLIP, list[int]]:
    torch.manual_seed(seed)
    images, captions = make_pairs(pairs, seed, world)
    vocab = toy_vocabulary(captions)
    lookup = torch.zeros(GEOMETRY["vocab_size"], dtype=torch.long)
    lookup[torch.tensor(vocab)] = torch.arange(len(vocab))
    # argmax-of-ids finds EOT in CLIP; keep that true for compact ids: EOT gets the largest compact id
    assert vocab[-1] == tokenizer().encoder["<|endoftext|>"]
    tokens = tokenize(captions, lookup, GEOMETRY["context_length"])
    model = CLIP(**{**GEOMETRY, "vocab_size": len(vocab)})
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for step in range(steps):
        idx = torch.randint(0, pairs, (batch,), generator=gen)
        logits_img, logits_txt = model(images[idx], tokens[idx])
        # duplicate captions in a batch are true positives too: soft targets over equal captions
        same = (tokens[idx].unsqueeze(0) == tokens[idx].unsqueeze(1)).all(-1).float()
        target = same / same.sum(1, keepdim=True)
        loss = (F.cross_entropy(logits_img, target) + F.cross_entropy(logits_txt, target)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step:5d} loss {loss.item():.3f} scale {model.logit_scale.exp().item():.1f} {time.time() - t0:.0f}s", flush=True)
    return model, vocab


def full_vocabulary_state(model: CLIP, vocab: list[int]) -> dict[str, torch.Tensor]:
    """The state dict with the compact embedding scattered into CLIP's full vocabulary, in fp16."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    table = torch.zeros(GEOMETRY["vocab_size"], GEOMETRY["transformer_width"])
    table[torch.tensor(vocab)] = state["token_embedding.weight"]
    state["token_embedding.weight"] = table
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--pairs", type=int, default=40000)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--world", choices=sorted(OUT), default="plain",
                        help="plain: --backbone toy; themed: --backbone toy-themed (captions name co-occurring labels)")
    parser.add_argument("--out", type=Path, help="where to write [default: the shipped asset of --world]")
    args = parser.parse_args()
    out = args.out or OUT[args.world]
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    t0 = time.time()
    model, vocab = train(args.steps, args.batch, args.seed, args.pairs, args.lr, args.world)
    buffer = io.BytesIO()
    torch.save(full_vocabulary_state(model, vocab), buffer)
    out.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(out, "wb", compresslevel=9) as fh:
        fh.write(buffer.getvalue())
    print(f"saved {out} ({out.stat().st_size / 1e6:.1f} MB) after {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
