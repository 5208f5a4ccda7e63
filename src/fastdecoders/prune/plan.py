"""The pruning engine shared by every family: channel spaces, calibration, selection, sliced and folded weights.

A **space** is one set of channels that must be pruned alike: a residual stream with everything added to it and
every norm over it, or one block's hidden activations. A family module (``tae``, ``diffusers_vae``) describes its
decoder as a ``Plan``: the spaces, and for every parameter which space each tensor axis indexes. The engine then

1. ``calibrate``: runs the teacher on calibration latents, recording for every layer that *reads* a space (an input
   axis of a conv/linear weight) the second moment of its input;
2. ``choose``: picks each space's kept channels (independence-aware, pivoted QR, or filter magnitude);
3. ``student_state``: slices every tensor and folds the dropped input channels into each reading layer (``fold``).

An axis spec is ``None`` (not pruned), a space name, ``("cat", a, b, ...)`` (spaces stacked block-major, e.g. a fused
QKV projection or Wan's two-frame time conv) or ``("expand", a, p)`` (each channel of ``a`` owns ``p`` consecutive
rows, e.g. a depth-to-space upsampler).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fastdecoders.errors import FastDecodersError
from fastdecoders.progress import progress
from fastdecoders.prune.select import (
    GramStats,
    consumer_metric,
    filter_l1,
    fold,
    select_independent,
    select_magnitude,
    select_pivoted,
)

METHODS = ("independent", "pivoted", "magnitude")

AxisSpec = Any  # None | str | tuple


@dataclass
class Space:
    """One prunable channel set: ``size`` teacher channels of which ``keep`` stay, ``keep / blocks`` per group."""

    name: str
    size: int
    keep: int
    blocks: int = 1
    #: "plain", or "qk": the shared query/key axis of attention, rated by the product of query and key energies.
    kind: str = "plain"

    def __post_init__(self):
        if not 1 <= self.keep <= self.size or self.size % self.blocks or self.keep % self.blocks:
            raise FastDecodersError(
                f"space {self.name}: cannot keep {self.keep} of {self.size} channels in {self.blocks} equal groups"
            )


@dataclass
class Projection:
    """A student-only 1x1 weight where the teacher adds a stream to itself unchanged (identity skip) but the student's
    two sides have different channel sets: rows ``out`` of the identity, its dropped columns rebuilt from ``inp``."""

    out: str
    inp: str
    #: module whose input is the skipped tensor (its second moment drives the rebuild).
    observer: str
    #: trailing kernel dims of the weight, e.g. (1, 1) for Conv2d, (1, 1, 1) for Conv3d.
    kernel: tuple[int, ...] = (1, 1)
    bias_key: str | None = None


@dataclass
class Plan:
    spaces: dict[str, Space]
    #: teacher state-dict key -> axis spec per leading dim (the rest stay whole); unlisted keys are copied.
    params: dict[str, tuple[AxisSpec, ...]]
    #: student-only weight key -> how to initialise it.
    projections: dict[str, Projection] = field(default_factory=dict)
    #: teacher keys the student does not have (e.g. a dropped module).
    dropped: tuple[str, ...] = ()
    #: family hook run on the finished student state: (state, selections) -> None (e.g. attention scale).
    finalize: Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], None] | None = None

    def add(self, space: Space) -> str:
        if space.name in self.spaces:
            raise ValueError(f"space {space.name} defined twice")
        self.spaces[space.name] = space
        return space.name

    # -- derived structure ------------------------------------------------------------------------------------------

    def consumers(self) -> dict[str, str]:
        """Module name -> space it reads (its weight's input axis), for every 2-d+ weight with a plain input spec."""
        out = {}
        for key, spec in self.params.items():
            if key.endswith(".weight") and len(spec) > 1 and isinstance(spec[1], str):
                out[key[: -len(".weight")]] = spec[1]
        return out

    def observers(self) -> dict[str, str]:
        return {p.observer: p.inp for p in self.projections.values()}

    def rows(self, space: str) -> list[tuple[str, torch.Tensor]]:
        """(weight key, row index (size,) or (size, p)) for every weight whose output axis holds ``space``."""
        found = []
        for key, spec in self.params.items():
            if not key.endswith(".weight") or not spec or spec[0] is None:
                continue
            for rows in _rows_of(spec[0], space, self.spaces):
                found.append((key, rows))
        return found


def _segments(spec: AxisSpec, spaces: dict[str, Space]) -> list[tuple[str, int]]:
    """("cat", a, b) -> [(a, 0), (b, size_a)]; a plain name -> [(name, 0)]."""
    if isinstance(spec, str):
        return [(spec, 0)]
    if spec[0] == "cat":
        offset, out = 0, []
        for name in spec[1:]:
            out.append((name, offset))
            offset += spaces[name].size
        return out
    return []


def _rows_of(spec: AxisSpec, space: str, spaces: dict[str, Space]) -> list[torch.Tensor]:
    if isinstance(spec, tuple) and spec[0] == "expand":
        if spec[1] != space:
            return []
        p = spec[2]
        return [torch.arange(spaces[space].size)[:, None] * p + torch.arange(p)]
    size = spaces[space].size
    return [torch.arange(size) + offset for name, offset in _segments(spec, spaces) if name == space]


def axis_index(spec: AxisSpec, selection: dict[str, torch.Tensor], spaces: dict[str, Space]) -> torch.Tensor | None:
    if spec is None:
        return None
    if isinstance(spec, tuple) and spec[0] == "expand":
        _, name, p = spec
        return (selection[name][:, None] * p + torch.arange(p)).flatten()
    return torch.cat([selection[name] + offset for name, offset in _segments(spec, spaces)])


# -- calibration -----------------------------------------------------------------------------------------------------


@dataclass
class Stats:
    """What calibration recorded: input second moments per reading module, output energies of q/k producers."""

    gram: dict[str, GramStats] = field(default_factory=dict)
    energy: dict[str, torch.Tensor] = field(default_factory=dict)
    energy_count: dict[str, int] = field(default_factory=dict)


def _channel_dim(module: nn.Module) -> int:
    return -1 if isinstance(module, nn.Linear) else 1


@torch.no_grad()
def calibrate(model: nn.Module, plan: Plan, run: Callable[[], Any], max_rows: int = 1 << 15) -> Stats:
    """Run ``run()`` (which feeds calibration latents through ``model``) with hooks that record the statistics."""
    stats = Stats()
    handles = []
    watch = {**plan.consumers(), **plan.observers()}
    for name, space in watch.items():
        module = model.get_submodule(name)
        stats.gram[name] = GramStats(plan.spaces[space].size)

        def pre_hook(mod, args, name=name):
            stats.gram[name].update(args[0], _channel_dim(mod), max_rows)

        handles.append(module.register_forward_pre_hook(pre_hook))
    for space in (s for s in plan.spaces.values() if s.kind == "qk"):
        for key, _ in plan.rows(space.name):
            name = key[: -len(".weight")]
            if name in stats.energy:
                continue
            stats.energy[name], stats.energy_count[name] = torch.zeros(0, dtype=torch.float64), 0

            def hook(mod, args, out, name=name):
                y = out.detach().movedim(_channel_dim(mod), -1)
                e = y.reshape(-1, y.shape[-1]).to("cpu", torch.float64).pow(2).sum(0)
                stats.energy[name] = e if stats.energy[name].numel() == 0 else stats.energy[name] + e
                stats.energy_count[name] += y.numel() // y.shape[-1]

            handles.append(model.get_submodule(name).register_forward_hook(hook))
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    missing = [n for n, g in stats.gram.items() if g.count == 0]
    if missing:
        raise FastDecodersError(f"calibration never reached {missing[:3]}: the latents did not run the whole decoder")
    return stats


# -- selection -------------------------------------------------------------------------------------------------------


def choose(
    plan: Plan, state: dict[str, torch.Tensor], method: str, stats: Stats | None = None
) -> dict[str, torch.Tensor]:
    """Kept channel indices (sorted, int64) per space."""
    if method not in METHODS:
        raise FastDecodersError(f"unknown selection method {method!r}; known: {', '.join(METHODS)}")
    if method != "magnitude" and stats is None:
        raise FastDecodersError(f"method {method!r} needs calibration statistics")
    consumers = plan.consumers()
    selection = {}
    for name, space in progress(plan.spaces.items(), total=len(plan.spaces), desc=f"select ({method})", unit="space"):
        if space.keep == space.size:
            selection[name] = torch.arange(space.size)
            continue
        readers = [m for m, s in consumers.items() if s == name]
        if space.kind == "qk":
            selection[name] = select_magnitude(_qk_score(plan, name, state, stats, method), space.keep, space.blocks)
        elif method == "magnitude" or not readers:
            selection[name] = select_magnitude(_magnitude(plan, name, state), space.keep, space.blocks)
        else:
            terms = [(stats.gram[m].gram, consumer_metric(state[f"{m}.weight"])) for m in readers]
            pick = select_independent if method == "independent" else select_pivoted
            selection[name] = pick(terms, space.keep, space.blocks)
    return selection


def _magnitude(plan: Plan, space: str, state: dict[str, torch.Tensor]) -> torch.Tensor:
    score = torch.zeros(plan.spaces[space].size, dtype=torch.float64)
    for key, rows in plan.rows(space):
        norms = filter_l1(state[key])
        score += norms[rows].reshape(rows.shape[0], -1).sum(1)
    return score


def _qk_score(plan: Plan, space: str, state, stats: Stats | None, method: str) -> torch.Tensor:
    score = torch.ones(plan.spaces[space].size, dtype=torch.float64)
    for key, rows in plan.rows(space):
        name = key[: -len(".weight")]
        if method == "magnitude" or stats is None or name not in stats.energy:
            score *= filter_l1(state[key])[rows]
        else:
            score *= stats.energy[name][rows] / max(stats.energy_count[name], 1)
    return score


# -- the student's weights -------------------------------------------------------------------------------------------


def student_state(
    plan: Plan,
    state: dict[str, torch.Tensor],
    selection: dict[str, torch.Tensor],
    stats: Stats | None = None,
) -> dict[str, torch.Tensor]:
    """Slice the teacher ``state`` to the selection; with ``stats``, fold dropped input channels into every reader."""
    out = {}
    for key, tensor in state.items():
        if key in plan.dropped:
            continue
        spec = plan.params.get(key)
        if spec is None:
            out[key] = tensor.clone()
            continue
        t = tensor
        module = key[: -len(".weight")] if key.endswith(".weight") else None
        for dim in sorted(range(len(spec)), key=lambda d: d != 1):  # the input axis first, while rows are whole
            index = axis_index(spec[dim], selection, plan.spaces)
            if index is None:
                continue
            gram = None
            if dim == 1 and stats is not None and isinstance(spec[1], str) and module in stats.gram:
                gram = stats.gram[module].gram
            t = fold(t, index, gram, dim) if dim == 1 else t.index_select(dim, index.to(t.device))
        out[key] = t.contiguous()
    for key, proj in plan.projections.items():
        out[key] = _projection(plan, proj, selection, stats).to(next(iter(state.values())).dtype)
        if proj.bias_key:
            out[proj.bias_key] = torch.zeros(plan.spaces[proj.out].keep, dtype=out[key].dtype)
    if plan.finalize is not None:
        plan.finalize(out, selection)
    return out


def _projection(plan: Plan, proj: Projection, selection, stats: Stats | None) -> torch.Tensor:
    size = plan.spaces[proj.inp].size
    if plan.spaces[proj.out].size != size:
        raise FastDecodersError(f"projection {proj.out} <- {proj.inp}: the two spaces must share teacher channels")
    eye = torch.eye(size, dtype=torch.float64)[selection[proj.out]]
    gram = stats.gram[proj.observer].gram if stats is not None and proj.observer in stats.gram else None
    w = fold(eye, selection[proj.inp], gram, 1)
    return w.reshape(*w.shape, *proj.kernel)


def attention_rescale(key: str, rows: slice | None, teacher_dim: int, student_dim: int) -> Callable:
    """A ``finalize`` step: scale query rows by √(d'/d) so softmax logits over fewer dimensions keep their scale
    (the attention divides by √d' instead of √d)."""
    factor = math.sqrt(student_dim / teacher_dim)

    def apply(state: dict[str, torch.Tensor], selection) -> None:
        for suffix in ("weight", "bias"):
            full = f"{key}.{suffix}"
            if full in state:
                t = state[full].clone()
                t[rows if rows is not None else slice(None)] *= factor
                state[full] = t

    return apply


def chain(*steps: Callable | None) -> Callable | None:
    steps = tuple(s for s in steps if s is not None)
    if not steps:
        return None

    def apply(state, selection) -> None:
        for step in steps:
            step(state, selection)

    return apply


# -- sequential correction -------------------------------------------------------------------------------------------


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the layer being corrected has been seen."""


def forward_order(model: nn.Module, names: list[str], feed_one: Callable[[nn.Module], Any]) -> list[str]:
    """``names`` in the order a forward pass first reaches them."""
    seen: list[str] = []
    handles = []
    for name in names:

        def hook(mod, args, name=name):
            if name not in seen:
                seen.append(name)

        handles.append(model.get_submodule(name).register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            feed_one(model)
    finally:
        for h in handles:
            h.remove()
    return seen + [n for n in names if n not in seen]


@torch.no_grad()
def refine(
    teacher: nn.Module,
    student: nn.Module,
    plan: Plan,
    selection: dict[str, torch.Tensor],
    batches: list[Any],
    call: Callable[[nn.Module, Any], Any],
    ridge: float = 1e-3,
    max_rows: int = 1 << 15,
) -> None:
    """Sequential least-squares correction of every layer that reads a pruned space, in forward order.

    For each reader, on the same calibration batches, regress the teacher's full input ``x_t`` (C channels) on the
    student's actual kept input ``x_s`` (K channels, already carrying every upstream pruning error):
    ``x_t ≈ B x_s`` with ``B = E[x_t x_sᵀ] E[x_s x_sᵀ]⁻¹``, and set the student's weight to ``W_t · B`` (its rows
    sliced as the plan says). Unlike ``fold``, which rebuilds dropped channels inside the teacher, this also undoes
    the drift of the kept channels, so errors do not compound layer after layer. Image decoders stop each forward
    at the layer being fitted; video decoders (which call a layer once per chunk) run whole.
    """
    readers = plan.consumers()
    order = forward_order(teacher, list(readers), lambda m: call(m, batches[0]))
    stop_early = getattr(teacher, "latent_ndim", 4) == 4
    for name in order:
        spec = plan.params[f"{name}.weight"]
        t_mod, s_mod = teacher.get_submodule(name), student.get_submodule(name)
        dim = _channel_dim(t_mod)
        captured: dict[str, list[torch.Tensor]] = {"t": [], "s": []}

        def grab(which: str, captured=captured, dim=dim):
            def hook(mod, args):
                captured[which].append(args[0].detach().movedim(dim, -1).flatten(0, -2))
                if stop_early:
                    raise _Stop

            return hook

        cross = gram = None
        h_t, h_s = t_mod.register_forward_pre_hook(grab("t")), s_mod.register_forward_pre_hook(grab("s"))
        try:
            for batch in batches:
                for model in (teacher, student):
                    try:
                        call(model, batch)
                    except _Stop:
                        pass
                if not captured["t"]:
                    continue
                x_t, x_s = torch.cat(captured["t"]), torch.cat(captured["s"])
                captured["t"].clear(), captured["s"].clear()
                if x_t.shape[0] > max_rows:
                    step = -(-x_t.shape[0] // max_rows)
                    x_t, x_s = x_t[::step], x_s[::step]
                x_t, x_s = x_t.to("cpu", torch.float64), x_s.to("cpu", torch.float64)
                c, g = x_t.T @ x_s, x_s.T @ x_s
                cross, gram = (c, g) if cross is None else (cross + c, gram + g)
        finally:
            h_t.remove(), h_s.remove()
        if gram is None:
            continue
        lam = ridge * float(gram.diagonal().mean().clamp_min(1e-30))
        b = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=torch.float64), cross.T).T  # (C, K)
        w = t_mod.weight.detach().to("cpu", torch.float64)
        for d in range(len(spec)):
            index = axis_index(spec[d], selection, plan.spaces) if d != 1 else None
            if index is not None:
                w = w.index_select(d, index)
        w = (w.movedim(1, -1) @ b).movedim(-1, 1)
        s_mod.weight.copy_(w.to(s_mod.weight.device, s_mod.weight.dtype))
