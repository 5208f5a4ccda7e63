"""Channel selection: which channels of an activation space to keep, and how to fold the dropped ones away.

Two families of criteria:

* **independence-aware** (Flash-VAED's idea, our formulation): keep the channels whose activations carry the most
  information *not already carried by the kept ones*. With ``G = E[x xᵀ]`` the (uncentred) second moment of the
  space's activations and ``M = Σ Wᵀ W`` the Gram of the weights that read it, the output error of dropping the set
  ``D`` and rebuilding it linearly from the kept set ``K`` is ``tr(M_DD · G_{D|K})`` (``G_{D|K}`` the conditional
  second moment, a Schur complement). ``select_independent`` adds greedily the channel that lowers this the most;
  ``select_pivoted`` is the cheaper pivoted-QR / pivoted-Cholesky rule (the largest residual energy, weighted by
  the consumer's column energy ``M_jj``).
* **magnitude** (the usual baseline): keep the channels whose producing filters have the largest L1 norm.

Dropped channels need not be lost: ``fold`` rebuilds them by least squares from the kept ones and adds that into
each consumer's weights (``W_K += W_D · A``). The moment is uncentred so that the fold needs no bias, which keeps
it exact for bias-free convolutions and for zero padding at borders.

Every selector respects ``blocks``: the channels are cut into ``blocks`` contiguous groups (GroupNorm groups) and
each group keeps ``keep / blocks`` of them, so that a pruned GroupNorm still normalises over one group's channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fastdecoders.errors import FastDecodersError

#: relative ridge of the least-squares fold (fraction of the kept channels' mean energy).
RIDGE = 1e-3


class GramStats:
    """Running uncentred second moment ``E[x xᵀ]`` over the channel axis of activations (float64)."""

    def __init__(self, channels: int):
        self.channels = channels
        self.sum = torch.zeros(channels, channels, dtype=torch.float64)
        self.count = 0

    @torch.no_grad()
    def update(self, x: torch.Tensor, channel_dim: int = 1, max_rows: int = 1 << 16) -> None:
        """Add activations ``x`` whose ``channel_dim`` has ``channels`` entries (rows beyond ``max_rows`` are
        subsampled with a fixed stride, so huge video activations stay cheap)."""
        if x.shape[channel_dim] != self.channels:
            raise FastDecodersError(f"activation has {x.shape[channel_dim]} channels, expected {self.channels}")
        rows = x.detach().movedim(channel_dim, -1).reshape(-1, self.channels)
        if rows.shape[0] > max_rows:
            rows = rows[:: -(-rows.shape[0] // max_rows)]
        rows = rows.to("cpu", torch.float64)
        self.sum += rows.T @ rows
        self.count += rows.shape[0]

    @property
    def gram(self) -> torch.Tensor:
        """(C, C) ``E[x xᵀ]``."""
        if self.count == 0:
            raise FastDecodersError("no calibration activations were recorded for this layer")
        return self.sum / self.count


def consumer_metric(weight: torch.Tensor) -> torch.Tensor:
    """(C_in, C_in) ``Σ_{out, taps} W[:, i] W[:, j]`` of a conv (out, in, *k) or linear (out, in) weight."""
    w = weight.detach().to("cpu", torch.float64).transpose(0, 1).reshape(weight.shape[1], -1)
    return w @ w.T


def _block_of(channels: int, blocks: int, keep: int) -> tuple[torch.Tensor, int]:
    if blocks < 1 or channels % blocks or keep % blocks:
        raise FastDecodersError(f"cannot keep {keep} of {channels} channels in {blocks} equal groups")
    return torch.arange(channels) // (channels // blocks), keep // blocks


def _check_keep(channels: int, keep: int) -> None:
    if not 1 <= keep <= channels:
        raise FastDecodersError(f"keep must be within 1..{channels} channels, got {keep}")


def select_independent(terms: Sequence[tuple[torch.Tensor, torch.Tensor]], keep: int, blocks: int = 1) -> torch.Tensor:
    """Greedy output-aware selection: sorted indices of ``keep`` channels.

    Args:
        terms: one ``(G, M)`` pair per consumer of the space: ``G`` the (C, C) second moment of the consumer's input,
            ``M`` its (C, C) ``consumer_metric`` (the identity weighs all channels alike).
        keep: channels to keep; blocks: equal-quota contiguous groups (see the module docstring).

    Each step adds the channel ``j`` maximising ``Σ_c (R_c M_c R_c)_jj / (R_c)_jj`` (the drop in output error), then
    conditions every residual moment ``R_c`` on it. ``S_c = R_c M_c`` is updated alongside, so a step is O(C²).
    """
    channels = terms[0][0].shape[0]
    _check_keep(channels, keep)
    block, quota = _block_of(channels, blocks, keep)
    residuals = [g.to(torch.float64).clone() for g, _ in terms]
    products = [r @ m.to(torch.float64) for r, (_, m) in zip(residuals, terms, strict=True)]
    floors = [1e-12 * max(float(r.diagonal().max()), 1e-30) for r in residuals]
    taken = torch.zeros(channels, dtype=torch.bool)
    used = torch.zeros(blocks, dtype=torch.long)
    for _ in range(keep):
        score = torch.zeros(channels, dtype=torch.float64)
        for r, s, floor in zip(residuals, products, floors, strict=True):
            d = r.diagonal()
            score += torch.where(d > floor, (s * r).sum(1) / d.clamp_min(floor), 0.0)
        score[taken | (used[block] >= quota)] = -torch.inf
        j = int(score.argmax())
        taken[j] = True
        used[block[j]] += 1
        for r, s, floor in zip(residuals, products, floors, strict=True):
            d = float(r[j, j])
            if d > floor:
                col, row = r[:, j].clone(), s[j, :].clone()  # S = R·M and R symmetric, so M·r = S[j]
                r -= torch.outer(col, col) / d
                s -= torch.outer(col, row) / d
    return taken.nonzero().flatten()


def select_pivoted(terms: Sequence[tuple[torch.Tensor, torch.Tensor]], keep: int, blocks: int = 1) -> torch.Tensor:
    """Pivoted-Cholesky (pivoted QR of the activations) selection: each step keeps the channel with the most
    residual energy ``Σ_c M_c[j, j] · R_c[j, j]`` not explained by the channels kept so far."""
    channels = terms[0][0].shape[0]
    _check_keep(channels, keep)
    block, quota = _block_of(channels, blocks, keep)
    residuals = [g.to(torch.float64).clone() for g, _ in terms]
    weights = [m.to(torch.float64).diagonal().clone() for _, m in terms]
    taken = torch.zeros(channels, dtype=torch.bool)
    used = torch.zeros(blocks, dtype=torch.long)
    for _ in range(keep):
        score = sum(w * r.diagonal() for r, w in zip(residuals, weights, strict=True))
        score[taken | (used[block] >= quota)] = -torch.inf
        j = int(score.argmax())
        taken[j] = True
        used[block[j]] += 1
        for r in residuals:
            d = float(r[j, j])
            if d > 1e-12 * max(float(r.diagonal().max()), 1e-30):
                col = r[:, j].clone()
                r -= torch.outer(col, col) / d
    return taken.nonzero().flatten()


def select_magnitude(scores: torch.Tensor, keep: int, blocks: int = 1) -> torch.Tensor:
    """Top-``keep`` channels by ``scores`` (e.g. L1 norms of their producing filters), ``keep / blocks`` per group."""
    channels = scores.shape[0]
    _check_keep(channels, keep)
    block, quota = _block_of(channels, blocks, keep)
    chosen = [
        torch.nonzero(block == b).flatten()[scores[block == b].argsort(descending=True)[:quota]] for b in range(blocks)
    ]
    return torch.cat(chosen).sort().values


def filter_l1(weight: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Per-output-channel L1 norm of a conv/linear weight (out, ...) -> (out,)."""
    w = weight.detach().to("cpu", torch.float64)
    norms = w.abs().reshape(w.shape[0], -1).sum(1)
    return norms if rows is None else norms[rows]


def regression(gram: torch.Tensor, kept: torch.Tensor, ridge: float = RIDGE) -> tuple[torch.Tensor, torch.Tensor]:
    """(dropped indices (D,), A (D, K)) with ``x_D ≈ A x_K`` in least squares under the second moment ``gram``."""
    channels = gram.shape[0]
    mask = torch.ones(channels, dtype=torch.bool)
    mask[kept] = False
    dropped = mask.nonzero().flatten()
    g = gram.to(torch.float64)
    gkk = g[kept][:, kept]
    lam = ridge * float(gkk.diagonal().mean().clamp_min(1e-30))
    a = torch.linalg.solve(gkk + lam * torch.eye(len(kept), dtype=torch.float64), g[kept][:, dropped]).T
    return dropped, a


def fold(weight: torch.Tensor, kept: torch.Tensor, gram: torch.Tensor | None, dim: int = 1) -> torch.Tensor:
    """Slice ``weight`` to the ``kept`` input channels along ``dim``, adding the least-squares rebuild of the
    dropped ones (``W_K + W_D · A``) when ``gram`` (the input's second moment) is given."""
    kept = kept.to(weight.device)
    sliced = weight.index_select(dim, kept)
    if gram is None or len(kept) == weight.shape[dim]:
        return sliced
    dropped, a = regression(gram, kept.cpu())
    if len(dropped) == 0:
        return sliced
    w_d = weight.index_select(dim, dropped.to(weight.device)).to(torch.float64).movedim(dim, -1)
    extra = (w_d @ a.to(weight.device)).movedim(-1, dim)
    return (sliced.to(torch.float64) + extra).to(weight.dtype)
