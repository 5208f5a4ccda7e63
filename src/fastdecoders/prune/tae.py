"""Pruning TAE decoders (TAESD, TAESDXL, TAEF1, TAEF2, TAE-192): a TAE with narrower per-stage ``widths``.

Coupling in the TAE layout (``fastdecoders.models.tae``): a TAEBlock adds its input back unchanged, so a stage's
residual stream — the stage-transition conv's output, every block's input and output, the pool branch's output — is
one channel set (space ``stream{s}``). Each block's two hidden activations are free (``{block}.h1``, ``{block}.h2``).
TAEF2's pool branch has a 4·w hidden width under a 4-group GroupNorm: the student keeps 4·w' of it, w' per group,
so each pruned group still normalises a subset of one teacher group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from torch import nn

from fastdecoders.models.layers import TAEBlock
from fastdecoders.models.tae import TAEConfig, TAEDecoder
from fastdecoders.prune.plan import Plan, Space


def tae_stages(config: TAEConfig) -> int:
    return len(config.widths)


def tae_plan(teacher: TAEDecoder, widths: Sequence[int]) -> Plan:
    """The spaces and per-parameter axis specs of ``teacher`` pruned to per-stage ``widths``."""
    cfg = teacher.config
    plan = Plan({}, {})
    children = list(teacher.named_children())
    last_conv = max(i for i, (_, m) in enumerate(children) if isinstance(m, nn.Conv2d))
    stage = 0
    for position, (name, module) in enumerate(children):
        stream = f"stream{stage}"
        if isinstance(module, nn.Conv2d) and position == last_conv:
            plan.params[f"{name}.weight"] = (None, stream)
        elif isinstance(module, nn.Conv2d) and name == "1":
            plan.add(Space(stream, cfg.widths[0], widths[0]))
            plan.params[f"{name}.weight"], plan.params[f"{name}.bias"] = (stream, None), (stream,)
        elif isinstance(module, nn.Conv2d):  # stage transition (after the x2 upsample)
            stage += 1
            plan.add(Space(f"stream{stage}", cfg.widths[stage], widths[stage]))
            plan.params[f"{name}.weight"] = (f"stream{stage}", stream)
        elif isinstance(module, TAEBlock):
            _block(plan, name, module, stream, cfg, widths[stage])
    return plan


def _block(plan: Plan, name: str, block: TAEBlock, stream: str, cfg: TAEConfig, width: int) -> None:
    size = plan.spaces[stream].size
    h1 = plan.add(Space(f"{name}.h1", size, width))
    h2 = plan.add(Space(f"{name}.h2", size, width))
    p = f"{name}.conv"
    plan.params.update({
        f"{p}.0.weight": (h1, stream), f"{p}.0.bias": (h1,),
        f"{p}.2.weight": (h2, h1), f"{p}.2.bias": (h2,),
        f"{p}.4.weight": (stream, h2), f"{p}.4.bias": (stream,),
    })  # fmt: skip
    if block.pool is not None:
        hidden = plan.add(Space(f"{name}.pool", 4 * size, 4 * width, blocks=cfg.pool_groups))
        q = f"{name}.pool"
        plan.params.update({
            f"{q}.0.weight": (hidden, stream), f"{q}.1.weight": (hidden,), f"{q}.1.bias": (hidden,),
            f"{q}.3.weight": (stream, hidden),
        })  # fmt: skip


def tae_student(teacher: TAEDecoder, widths: Sequence[int]) -> TAEDecoder:
    """An (uninitialised-weights) TAE decoder of the teacher's layout with per-stage ``widths``."""
    student = TAEDecoder(replace(teacher.config, widths=tuple(int(w) for w in widths)))
    student.latent_space_name = getattr(teacher, "latent_space_name", None)
    return student
