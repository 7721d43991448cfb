"""`cpt bench`: parse options, delegate to cpt.bench.prompt, print the figures."""

from typing import Annotated, Optional

import typer
from cpt_cli.app import app, command, emit_json
from rich.table import Table

from cpt.bench.prompt import GEOMETRIES, as_dicts, machine, rank_threads, run_bench, run_rank_bench
from cpt.bench.scpnet import run_scpnet_bench
from cpt.bench.store import run_store_bench
from cpt.bench.merging import bench_merging
from cpt.bench.video import VIDEO_METHODS, run_video_bench
from cpt.console import console
from cpt.errors import CptError


def _counts(text: str, option: str = "--classes", what: str = "class counts", example: str = "10,100,1191") -> list[int]:
    """A comma-separated option (--classes, --ranks) as whole numbers, each at least 1."""
    try:
        counts = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise CptError(f"{option} takes comma-separated {what} of at least 1, e.g. {example} (got {text!r}).")
    return counts


@app.command("bench", epilog="""Examples:

  cpt bench                                  # tiny and toy CLIP, 10 / 100 / 1,191 / 5,000 classes, CPU

  cpt bench --geometry vit-b16 --classes 1191 --device cuda --json

  cpt bench --scpnet                         # feature cache images/s and bytes, SCPNet step for 20 / 80 / 1,000 classes

  cpt bench --store                          # 100,000 cached entries: the feature store against one .npy per image

  cpt bench --ranks 1,2                      # class-sharded step on 1 and 2 processes, tiny CLIP, 1,191 / 5,000 classes

  cpt bench --ranks 1,2,4,8 --geometry vit-b16 --device cuda

  cpt bench --video                          # retrieval step per method at ViT-B/32, 12 frames; merging; decode
""")
@command
def bench_cmd(
    geometry: Annotated[Optional[list[str]], typer.Option(help=f"Model geometry (repeatable): {', '.join(GEOMETRIES)}; random weights except toy [default: tiny, toy].")] = None,
    classes: Annotated[Optional[str], typer.Option(help="Comma-separated class counts [default: 10,100,1191,5000; with --scpnet 20,80,1000].")] = None,
    scpnet: Annotated[bool, typer.Option(help="SCPNet's figures instead: feature extraction images/s, cache bytes per image, training step on cached features.")] = False,
    store: Annotated[bool, typer.Option(help="The feature store's figures instead: files, bytes, write and cache-hit read seconds of --entries entries, against one .npy file per image.")] = False,
    entries: Annotated[int, typer.Option(help="With --store: entries (random tiny-CLIP features, dim 32) to write and read.")] = 100_000,
    ranks: Annotated[Optional[str], typer.Option(help="Comma-separated process counts: the optimised step with class-sharded text encoding on each (processes of this machine sharing its threads, gloo; one GPU each with CUDA), step time and peak memory per rank [default classes: 1191,5000; geometry: tiny].")] = None,
    video: Annotated[bool, typer.Option(help="Text-video retrieval's figures instead: a step of zero-shot encoding, coop-video, clip4clip, dgl and tempme on --batch videos of --frames frames [default geometry: vit-b32]; token merging (none, tome, tempme): tokens, GFLOPs, inference and training time, memory; and the frame cache's decoded frames per second, cold and warm.")] = False,
    frames: Annotated[int, typer.Option(help="With --video: frames per video.")] = 12,
    batch: Annotated[int, typer.Option(help="With --video: videos (and captions) per step.")] = 8,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    precision: Annotated[str, typer.Option(help="fp32, fp16 or bf16 for the frozen CLIP.")] = "fp32",
    repeats: Annotated[int, typer.Option(help="Timed steps per path (median reported), after one warm-up.")] = 5,
    n_ctx: Annotated[int, typer.Option(help="Context tokens of the prompt.")] = 16,
    json_out: Annotated[bool, typer.Option("--json", help="Print the figures as JSON on stdout.")] = False,
    quiet: Annotated[bool, typer.Option(help="No table on stderr.")] = False,
) -> None:
    """Time the optimised training step against a naive CoOp loop (full context, images re-encoded)."""
    if store:
        _store(entries, json_out, quiet)
        return
    if video:
        _video(list(geometry or ["vit-b32"]), device, frames, batch, repeats, json_out, quiet)
        return
    if ranks is not None:
        _ranks(_counts(ranks, "--ranks", "process counts", "1,2"), list(geometry or ["tiny"]),
               _counts(classes or "1191,5000"), device, precision, repeats, n_ctx, json_out, quiet)
        return
    counts = _counts(classes or ("20,80,1000" if scpnet else "10,100,1191,5000"))
    if scpnet:
        _scpnet(list(geometry or ["tiny", "toy"]), counts, device, repeats, json_out, quiet)
        return
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


def _scpnet(geometries: list[str], counts: list[int], device: str, repeats: int, json_out: bool, quiet: bool) -> None:
    extraction, steps = run_scpnet_bench(geometries, counts, device, repeats)
    where = machine()
    if json_out:
        emit_json({"machine": where, "extraction": as_dicts(extraction), "steps": as_dicts(steps)})
    if quiet:
        return
    table = Table(title=f"feature cache on {where} (64 PNGs, 8 views; bytes on disk per image)")
    for col in ("model", "view", "views/image", "images/s", "bytes/image"):
        table.add_column(col, justify="right")
    for r in extraction:
        table.add_row(r.geometry, r.view, str(r.views_per_image), f"{r.images_per_s:.1f}", f"{r.bytes_per_image:.0f}")
    console.print(table)
    table = Table(title="SCPNet training step on cached features (batch 32: weak + weak + strong views)")
    for col in ("model", "classes", "ms/step", "steps/s", "MB"):
        table.add_column(col, justify="right")
    for r in steps:
        table.add_row(r.geometry, str(r.classes), f"{r.step_ms:.1f}", f"{r.steps_per_s:.2f}", f"{r.peak_mb:.0f}")
    console.print(table)


def _store(entries: int, json_out: bool, quiet: bool) -> None:
    rows = run_store_bench(entries)
    where = machine()
    if json_out:
        emit_json({"machine": where, "rows": as_dicts(rows)})
    if quiet:
        return
    table = Table(title=f"feature store on {where}: {entries:,} entries of 32 float32, cache-hit read pass")
    for col in ("layout", "files", "MB", "MB on disk", "write s", "read s", "x read"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r.layout, f"{r.files:,}", f"{r.bytes / 1e6:.1f}", f"{r.disk_bytes / 1e6:.1f}", f"{r.write_s:.2f}",
                      f"{r.read_s:.3f}", f"{r.read_speedup:.1f}")
    console.print(table)


def _ranks(ranks: list[int], geometries: list[str], counts: list[int], device: str, precision: str, repeats: int,
           n_ctx: int, json_out: bool, quiet: bool) -> None:
    rows = run_rank_bench(geometries, counts, ranks, device, precision, repeats, n_ctx)
    where = machine()
    if json_out:
        emit_json({"machine": where, "precision": precision, "n_ctx": n_ctx, "threads_per_rank": rank_threads(ranks),
                   "rows": as_dicts(rows)})
    if quiet:
        return
    table = Table(title=f"class-sharded step on {where} ({precision}, batch 32, {rank_threads(ranks)} thread(s) per "
                        f"rank); MB per rank: activations (CPU) / max allocated (CUDA); x: against {ranks[0]} rank(s)")
    for col in ("model", "classes", "ranks", "ms/step", "steps/s", "MB/rank", "x time", "x mem", "Δlogit"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r.geometry, str(r.classes), str(r.ranks), f"{r.step_ms:.1f}", f"{r.steps_per_s:.1f}",
                      f"{r.peak_mb:.0f}", f"{r.speedup:.2f}", f"{r.memory_ratio:.2f}", f"{r.max_logit_diff:.0e}")
    console.print(table)


def _video(geometries: list[str], device: str, frames: int, batch: int, repeats: int, json_out: bool,
           quiet: bool) -> None:
    steps, decode = run_video_bench(geometries, list(VIDEO_METHODS), device, frames, batch, repeats)
    merges = [row for g in geometries for row in bench_merging(g, device, frames, batch, repeats)]
    where = machine()
    if json_out:
        emit_json({"machine": where, "steps": as_dicts(steps), "merging": as_dicts(merges), "decode": as_dicts(decode)})
    if quiet:
        return
    table = Table(title=f"retrieval step on {where}: {batch} videos x {frames} frames, random weights; MB: activations "
                        "(CPU) / max allocated (CUDA); zero-shot: encoding only")
    for col in ("model", "method", "ms/step", "videos/s", "MB", "trained params", "% of CLIP"):
        table.add_column(col, justify="right")
    for r in steps:
        table.add_row(r.geometry, r.method, f"{r.step_ms:.0f}", f"{r.videos_per_s:.1f}", f"{r.peak_mb:.0f}",
                      f"{r.trainable:,}", f"{r.trainable_share:.2f}")
    console.print(table)
    table = Table(title=f"token merging in the image encoder: {frames} frames, tokens per video, GFLOPs of one video "
                        "(torch's FLOP counter), inference per video, one TempMe training step; x: against none")
    for col in ("model", "merge", "tokens", "GFLOPs", "ms/video", "ms/step", "MB", "x GFLOPs", "x infer", "x train",
                "x mem"):
        table.add_column(col, justify="right")
    for r in merges:
        table.add_row(r.geometry, r.merge, f"{r.tokens_in}→{r.tokens_out}", f"{r.gflops:.3g}", f"{r.infer_ms:.1f}",
                      f"{r.train_ms:.0f}", f"{r.peak_mb:.0f}", f"{r.flop_ratio:.3f}", f"{r.infer_speedup:.2f}",
                      f"{r.train_speedup:.2f}", f"{r.memory_ratio:.2f}")
    console.print(table)
    table = Table(title="frame cache: 224 x 224 mp4, decoded (cold) and read back (warm)")
    for col in ("cache", "videos", "frames/s"):
        table.add_column(col, justify="right")
    for r in decode:
        table.add_row(r.cache, str(r.videos), f"{r.frames_per_s:.0f}")
    console.print(table)
