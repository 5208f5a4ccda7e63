"""Flash-VAED-style acceleration of an existing decoder, keeping its latent space: channel pruning
(``select``, ``plan``, ``tae``, ``diffusers_vae``), dominant-operator swaps (``ops``), three-phase distillation
(``distill``) and the Pareto report (``report``). ``fastdecoders prune`` is ``commands/prune_cmd.py``.

Importing this package is cheap (``switching`` imports ``prune.ops`` at ``import fastdecoders``); ``prune`` and
``PruneResult`` load ``prune.core`` on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PruneResult", "prune"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from fastdecoders.prune import core

        return getattr(core, name)
    raise AttributeError(name)
