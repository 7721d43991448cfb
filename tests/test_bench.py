"""Approximate training options and `cpt bench` (its figures are not asserted: timing is not a test)."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from cpt.core.merging import parse_schedule, token_counts
from cpt.core.prompt import ClassPrompts, PromptConfig, init_context
from cpt.train import sample_classes
from tests.conftest import TINY_VIT, cli, fit_json, make_clip

NAMES = ["dog", "red sports car", "x", "sea lion of the north", "owl"]


@pytest.mark.parametrize("position,class_specific", [("end", False), ("middle", False), ("end", True)])
def test_a_class_subset_encodes_exactly_those_rows(position, class_specific):
    model = make_clip(TINY_VIT)
    cfg = PromptConfig(n_ctx=4, class_token_position=position, class_specific=class_specific)
    prompts = ClassPrompts(model, NAMES, cfg)
    ctx = init_context(prompts, cfg, torch.Generator().manual_seed(0))
    rows = torch.tensor([0, 2, 4])
    torch.testing.assert_close(prompts.encode(model, ctx, rows), prompts.encode(model, ctx)[rows], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("position", ["end", "front"])
def test_gradient_checkpointing_changes_nothing_but_memory(position):
    model = make_clip(TINY_VIT)
    results = []
    for flag in (False, True):
        cfg = PromptConfig(n_ctx=4, class_token_position=position, grad_checkpoint=flag)
        prompts = ClassPrompts(model, NAMES, cfg)
        ctx = init_context(prompts, cfg, torch.Generator().manual_seed(0)).requires_grad_()
        feats = prompts.encode(model, ctx)
        feats.square().sum().backward()
        results.append((feats.detach(), ctx.grad))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])


def test_sampled_classes_keep_the_batch_labels():
    labels = torch.tensor([3, 3, 7])
    classes = sample_classes(labels, 20, 0.25, torch.Generator().manual_seed(0))
    assert {3, 7} <= set(classes.tolist()) and len(classes) == 2 + math.ceil(0.25 * 18)
    assert torch.equal(classes, classes.sort().values)
    assert torch.searchsorted(classes, labels).tolist() == [classes.tolist().index(3)] * 2 + [classes.tolist().index(7)]


def test_fit_with_every_approximate_option(tiny_clip, colours, tmp_path):
    """Every approximate option in one fit: recorded, trains to finite losses; sampling every class
    (rate 1) with gradient checkpointing trains exactly as without them, sampling half lowers the loss."""
    common = ["--method", "coop", "--tasks", f"colours={colours}", "--backbone", tiny_clip, "--shots", "4",
              "--epochs", "3", "--n-ctx", "4", "--batch-size", "2", "--amp"]  # 2 images: at most 2 classes a batch
    fit_json(*common, "--out", tmp_path / "base")
    for rate in ("1.0", "0.5"):
        fit_json(*common, "--class-sample-rate", rate, "--grad-checkpoint", "--out", tmp_path / rate)
        config = json.loads((tmp_path / rate / "config.json").read_text())
        assert config["resolved"]["train"]["class_sample_rate"] == float(rate) and config["resolved"]["train"]["amp"]
        assert config["resolved"]["method"]["grad_checkpoint"]

    def history(name):
        return pd.read_csv(tmp_path / name / "history.csv").loss.to_numpy()

    def ctx(name):
        return torch.load(tmp_path / name / "checkpoint.pt", weights_only=False)["state"]["ctx.0"]

    assert all(np.isfinite(history(name)).all() and len(history(name)) == 3 for name in ("base", "1.0", "0.5"))
    torch.testing.assert_close(ctx("1.0"), ctx("base"), rtol=0, atol=1e-6)
    np.testing.assert_allclose(history("1.0"), history("base"), rtol=1e-6)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "1.0" / "metrics.csv"), pd.read_csv(tmp_path / "base" / "metrics.csv"))
    # 3 of the 4 classes in each softmax (2 in the batch + half the other 2): a lower cross-entropy in the
    # warm-up epoch, where the context has hardly moved
    assert history("0.5")[0] < history("base")[0] - 0.1, (history("0.5"), history("base"))


def test_bench_compares_both_paths_on_identical_logits():
    code, out, err = cli("bench", "--geometry", "tiny", "--classes", "10,60", "--repeats", "1", "--json", "--quiet")
    assert code == 0, err
    result = json.loads(out)
    assert result["machine"]
    rows = result["rows"]
    assert [(r["classes"], r["path"]) for r in rows] == [(10, "naive"), (10, "optimised"), (60, "naive"), (60, "optimised")]
    for naive, fast in (rows[0:2], rows[2:4]):
        assert naive["speedup"] == 1 and fast["speedup"] == pytest.approx(naive["step_ms"] / fast["step_ms"])
        assert fast["max_logit_diff"] < 1e-4 and fast["peak_mb"] > 0 and naive["peak_mb"] > 0
    code, _, err = cli("bench", "--geometry", "huge")
    assert code == 2 and "--geometry" in err


def test_scpnet_bench_reports_extraction_cache_size_and_steps():
    code, out, err = cli("bench", "--scpnet", "--geometry", "tiny", "--classes", "5,12", "--repeats", "1",
                         "--device", "cpu", "--json", "--quiet")
    assert code == 0, err
    figures = json.loads(out)
    views = {r["view"]: r for r in figures["extraction"]}
    assert set(views) == {"eval", "weak", "strong"} and views["weak"]["views_per_image"] == 8
    dim = TINY_VIT["embed_dim"]
    for r in views.values():  # the feature store: views x dim float32 values plus a 48-byte index record
        assert r["bytes_per_image"] == 48 + 4 * dim * r["views_per_image"]
        assert r["images_per_s"] > 0
    assert [r["classes"] for r in figures["steps"]] == [5, 12]
    assert all(r["step_ms"] > 0 and r["peak_mb"] > 0 for r in figures["steps"])


def test_store_bench_counts_files_bytes_and_reads_back_every_entry():
    code, out, err = cli("bench", "--store", "--entries", "300", "--json", "--quiet")
    assert code == 0, err
    old, new = json.loads(out)["rows"]
    assert (old["layout"], old["files"], old["bytes"]) == ("per-file", 300, 300 * (128 + 4 * 32))
    assert (new["layout"], new["files"]) == ("store", 3)  # meta.json, one .rows, one .index
    assert new["bytes"] > 300 * (48 + 4 * 32) and new["read_speedup"] == pytest.approx(old["read_s"] / new["read_s"])
    code, _, err = cli("bench", "--store", "--entries", "0")
    assert code == 2 and "--entries" in err


def test_bench_video_times_every_retrieval_method_merging_and_the_frame_cache():
    code, out, err = cli("bench", "--video", "--geometry", "tiny", "--frames", "6", "--batch", "2", "--repeats", "1",
                         "--json", "--quiet")
    assert code == 0, err
    figures = json.loads(out)
    rows = {r["method"]: r for r in figures["steps"]}
    assert list(rows) == ["zeroshot-video", "coop-video", "clip4clip", "dgl", "tempme"]
    # LoRA in 2 + 2 blocks; one join, its positions cover --tempme-max-frames 12
    assert rows["tempme"]["trainable"] == 4 * (8 * 64 + 192 * 8) + 12 * 64
    merging = {r["merge"]: r for r in figures["merging"]}
    assert list(merging) == ["none", "tome", "tempme"]
    for name, r in merging.items():  # tiny: 2 layers of 17 tokens a frame
        assert r["tokens_out"] == token_counts(parse_schedule(name, 2), 6, 17)[-1]
        assert r["token_ratio"] == pytest.approx(r["tokens_out"] / 102)
    assert merging["none"]["tokens_out"] == 102 and merging["tome"]["tokens_out"] == 78
    # FLOPs as counted, against the unmerged count: fewer tokens, fewer FLOPs
    assert merging["tempme"]["flop_ratio"] < merging["tome"]["flop_ratio"] < 1 == merging["none"]["flop_ratio"]
    assert rows["zeroshot-video"]["trainable"] == 0 and rows["coop-video"]["trainable"] == 4 * 64  # 4 context tokens
    clip_params = sum(p.numel() for p in make_clip(TINY_VIT).parameters())  # bench's tiny geometry is TINY_VIT's
    assert rows["clip4clip"]["trainable_share"] == pytest.approx(100 * rows["clip4clip"]["trainable"] / clip_params)
    assert rows["clip4clip"]["trainable"] == clip_params  # full fine-tuning: every weight
    assert [d["cache"] for d in figures["decode"]] == ["cold", "warm"]
    assert all(r["step_ms"] > 0 for r in figures["steps"])
