"""Feature alignment: pull named intermediate activations of the student towards the teacher decoder's.

``loss.features`` pairs module names (``named_modules()``) of the student and of the teacher decoder. A forward hook
on each named module keeps its output while capturing is on; the student's activation is mapped to the teacher's
width by a 1x1 convolution (``ChannelProjection``) when the channel counts differ, and the term is the mean over
pairs of L1/MSE between the two. The projections are trained with the student (same optimizer and schedule) and
saved in checkpoints; they are not part of the final model.

Activations are channel-first, (N, C, ...): NCHW for image decoders and frame-wise video decoders, NCTHW for
clip decoders. Apart from C, the student's and the teacher's activation must have the same shape.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
from torch import nn

from fastdecoders.errors import FastDecodersError
from fastdecoders.latents import LatentSpace
from fastdecoders.train.config import TrainConfig
from fastdecoders.train.losses import distance
from fastdecoders.train.student import run_student
from fastdecoders.train.teachers import Teacher


class ChannelProjection(nn.Module):
    """A 1x1 convolution over dim 1 of a tensor of any rank: (N, C_in, ...) -> (N, C_out, ...)."""

    def __init__(self, n_in: int, n_out: int, generator: torch.Generator | None = None):
        super().__init__()
        bound = 1 / math.sqrt(n_in)  # nn.Conv2d's default init range, drawn from ``generator``
        self.weight = nn.Parameter(torch.empty(n_out, n_in).uniform_(-bound, bound, generator=generator))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return torch.einsum("oc,nc...->no...", self.weight.to(x.dtype), x) + self.bias.to(x.dtype).view(shape)


class Capture:
    """Forward hooks on named modules of ``model``; ``with capture.on():`` records their outputs in order of calls.

    Outputs of one module over several calls (a clip decoded item by item) are concatenated along dim 0.
    """

    def __init__(self, model: nn.Module, names: list[str], role: str):
        modules = dict(model.named_modules())
        self.names = names
        self.active = False
        self.outputs: dict[str, list[torch.Tensor]] = {}
        self.handles = []
        for i, name in enumerate(names):
            if name not in modules:
                known = [n for n in modules if n][:12]
                raise FastDecodersError(
                    f"loss.features[{i}].{role}: expected a module name of the {role} (e.g. {', '.join(known)} …), "
                    f"got {name!r}"
                )
            self.handles.append(modules[name].register_forward_hook(self._hook(name)))

    def _hook(self, name: str) -> Callable:
        def hook(module: nn.Module, args, output) -> None:
            if self.active:
                if not isinstance(output, torch.Tensor):
                    raise FastDecodersError(f"loss.features: expected module {name} to return a tensor, got "
                                            f"{type(output).__name__}")  # fmt: skip
                self.outputs.setdefault(name, []).append(output)

        return hook

    @contextlib.contextmanager
    def on(self) -> Iterator[None]:
        self.outputs, self.active = {}, True
        try:
            yield
        finally:
            self.active = False

    def take(self) -> list[torch.Tensor]:
        """The captured output of each named module (in ``names`` order), then forget them."""
        missing = [n for n in self.names if n not in self.outputs]
        if missing:
            raise FastDecodersError(f"loss.features: expected modules {', '.join(missing)} to run, got no output")
        out = [torch.cat(self.outputs[n]) if len(self.outputs[n]) > 1 else self.outputs[n][0] for n in self.names]
        self.outputs = {}
        return out

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class FeatureAlignment(nn.Module):
    """Hooks on student and teacher plus the trainable projections; ``probe`` sizes the projections.

    Usage per step::

        with align.student.on():
            out = student(latents)
        with torch.no_grad(), align.teacher.on():
            teacher_forward(latents)
        term = align.loss()
    """

    def __init__(self, pairs: list[dict[str, str]], student: nn.Module, teacher: nn.Module, kind: str = "mse"):
        super().__init__()
        self.pairs, self.kind = pairs, kind
        self.student = Capture(student, [p["student"] for p in pairs], "student")
        self.teacher = Capture(teacher, [p["teacher"] for p in pairs], "teacher")
        self.projections = nn.ModuleList()

    @torch.no_grad()
    def probe(self, run_student: Callable[[], object], run_teacher: Callable[[], object], seed: int) -> list[str]:
        """Run both once (e.g. on zero latents), check the shapes and build the projections; a line per pair."""
        with self.student.on():
            run_student()
        with self.teacher.on():
            run_teacher()
        generator = torch.Generator().manual_seed(seed)
        lines = []
        for i, (s, t) in enumerate(zip(self.student.take(), self.teacher.take(), strict=True)):
            pair = self.pairs[i]
            if s.ndim != t.ndim or s.shape[0] != t.shape[0] or s.shape[2:] != t.shape[2:]:
                raise FastDecodersError(
                    f"loss.features[{i}]: expected student {pair['student']} and teacher {pair['teacher']} outputs "
                    f"of the same shape except channels, got {tuple(s.shape)} and {tuple(t.shape)}"
                )
            n_in, n_out = s.shape[1], t.shape[1]
            self.projections.append(ChannelProjection(n_in, n_out, generator) if n_in != n_out else nn.Identity())
            lines.append(f"{pair['student']} ({n_in} ch) -> {pair['teacher']} ({n_out} ch)"
                         + (" via 1x1 projection" if n_in != n_out else ""))  # fmt: skip
        return lines

    def loss(self) -> torch.Tensor:
        """Mean over pairs of the L1/MSE between projected student and teacher activations (float32 scalar)."""
        terms = []
        for proj, s, t in zip(self.projections, self.student.take(), self.teacher.take(), strict=True):
            terms.append(distance(proj(s), t.detach(), self.kind))
        return torch.stack(terms).mean()


def teacher_forward(teacher: Teacher, latents: torch.Tensor) -> None:
    """Run the teacher decoder on a batch's latents (for its feature hooks): images (B, C, h, w) as one batch, clips
    (B, t, C, h, w) one by one ((t, C, h, w) each, the teacher's own clip layout). No gradients; output dropped."""
    for part in [latents] if latents.ndim == 4 else latents:
        teacher.decode_live(part)


def setup_alignment(cfg: TrainConfig, student: nn.Module, teacher: Teacher, space: LatentSpace, kind: str,
                    device: torch.device) -> tuple[FeatureAlignment, list[str]]:  # fmt: skip
    """Hooks on both decoders, checked and sized on one zero-latent crop: (FeatureAlignment, a line per pair)."""
    if teacher.decoder_module is None:
        raise FastDecodersError("loss.feature > 0: expected a teacher decoder, got none")
    align = FeatureAlignment(cfg.loss.features, student, teacher.decoder_module, cfg.loss.feature_kind).to(device)
    cells = cfg.data.crop // space.spatial_factor
    if kind == "image":
        z = torch.zeros(1, space.channels, cells, cells, device=device)
    else:
        z = torch.zeros(1, space.latent_frames(cfg.data.frames), space.channels, cells, cells, device=device)
    was_training = student.training
    student.eval()  # no BatchNorm statistics from the probe
    try:
        lines = align.probe(lambda: run_student(student, kind, z), lambda: teacher_forward(teacher, z),
                            cfg.train.seed)  # fmt: skip
    finally:
        student.train(was_training)
    return align.to(device), lines
