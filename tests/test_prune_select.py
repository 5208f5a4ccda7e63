"""Channel selection and the least-squares fold, on activations whose redundancy is known by construction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastdecoders.errors import FastDecodersError
from fastdecoders.prune.select import (
    GramStats,
    consumer_metric,
    fold,
    select_independent,
    select_magnitude,
    select_pivoted,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def redundant_activations(n: int = 4096) -> torch.Tensor:
    """(n, 8) activations: channels 0-3 independent and quiet, 4-7 loud copies mixing pairs of them."""
    # numpy's PCG64 draws the same numbers on every CPU; torch.randn's vectorised path differs between CPU kinds,
    # and some draws make the pivoted choice lean on the ridge more than this test's 1% tolerance allows
    base = torch.from_numpy(np.random.default_rng(0).standard_normal((n, 4)))
    mix = torch.tensor([[1.0, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1], [1, 0, 0, 1]], dtype=torch.float64) * 3
    return torch.cat([base, base @ mix.T], dim=1)


def gram_of(x: torch.Tensor) -> torch.Tensor:
    stats = GramStats(x.shape[1])
    stats.update(x, channel_dim=1)
    return stats.gram


@pytest.mark.parametrize("select", [select_independent, select_pivoted])
def test_independent_channels_span_the_dropped_ones(select):
    x = redundant_activations()
    g = gram_of(x)
    kept = select([(g, torch.eye(8, dtype=torch.float64))], keep=4)
    weight = torch.randn(5, 8, dtype=torch.float64)  # a linear consumer of the 8 channels
    folded = fold(weight, kept, g)
    # the kept channels span all 8, so the folded consumer reproduces the original output
    assert torch.allclose(x[:, kept] @ folded.T, x @ weight.T, atol=1e-2 * float((x @ weight.T).abs().max()))


def test_magnitude_keeps_loud_duplicates_and_loses_information():
    # channels 0-3: loud near-copies of one signal; 4-6: quiet independent signals
    n = 4096
    loud = torch.randn(n, 1, dtype=torch.float64) * 3 + 0.01 * torch.randn(n, 4, dtype=torch.float64)
    x = torch.cat([loud, torch.randn(n, 3, dtype=torch.float64)], dim=1)
    g = gram_of(x)
    weight = torch.randn(5, 7, dtype=torch.float64)
    ref = x @ weight.T

    def err(kept):
        return float(((x[:, kept] @ fold(weight, kept, g).T - ref) ** 2).mean())

    kept_mag = select_magnitude(g.diagonal(), keep=4)
    kept_ind = select_independent([(g, consumer_metric(weight))], keep=4)
    assert kept_mag.tolist() == [0, 1, 2, 3]
    assert len(set(kept_ind.tolist()) & {0, 1, 2, 3}) == 1  # one copy of the loud signal is enough
    assert err(kept_ind) < 0.01 * err(kept_mag)


def test_consumer_metric_weighs_what_the_next_layer_reads():
    # channel 0 and 1 are equally informative, but the consumer ignores channel 1: keep channel 0
    x = torch.randn(2048, 2, dtype=torch.float64)
    weight = torch.tensor([[1.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    kept = select_independent([(gram_of(x), consumer_metric(weight))], keep=1)
    assert kept.tolist() == [0]


def test_group_quota():
    g = gram_of(torch.randn(4096, 8, dtype=torch.float64) * torch.tensor([9.0, 8, 7, 6, 1, 1, 1, 1]))
    for select in (select_independent, select_pivoted):
        kept = select([(g, torch.eye(8, dtype=torch.float64))], keep=4, blocks=2)
        assert sorted(kept.tolist())[:2] != [0, 1] or len([k for k in kept.tolist() if k >= 4]) == 2
        assert len([k for k in kept.tolist() if k < 4]) == 2
    kept = select_magnitude(torch.tensor([9.0, 8, 7, 6, 1, 2, 3, 4]), keep=4, blocks=2)
    assert kept.tolist() == [0, 1, 6, 7]


def test_fold_on_conv_weights_matches_conv_output():
    x = redundant_activations(512).float().T.reshape(1, 8, 16, 32)  # (1, C, H, W) images of the same channels
    g = gram_of(x.double())
    conv = torch.nn.Conv2d(8, 3, 3, padding=1, bias=False)
    kept = select_independent([(g, consumer_metric(conv.weight))], keep=4)
    small = torch.nn.Conv2d(4, 3, 3, padding=1, bias=False)
    small.weight.data = fold(conv.weight.data, kept, g)
    with torch.no_grad():
        out, ref = small(x[:, kept]), conv(x)
    assert float((out - ref).pow(2).mean() / ref.pow(2).mean()) < 1e-4


def test_bad_keep_is_one_clear_error():
    g = torch.eye(4, dtype=torch.float64)
    with pytest.raises(FastDecodersError, match="keep"):
        select_independent([(g, g)], keep=0)
    with pytest.raises(FastDecodersError, match="equal groups"):
        select_magnitude(torch.ones(6), keep=3, blocks=2)
