"""Stable Video Diffusion decoded frame by frame by the EfficientViT decoder (the seed paper's second design).

    python examples/video_effvit.py --tiny -o out/video_effvit               # offline: a folder of PNG frames
    python examples/video_effvit.py --model stabilityai/stable-video-diffusion-img2vid-xt \\
        --image first_frame.png --decoder runs/effvit-svd/model.safetensors -o out/video_effvit.mp4

Which latents: effvit is an image decoder for 4-channel f8 latents, and the registry's ``effvit-sdxl`` is meant for
SDXL's latent space. SVD latents are Stable Diffusion (sd1) latents: the same shape, but a different encoder and
scaling, so ``fastdecoders.use`` refuses an sdxl decoder here. For real use, train an effvit on SVD (= SD) latents
with ``fastdecoders train``: the saved file records its latent space, and ``--decoder`` takes it as it is.
``--latents svd`` forces a decoder made for other latents onto SVD's, with a warning (expect wrong colours).

With ``--tiny`` the script builds the effvit architecture (its small test config, random weights) and declares it an
SVD decoder: a stand-in for one trained on SVD latents.
"""

from __future__ import annotations

from svd_framewise import parse_args, run

import fastdecoders


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv, default_decoder="effvit-sdxl")
    args.out = args.out.replace("svd_framewise", "video_effvit")
    if not args.tiny:
        return run(args, args.decoder)
    decoder = fastdecoders.build_decoder(args.decoder, tiny=True)  # the effvit architecture, random weights
    decoder.latent_space_name = "svd"  # a stand-in for an effvit trained on SVD latents
    return run(args, decoder)


if __name__ == "__main__":
    import sys

    from fastdecoders.integrations.pipelines import run_example

    sys.exit(run_example(main, "video_effvit.py"))
