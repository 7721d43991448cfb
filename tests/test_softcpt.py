"""SoftCPT: meta-network shapes and parameter counts, the multi-task loss, and learning."""

import pytest
import torch
import torch.nn.functional as F

from cpt.core.backbone import load_backbone
from cpt.kinds import KINDS
from cpt.methods import build_method
from cpt.methods.base import TaskData
from cpt.train import TrainConfig, train
from tests.conftest import COLOURS, colour_folder, fit_json

TASKS = [["dog", "cat", "owl"], ["red car", "blue bus"]]
TITLES = ["animal", "vehicle"]


@pytest.fixture(scope="module")
def backbone(tiny_clip):
    return load_backbone(str(tiny_clip), "cpu")


def trainable(method) -> dict[str, tuple[int, ...]]:
    return {k: tuple(p.shape) for k, p in method.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("variant", ["nata", "nats"])
def test_meta_network_shapes_and_parameter_counts(backbone, variant):
    method = build_method("softcpt", backbone, TASKS, {"variant": variant}, TITLES)
    width, dim, n_ctx, task_ctx = 64, 32, 16, 4  # tiny CLIP: text width 64, embedding 32
    expected = {
        "task_ctx": (task_ctx, width) if variant == "nata" else (len(TASKS), task_ctx, width),
        "meta": (dim, n_ctx * width),  # bias-free linear map from a task feature to a context
    }
    assert trainable(method) == expected
    n_params = sum(p.numel() for p in method.parameters() if p.requires_grad)
    assert n_params == (1 if variant == "nata" else 2) * task_ctx * width + dim * n_ctx * width
    assert method.task_features().shape == (2, dim)
    assert method.generated_context(1).shape == (n_ctx, width)
    assert method.class_weights(0).shape == (3, dim)
    assert abs(float(method.meta.detach().std()) - 0.02) < 0.002
    assert not any(p.requires_grad for p in backbone.model.parameters())


def test_class_feature_variant_generates_a_context_per_class(backbone):
    method = build_method("softcpt", backbone, TASKS, {"variant": "csta"}, TITLES)
    assert method.meta.shape == (2 * 32, 16 * 64)
    assert method.generated_context(0).shape == (3, 16, 64)
    assert method.class_weights(1, torch.tensor([1])).shape == (1, 32)
    torch.testing.assert_close(method.class_weights(1, torch.tensor([1]))[0], method.class_weights(1)[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["cata", "cats", "csta", "csts"])
def test_class_context_is_one_tensor_for_all_tasks_in_ca_variants(backbone, variant):
    """As the reference: `ca` shares one class context across every class of every task, so a
    step on either task moves the same tensor; `cs` keeps one context per class of each task."""
    method = build_method("softcpt", backbone, TASKS, {"variant": variant}, TITLES)
    params = dict(method.named_parameters())
    if variant.startswith("ca"):
        assert params["class_ctx.0"].shape == (4, 64) and "class_ctx.1" not in params
    else:
        assert params["class_ctx.0"].shape == (3, 4, 64) and params["class_ctx.1"].shape == (2, 4, 64)
    for task in range(2):
        method.zero_grad()
        method.class_weights(task).sum().backward()
        own = params["class_ctx.0" if variant.startswith("ca") else f"class_ctx.{task}"]
        assert own.grad is not None and own.grad.abs().sum() > 0


def test_titles_change_the_generated_context(backbone):
    a = build_method("softcpt", backbone, TASKS, {}, ["animal", "vehicle"]).generated_context(0)
    b = build_method("softcpt", backbone, TASKS, {}, ["flower", "vehicle"]).generated_context(0)
    assert not torch.allclose(a, b)


def test_multi_task_loss_equals_an_independent_computation(backbone):
    """One SGD step with lr 1 moves the parameters by exactly the gradient of the loss we compute here."""
    method = build_method("softcpt", backbone, TASKS, {"variant": "nata"}, TITLES)
    gen = torch.Generator().manual_seed(0)
    data = [
        TaskData("a", TASKS[0], KINDS["single-label"], torch.tensor([0, 1, 2, 0, 1]), torch.randn(5, 1, 32, generator=gen),
                 torch.empty(5, 32), torch.empty(0, 32), torch.empty(0, dtype=torch.long)),
        TaskData("b", TASKS[1], KINDS["single-label"], torch.tensor([1, 0, 1]), torch.randn(3, 1, 32, generator=gen),
                 torch.empty(3, 32), torch.empty(0, 32), torch.empty(0, dtype=torch.long)),
    ]
    before = {k: p.detach().clone() for k, p in method.named_parameters()}
    # independent: every image's cross-entropy over its own task's classes, averaged over all 8 images
    scale = backbone.model.logit_scale.exp()
    total = 0
    for t, d in enumerate(data):
        text = F.normalize(method.class_weights(t), dim=-1)
        logits = scale * F.normalize(d.train_views[:, 0], dim=-1) @ text.T
        total = total + sum(-torch.log_softmax(logits[i], 0)[d.targets[i]] for i in range(len(logits)))
    (total / 8).backward()
    total = total.detach()
    grads = {k: p.grad.clone() for k, p in method.named_parameters()}
    method.zero_grad()
    cfg = TrainConfig(epochs=1, batch_size=8, lr=1.0, momentum=0.0, weight_decay=0.0, warmup_epochs=0)
    history = train(method, data, cfg)
    assert history[0]["loss"] == pytest.approx((total / 8).item(), rel=1e-5)
    for k, p in method.named_parameters():
        torch.testing.assert_close(before[k] - p.detach(), grads[k], rtol=1e-3, atol=1e-5)


def test_softcpt_learns_two_tasks_beyond_zero_shot(tiny_clip, tmp_path):
    warm = colour_folder(tmp_path / "warm", per_class=10, classes={k: COLOURS[k] for k in ("red", "yellow_ochre")}, split=True)
    cold = colour_folder(tmp_path / "cold", per_class=10, classes={k: COLOURS[k] for k in ("green", "blue")}, split=True, seed=1)
    tasks = ["--tasks", f"warm={warm},cold={cold}", "--backbone", tiny_clip, "--shots", "8", "--seed", "1"]
    zs = fit_json("--method", "zeroshot", *tasks, "--out", tmp_path / "zs")
    soft = fit_json("--method", "softcpt", *tasks, "--epochs", "40", "--lr", "0.05", "--out", tmp_path / "soft")

    def mean(summary):
        return next(m["value"] for m in summary["metrics"] if m["task"] == "mean" and m["metric"] == "accuracy")

    assert mean(soft) >= mean(zs) + 20, (mean(zs), mean(soft))
