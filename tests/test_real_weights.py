"""Regression on real weights: the 24 Kodak photos, encoded by each real TAE encoder and decoded by our decoders.

Photos are area-downsampled ×2 (384×256) to keep the suite fast on 2 CPU cores; the thresholds are the means
measured with ``python benchmarks/kodak_roundtrip.py`` (README, "Quality") minus 0.3 dB PSNR / 0.01 SSIM.
"""

from __future__ import annotations

import pytest

from fastdecoders import load_decoder, load_encoder
from fastdecoders.io import list_images, read_image
from fastdecoders.quality import half_size, roundtrip_scores

# measured at half resolution (benchmarks/kodak_roundtrip.py, CPU fp32, 2026-11-22)
MEASURED_HALF = {  # name: (encoder, mean PSNR dB, mean SSIM)
    "taesd": ("taesd_encoder", 24.15, 0.6553),
    "taesdxl": ("taesdxl_encoder", 24.06, 0.6612),
    "taesd3": ("taesd3_encoder", 27.72, 0.8033),
    "taef1": ("taef1_encoder", 26.34, 0.7880),
    "taef2": ("taef2_encoder", 28.62, 0.8528),
}


@pytest.fixture(scope="module")
def kodak_half(kodak_dir):
    photos = [half_size(read_image(p)) for p in list_images(kodak_dir)]
    assert len(photos) == 24
    return photos


@pytest.mark.parametrize("name", list(MEASURED_HALF))
def test_kodak_round_trip_quality(name, kodak_half, taesd_weights_dir):
    stem, psnr, ssim = MEASURED_HALF[name]
    decoder = load_decoder(name, weights_dir=taesd_weights_dir)
    encoder = load_encoder(stem, taesd_weights_dir)
    scores = roundtrip_scores(decoder, encoder, kodak_half)
    assert scores["psnr"] >= psnr - 0.3, scores
    assert scores["ssim"] >= ssim - 0.01, scores
